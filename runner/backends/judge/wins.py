"""What wins: per task type, each prompt variant's and each model's win rate and mean score,
from the judge's verdicts in an output folder's journal; and ``--learned``, which turns them
into the next run's candidates.

A row counts for a variant's (a model's) win rate when its latest result was judged with at
least two variants (models) among its scored candidates: the variant (model) of the chosen
candidate wins, the others lose. The mean score is over every scored candidate. ``learn``
keeps a type's configured variants, the winners first; once one variant has won at least
``CLEAR_SHARE`` of at least ``MIN_DECIDED`` rows, only that variant's candidates are made.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runner.settings import Settings
from runner.store.journal import JournalState, RowState

__all__ = ["CLEAR_SHARE", "MIN_DECIDED", "Standing", "learn", "standings"]

MIN_DECIDED = 8  # rows judged with two or more variants before one may be called the winner
CLEAR_SHARE = 0.75  # of those rows, the share one variant must win


@dataclass
class Standing:
    """One variant's (or model's) record in one task type."""

    name: str
    decided: int = 0  # rows it was judged against another
    wins: int = 0
    scores: list[float] = field(default_factory=list)  # every scored candidate of it

    @property
    def win_rate(self) -> float | None:
        return self.wins / self.decided if self.decided else None

    @property
    def mean(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "decided": self.decided,
            "wins": self.wins,
            "win_rate": self.win_rate,
            "mean": self.mean,
            "scored": len(self.scores),
        }


def _overall(rec: Mapping[str, Any] | None) -> float | None:
    if not rec or rec.get("error") is not None:
        return None
    value = rec.get("overall")
    return float(value) if isinstance(value, int | float) else None


def _candidates(row: RowState) -> tuple[list[dict[str, Any]], int | None]:
    """The row's candidates with their latest scores, and the chosen one's position."""
    listed = row.result.get("candidates")
    if isinstance(listed, list) and listed:
        cands = [dict(c) for c in listed if isinstance(c, dict)]
        chosen = row.result.get("chosen")
        pos = chosen if isinstance(chosen, int) and 0 <= chosen < len(cands) else None
    else:  # one image: the result itself
        cands = [{**row.result, "overall": row.result.get("score")}]
        pos = 0
    for k, c in enumerate(cands):
        judged = row.judged.get(str(c.get("file")))
        if judged is not None:  # a rejudge's verdict is the latest
            c["overall"] = _overall(judged)
        if row.chosen is not None and c.get("file") == row.chosen:
            pos = k
    return cands, pos


def _tally(
    table: dict[str, Standing], cands: list[dict[str, Any]], chosen: int | None, key: str
) -> None:
    scored = [c for c in cands if isinstance(c.get(key), str) and _overall(c) is not None]
    for c in scored:
        table.setdefault(c[key], Standing(c[key])).scores.append(float(c["overall"]))
    names = {c[key] for c in scored}
    if len(names) < 2 or chosen is None or _overall(cands[chosen]) is None:
        return
    winner = cands[chosen].get(key)
    for name in names:
        table[name].decided += 1
        table[name].wins += name == winner


def standings(
    state: JournalState, types: Mapping[str, str] | None = None
) -> dict[str, dict[str, dict[str, Standing]]]:
    """task type -> {"variant": {name: Standing}, "model": {name: Standing}} over the rows'
    latest results; ``types`` (index -> task type) for journals whose records lack it."""
    out: dict[str, dict[str, dict[str, Standing]]] = {}
    for index, row in state.rows.items():
        if not row.done:
            continue
        ttype = row.result.get("task_type") or (types or {}).get(index)
        if not isinstance(ttype, str):
            continue
        cands, chosen = _candidates(row)
        tables = out.setdefault(ttype, {"variant": {}, "model": {}})
        _tally(tables["variant"], cands, chosen, "variant")
        _tally(tables["model"], cands, chosen, "model")
    return out


def _ranked(configured: Iterable[str], table: Mapping[str, Standing]) -> list[str]:
    """The configured variants, the better win rate (then mean score) first; stable."""

    def key(name: str) -> tuple[float, float]:
        s = table.get(name)
        if s is None:
            return (0.0, 0.0)
        return (-(s.win_rate or 0.0), -(s.mean or 0.0))

    return sorted(configured, key=key)


def learn(settings: Settings, state: JournalState) -> tuple[Settings, list[str]]:
    """The settings with each type's candidates chosen from what won in ``state``, and one
    line per type that changed, saying why."""
    table = standings(state)
    candidates = dict(settings.candidates)
    notes: list[str] = []
    for ttype in list(candidates):
        configured = settings.variants(ttype)
        if len(set(configured)) < 2:
            continue
        variants = table.get(ttype, {}).get("variant", {})
        ranked = _ranked(configured, variants)
        best = variants.get(ranked[0])
        clear = (
            best is not None
            and best.decided >= MIN_DECIDED
            and best.win_rate is not None
            and best.win_rate >= CLEAR_SHARE
        )
        if clear and best is not None:
            kept = [v for v in configured if v == best.name]
            notes.append(
                f"learned: {ttype} makes only {best.name} ({len(kept)} candidate(s) a row, was "
                f"{len(configured)}): it won {best.wins} of {best.decided} judged rows"
            )
            candidates[ttype] = kept
        elif ranked != configured:
            candidates[ttype] = ranked
            notes.append(
                f"learned: {ttype} tries {', '.join(ranked)} in that order (no clear winner "
                f"yet: {MIN_DECIDED} judged rows and a {CLEAR_SHARE:.0%} win share make one)"
            )
    return settings.model_copy(update={"candidates": candidates}), notes
