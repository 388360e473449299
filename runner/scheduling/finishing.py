"""A row's end: its images on disk, judged, journaled.

An API row's candidates are one per prompt variant (``runner.prompts``, the settings'
``[candidates]``). With several, each is written under ``candidates/<index>/``, the judge
picks, and the best is written as ``imgs/<index>.jpg``; a single candidate is written there
at once. The "done" record keeps every candidate's variant, what was sent, and its scores,
so that later runs can learn which variant wins (``runner.backends.judge.wins``). A deepfake
row is the face-swap pool's one image. A row that cannot end well ends as ``RowStop`` (a
failed ``RowResult``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from runner.backends.judge.answers import JudgeScore, pick
from runner.errors import DiskFull, Fatal, RowFailed, RunnerError
from runner.logs import NOTICES
from runner.outcomes import RowResult
from runner.prompts import CandidatePrompts, SentPrompt
from runner.scheduling.lifecycle import Candidate
from runner.settings import Settings
from runner.store.files import write_atomic
from runner.store.journal import Journal
from runner.tasks import Task

if TYPE_CHECKING:
    from runner.backends.faceswap.pool import FaceSwapPool
    from runner.backends.judge.scorer import Judge

__all__ = ["Finisher", "RowStop", "bad_input", "failed"]

log = structlog.get_logger(__name__)


class RowStop(Exception):
    """Internal: the row ends here with this result."""

    def __init__(self, result: RowResult) -> None:
        self.result = result


def failed(task: Task, reason: str, **kw: Any) -> RowStop:
    """The row's failure, to raise."""
    return RowStop(
        RowResult(index=task.index, task_type=task.task_type, status="failed", reason=reason, **kw)
    )


def bad_input(task: Task, reason: str, **kw: Any) -> RowStop:
    """The row's own input is at fault (no face found, an unreadable source, content every
    model refused): a rerun with the same input cannot help. To raise."""
    return RowStop(
        RowResult(index=task.index, task_type=task.task_type, status="bad", reason=reason, **kw)
    )


@dataclass(eq=False)
class Finisher:
    settings: Settings
    out_dir: Path
    journal: Journal
    judge: Judge | None  # None: nothing is judged, the first candidate is kept
    emulated: bool
    swapper: FaceSwapPool | None = None
    swapper_problem: str | None = None  # why there is no swapper, for the deepfake rows
    _judge_off: bool = False  # the judge's budget is spent (or it broke): stop asking
    _judge_stop: str = ""  # why it was turned off
    # index -> why the row made fewer candidates than asked, and how many the budget held
    # back (RowSteps; taken by ``finish``)
    short: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def imgs_dir(self) -> Path:
        return self.out_dir / "imgs"

    def judge_usage(self) -> dict[str, Any] | None:
        """The judge's calls, 429s, estimated tokens and cost so far; None without a judge."""
        return None if self.judge is None else self.judge.usage.model_dump(mode="json")

    # --- API rows ------------------------------------------------------------
    async def finish(
        self,
        task: Task,
        prompts: CandidatePrompts,
        got: list[Candidate],
        attempts: int,
        fp: str | None,
    ) -> RowResult:
        """Score the candidates (when judging), write the best as imgs/<index>.jpg, journal."""
        path = self.imgs_dir / f"{task.index}.jpg"
        rel = str(path.relative_to(self.out_dir))
        files = await self._write_candidates(task, got, path)
        scores = await self._judge_all(task, [p for p, _ in files])
        chosen = pick(scores) if scores else None
        notes: list[str] = []
        held = 0
        if task.index in self.short:
            note, held = self.short.pop(task.index)
            notes.append(note)
        if len(got) > 1 and chosen is None and self._judge_stop:
            notes.append(f"the first candidate is kept ({self._judge_stop})")
        chosen = 0 if chosen is None else chosen
        best = files[chosen][1]
        if len(got) > 1:
            await write_atomic(path, best.jpeg)
        # a local model's image is real even when the API side is the emulator
        emulated = self.emulated and not best.model.startswith("local:")
        score = scores[chosen].overall if scores else None
        fields: dict[str, Any] = {
            "task_type": task.task_type,
            "model": best.model,
            "task_id": best.task_id,
            "url": best.url,
            "file": rel,
            "emulated": emulated,
            "fp": fp,
            "width": best.width,
            "height": best.height,
            "bytes": len(best.jpeg),
            "prompt": task.prompt,
            **_sent_fields(prompts.at(chosen)),
            "actual_prompt": best.actual_prompt,
        }
        if len(got) > 1:
            fields["candidates"] = [
                {
                    "file": str(p.relative_to(self.out_dir)),
                    "model": c.model,
                    "task_id": c.task_id,
                    **_sent_fields(prompts.at(k)),
                    "actual_prompt": c.actual_prompt,
                    **_score_fields(scores[k] if scores else None),
                }
                for k, (p, c) in enumerate(files)
            ]
            fields["chosen"] = chosen
        if scores:
            fields["score"] = score
        if notes:
            fields["note"] = "; ".join(notes)
        if held:
            fields["held_back"] = held
        await self.journal.write("done", index=task.index, **fields)
        return RowResult(
            index=task.index,
            task_type=task.task_type,
            status="done",
            reason="; ".join(notes) or None,
            model=best.model,
            attempts=attempts,
            file=rel,
            emulated=emulated,
            score=score,
            held_back=held,
        )

    async def _write_candidates(
        self, task: Task, got: list[Candidate], path: Path
    ) -> list[tuple[Path, Candidate]]:
        """Each candidate on disk: several under candidates/<index>/, one as the output."""
        if len(got) == 1:
            await write_atomic(path, got[0].jpeg)
            return [(path, got[0])]
        folder = self.out_dir / "candidates" / task.index
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        files: list[tuple[Path, Candidate]] = []
        for k, cand in enumerate(got):
            cpath = folder / f"{k}.jpg"
            await write_atomic(cpath, cand.jpeg)
            files.append((cpath, cand))
        return files

    # --- deepfake rows -------------------------------------------------------
    async def swap_row(self, task: Task, fp: str | None) -> RowResult:
        """A face swap from the pool, written, judged (when judging) and journaled."""
        if self.swapper is None:
            raise failed(task, self.swapper_problem or "no face-swap backend is available")
        assert task.ori_image is not None and task.target_image is not None
        try:
            out = await self.swapper.swap(task.index, task.ori_image, task.target_image)
        except (Fatal, DiskFull):
            raise
        except RowFailed as exc:  # no face found, a source missing or not an image
            raise bad_input(task, str(exc)) from None
        except RunnerError as exc:  # a crashed worker, models that would not load
            raise failed(task, str(exc)) from None
        path = self.imgs_dir / f"{task.index}.jpg"
        model = f"faceswap:{out.backend}"
        detail = dict(getattr(out, "detail", {}) or {})
        variants = [v for v in out.variants if v.identity_target is not None]
        fields: dict[str, Any] = {}
        if len(variants) > 1 and self._judging():
            # the judge's eye: every variant a candidate, scored as the competition scores
            # a face swap (identity x the judge's PQ); the best is the row's picture
            folder = self.out_dir / "candidates" / task.index
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            paths = [folder / f"{k}.jpg" for k in range(len(variants))]
            for p, v in zip(paths, variants, strict=True):
                await write_atomic(p, v.jpeg)
            scores = await self._judge_all(
                task, paths, identities=[v.identity_target for v in variants]
            )
            k = pick(scores) if scores else None
            if k is not None:
                best = variants[k]
                await write_atomic(path, best.jpeg)
                detail.update(variant=best.name, chosen_by="judge")
                fields["candidates"] = [
                    {
                        "file": str(p.relative_to(self.out_dir)),
                        "model": model,
                        "variant": v.name,
                        "identity_target": v.identity_target,
                        "realism": v.realism,
                        **_score_fields(sc),
                    }
                    for p, v, sc in zip(paths, variants, scores, strict=True)
                ]
                fields["chosen"] = k
                fields["score"] = scores[k].overall
                identity = (best.identity_target, best.identity_ori)
        if "chosen" not in fields:  # offline: the swapper's own pick (identity and realism)
            await write_atomic(path, out.jpeg)
            detail.setdefault("chosen_by", "offline")
            identity = (out.identity_target, out.identity_ori)
            scores = await self._judge_all(task, [path], identities=[out.identity_target])
            if scores:
                fields["score"] = scores[0].overall
        fields |= {
            "file": str(path.relative_to(self.out_dir)),
            "model": model,
            "emulated": False,
            "fp": fp,
            "identity_target": identity[0],
            "identity_ori": identity[1],
            "embedding": getattr(out, "embedding", None),
            "detail": detail,
        }
        await self.journal.write("done", index=task.index, **fields)
        return RowResult(
            index=task.index,
            task_type=task.task_type,
            status="done",
            model=model,
            file=fields["file"],
            identity_target=identity[0],
            identity_ori=identity[1],
            score=fields.get("score"),
        )

    # --- judging -------------------------------------------------------------
    def _judging(self) -> bool:
        return self.judge is not None and not self._judge_off and self.settings.judge.enabled

    async def _judge_all(
        self, task: Task, paths: list[Path], identities: list[float | None] | None = None
    ) -> list[JudgeScore]:
        """Judge scores for each file (a face swap's with its identity score), journaled; []
        when the judge is off or spent."""
        if self.judge is None or self._judge_off:
            return []
        if len(paths) == 1 and not self.settings.judge.enabled:
            return []
        scores: list[JudgeScore] = []
        for k, p in enumerate(paths):
            identity = identities[k] if identities is not None else None
            try:
                sc = await self.judge.score(
                    task.task_type, task.prompt, p, source=task.ori_image, identity=identity
                )
            except (Fatal, DiskFull):
                raise
            except RunnerError as exc:  # budget spent and the like: stop judging, keep going
                self._judge_off = True
                self._judge_stop = str(exc)
                log.info("judge_off", reason=str(exc))
                NOTICES.warning(
                    f"judge stopped: {exc}; rows from here keep their first candidate unjudged"
                )
                return []
            scores.append(sc)
            await self.journal.write(
                "judged",
                index=task.index,
                file=str(p.relative_to(self.out_dir)),
                **sc.model_dump(mode="json"),
            )
        return scores


def _sent_fields(sent: SentPrompt | None) -> dict[str, Any]:
    """What one candidate was made from, for the journal: its variant, the prompt and
    negative prompt sent, whether the service was asked to rewrite it, and what was changed
    from the user's words (None: a request paid by an earlier run, resumed)."""
    if sent is None:
        return {"variant": None}
    return {
        "variant": sent.variant,
        "prompt_sent": sent.sent,
        "negative_prompt": sent.negative,
        "prompt_extend": sent.extend,
        "prompt_changes": sent.changes,
    }


def _score_fields(score: JudgeScore | None) -> dict[str, Any]:
    if score is None:
        return {"overall": None}
    return {"overall": score.overall, "sc": score.sc, "pq": score.pq, "error": score.error}
