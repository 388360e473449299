"""The VIEScore judge: against the emulator's judge (real HTTP through DashScopeClient), the
reference's message layout, image size and tolerant parsing (lmms-eval's own files, read by
path as the judge reads them), stub clients for budget and rate limit, and rejudge on a
planted output folder."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_image, write_tasks
from PIL import Image, ImageFilter
from pydantic import SecretStr

from runner.backends.dashscope import ClientConfig, DashScopeClient
from runner.backends.judge import answers as answers_module
from runner.backends.judge import reference as reference_module
from runner.backends.judge.pacing import pace
from runner.backends.judge.reference import reference
from runner.backends.judge.scorer import (
    AnswerError,
    Judge,
    JudgeBudgetExhausted,
    JudgeScore,
    estimate_tokens,
    overall,
    parse_answer,
    pick,
)
from runner.emulator import Emulator, EmulatorConfig
from runner.errors import Fatal, RateLimited, ServerError, TokensThrottled
from runner.outputs.rejudge import rejudge
from runner.settings import JudgeSettings, Settings
from runner.store.journal import JOURNAL_NAME, Journal, replay

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def pics(tmp_path: Path) -> dict[str, Path]:
    """sharp (textured), blurred and flat versions of one picture, and an edit of it."""
    sharp = make_image(tmp_path / "pics" / "sharp.png", (400, 300))
    img = Image.open(sharp).convert("RGB")
    blurred = tmp_path / "pics" / "blurred.png"
    img.filter(ImageFilter.GaussianBlur(6)).save(blurred)
    flat = tmp_path / "pics" / "flat.png"
    Image.new("RGB", img.size, (128, 128, 128)).save(flat)
    arr = np.asarray(img).copy()
    arr[60:160, 60:260] = 255 - arr[60:160, 60:260]  # about 17 % changed
    edited = tmp_path / "pics" / "edited.png"
    Image.fromarray(arr).save(edited)
    return {"sharp": sharp, "blurred": blurred, "flat": flat, "edited": edited}


@pytest.fixture
async def emu_client() -> AsyncIterator[tuple[Emulator, DashScopeClient]]:
    async with Emulator(EmulatorConfig(time_scale=0.0)) as emu:
        cfg = ClientConfig(base_url=emu.base_url, api_key=SecretStr("sk-test"))
        async with DashScopeClient(cfg) as client:
            yield emu, client


class StubClient:
    """Answers chat calls from a list (str answers or exceptions; the last one repeats), or
    with None a well-formed answer of the right length (5s), recording each call."""

    def __init__(self, answers: list[Any] | None = None, clock: Any = None) -> None:
        self.answers = list(answers or [])
        self.calls: list[list[dict[str, Any]]] = []
        self.kwargs: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.clock = clock or time.monotonic

    async def chat(self, model: str, messages: list[dict[str, Any]], **kw: Any) -> str:
        self.calls.append(messages)
        self.kwargs.append(kw)
        self.times.append(self.clock())
        if not self.answers:
            text = json.dumps(messages)
            two = "naturalness" in text or text.count('"type": "image_url"') >= 2
            return good(5, 5) if two else good(5)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


def good(*scores: float) -> str:
    return json.dumps({"score": list(scores), "reasoning": "ok"})


async def no_sleep(_: float) -> None:
    return None


# ----------------------------------------------------------------------------- arithmetic


def test_overall_is_sqrt_of_minimums() -> None:
    assert overall([8], [9, 4]) == pytest.approx(math.sqrt(8 * 4), abs=1e-3)
    assert overall([10, 3], [10, 10]) == pytest.approx(math.sqrt(30), abs=1e-3)
    assert overall([0], [10, 10]) == 0


def test_pick_best_scored() -> None:
    def s(value: float | None, error: str | None = None) -> JudgeScore:
        return JudgeScore(sc=[1], pq=[1, 1], overall=value, judge_model="m", error=error)

    assert pick([]) is None
    assert pick([s(None, "bad answer"), s(None, "bad")]) is None
    assert pick([s(3.0), s(7.5), s(7.5), s(9.0, "unscored")]) == 1  # first of a tie
    assert Judge.pick([s(None, "x"), s(0.0)]) == 1


# Answers in each form the reference's parser accepts, as VLMs write them.
RECORDED = {
    "fenced JSON with prose": (
        'Here is my evaluation:\n```json\n{\n"score" : [7, 8],\n"reasoning" : '
        '"The edit is clean."\n}\n```\nLet me know if you need more.'
    ),
    "bare list": "[7, 8]",
    "bare list in a sentence": "Scores: [6, 9]",
    "bare number": "7",
    "repaired quote": '{"score": 8, "reasoning": The image follows the prompt}',
    "repaired key and quote": '{"score": 6, reasoning: colours are off}',
    "delimited": '||V^=^V||\n{\n"score" : [5, 10],\n"reasoning" : "fine"\n}\n||V^=^V||',
    "plain JSON": '{"score": [7, 8.5], "reasoning": " fine "}',
    "score not in a list": '{"score": 7, "reasoning": "x"}',
    "JSON after prose": 'Sure! {"score": [3], "reasoning": "r"}',
}


def _reference_utils() -> Any:
    """lmms-eval's viescore/utils.py, loaded by path here independently of the judge."""
    import importlib.util
    from importlib import metadata

    try:
        dist = metadata.distribution("lmms_eval")
    except metadata.PackageNotFoundError:
        pytest.skip("lmms-eval is not installed (make install adds it)")
    folder = Path(str(dist.locate_file("lmms_eval/tasks/gedit_bench/viescore")))
    modules = []
    for name in ("utils", "vie_prompts"):
        spec = importlib.util.spec_from_file_location(f"_test_ref_{name}", folder / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules.append(module)
    return modules


@pytest.fixture(params=["reference", "built-in"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """parse_answer through the reference's parser, and through the built-in stand-in used
    when the wheel is missing."""
    if request.param == "built-in":
        stand_in = reference_module._builtin("test")
        monkeypatch.setattr(answers_module, "reference", lambda: stand_in)
    return str(request.param)


@pytest.mark.parametrize("form", sorted(RECORDED))
def test_parsed_scores_equal_the_references(form: str, parser: str) -> None:
    utils, _ = _reference_utils()
    text = RECORDED[form]
    theirs = utils.mllm_output_to_dict(text)
    assert theirs, f"the reference reads no score from the {form} answer"
    scores, _ = parse_answer(text)
    assert scores == [float(x) for x in theirs["score"]]


@pytest.mark.parametrize(
    "text",
    [
        '{"score": [11], "reasoning": "x"}',
        '{"score": [-1], "reasoning": "x"}',
        '{"score": ["7"], "reasoning": "x"}',
        '{"score": [true], "reasoning": "x"}',
        '{"score": [NaN], "reasoning": "x"}',
        '{"score": [], "reasoning": "x"}',
        '{"reasoning": "no score"}',
        '{"score": [7, 8], "reasoning": "the "best" one"}',
        "[7]",
        "I'd rate it 8/10, looks great!",
        "",
    ],
)
def test_parse_answer_rejects(text: str, parser: str) -> None:
    """No number the reference would not read, or that is no 0-10 score, becomes one."""
    with pytest.raises(AnswerError):
        parse_answer(text)


def test_parse_answer_keeps_the_reasoning() -> None:
    assert parse_answer('{"score": [7, 8.5], "reasoning": " fine "}') == ([7.0, 8.5], "fine")
    assert parse_answer('```json\n{"score": [3], "reasoning": "r"}\n```') == ([3.0], "r")


def test_the_reference_is_in_use_when_installed() -> None:
    _reference_utils()  # skips without the wheel
    ref = reference()
    assert ref.official and ref.source.startswith("lmms-eval 0.7.3")


async def test_request_matches_the_references_layout_and_size(tmp_path: Path) -> None:
    """One user message, no system message: the images (source, then result; PQ the result
    alone) then the reference's own text, each image at the reference's 512 x 512 area."""
    _, texts = _reference_utils()
    result = make_image(tmp_path / "result.jpg", (1600, 900), fmt="JPEG")
    source = make_image(tmp_path / "src.png", (320, 240))
    stub = StubClient([good(8, 9), good(7, 6), good(6), good(7, 7)])
    judge = Judge(stub, JudgeSettings(), emulated=False)
    s = await judge.score("tie", "把招牌文字改为“OPEN”", result, source=source)
    assert s.sc == [8, 9] and s.pq == [7, 6]
    t2i = await judge.score("t2i", "水墨画风格的山水", result)
    assert t2i.sc == [6] and t2i.pq == [7, 7]

    def reference_size(w: int, h: int) -> tuple[int, int]:  # gedit_bench's calculate_dimensions
        width = math.sqrt(512 * 512 * (w / h))
        return int(width), int(width / (w / h))

    def shown(part: dict[str, Any]) -> tuple[int, int]:
        url = part["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size

    context = texts._context_no_delimit
    edit_sc = "\n".join(
        [context, texts._prompts_0shot_two_image_edit_rule, texts._prompts_0shot_tie_rule_SC]
    ).replace("<instruction>", "把招牌文字改为“OPEN”")
    t2i_sc = "\n".join(
        [context, texts._prompts_0shot_one_image_gen_rule, texts._prompts_0shot_t2i_rule_SC]
    ).replace("<prompt>", "水墨画风格的山水")
    pq = "\n".join([context, texts._prompts_0shot_rule_PQ])
    expected = [
        (edit_sc, [reference_size(320, 240), reference_size(1600, 900)]),
        (pq, [reference_size(1600, 900)]),
        (t2i_sc, [reference_size(1600, 900)]),
        (pq, [reference_size(1600, 900)]),
    ]
    assert len(stub.calls) == 4
    for messages, (text, sizes) in zip(stub.calls, expected, strict=True):
        assert [m["role"] for m in messages] == ["user"]  # no system message
        parts = messages[0]["content"]
        assert [p["type"] for p in parts] == ["image_url"] * len(sizes) + ["text"]
        assert [shown(p) for p in parts[:-1]] == sizes
        assert parts[-1]["text"] == text
    assert all(kw == {"temperature": 0.1, "max_completion_tokens": 512} for kw in stub.kwargs)


# ----------------------------------------------------------------------------- emulator


async def test_t2i_against_emulator(
    emu_client: tuple[Emulator, DashScopeClient], pics: dict[str, Path]
) -> None:
    emu, client = emu_client
    judge = Judge(client, JudgeSettings(), emulated=True)
    sharp = await judge.score("t2i", "a textured scene", pics["sharp"])
    blurred = await judge.score("t2i", "a textured scene", pics["blurred"])
    flat = await judge.score("t2i", "a textured scene", pics["flat"])
    for s in (sharp, blurred, flat):
        assert s.scored and s.error is None and s.emulated
        assert s.sc is not None and len(s.sc) == 1
        assert s.pq is not None and len(s.pq) == 2
        assert s.overall == pytest.approx(math.sqrt(min(s.sc) * min(s.pq)), abs=1e-3)
        assert s.judge_model == "qwen-vl-max" and "SC:" in s.reasoning and "PQ:" in s.reasoning
    assert sharp.overall is not None and blurred.overall is not None and flat.overall is not None
    assert sharp.overall > blurred.overall > flat.overall
    assert pick([flat, blurred, sharp]) == 2
    assert emu.stats.judge_calls["qwen-vl-max"] == judge.calls == 6


async def test_edits_against_emulator(
    emu_client: tuple[Emulator, DashScopeClient], pics: dict[str, Path]
) -> None:
    _, client = emu_client
    judge = Judge(client, JudgeSettings(), emulated=True)
    for task_type in ("tie", "vttie"):
        done = await judge.score(task_type, "invert a box", pics["edited"], source=pics["sharp"])
        same = await judge.score(task_type, "invert a box", pics["sharp"], source=pics["sharp"])
        assert done.sc is not None and len(done.sc) == 2 and min(done.sc) >= 8
        assert same.sc is not None and same.sc[0] <= 1  # nothing edited: edit failed
        assert same.scored and same.overall is not None and same.overall <= 3.2
        assert done.pq is not None
        assert done.overall == pytest.approx(math.sqrt(min(done.sc) * min(done.pq)), abs=1e-3)
        assert pick([same, done]) == 1
    missing = await judge.score("tie", "x", pics["edited"])
    assert not missing.scored and "source" in (missing.error or "")


async def test_deepfake_against_emulator(
    emu_client: tuple[Emulator, DashScopeClient], pics: dict[str, Path]
) -> None:
    _, client = emu_client
    judge = Judge(client, JudgeSettings(), emulated=True)
    s = await judge.score("deepfake", "", pics["sharp"], identity=0.6)
    assert s.sc is None and s.pq is not None and s.identity == 0.6
    assert s.overall == pytest.approx(math.sqrt(10 * 0.6 * min(s.pq)), abs=1e-3)
    negative = await judge.score("deepfake", "", pics["sharp"], identity=-0.2)
    assert negative.scored and negative.overall == 0
    calls = judge.calls
    assert calls == 2  # one PQ call each
    unknown = await judge.score("deepfake", "", pics["sharp"], identity=None)
    assert not unknown.scored and unknown.overall is None and judge.calls == calls


async def test_unreadable_image_unscored(tmp_path: Path) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    judge = Judge(StubClient([good(9)]), JudgeSettings(), emulated=False)
    s = await judge.score("t2i", "x", junk)
    assert not s.scored and s.overall is None and "cannot read" in (s.error or "")


# ----------------------------------------------------------------------------- unusable answers


async def test_malformed_answer_asked_again_once_then_unscored(pics: dict[str, Path]) -> None:
    stub = StubClient(["I'd rate it 8/10, looks great!"])
    judge = Judge(stub, JudgeSettings(), emulated=False)
    s = await judge.score("t2i", "a fox", pics["sharp"])
    assert not s.scored
    assert s.overall is None and s.sc is None and s.pq is None  # never a made-up number
    assert s.error and "SC" in s.error and "no score found" in s.error
    assert len(stub.calls) == 2  # the first answer and one retry; PQ not asked
    assert stub.calls[1] == stub.calls[0]  # the same request again, as the reference asks


async def test_bad_then_good_answer_scores(pics: dict[str, Path]) -> None:
    stub = StubClient(['{"score": [12]}', good(7), "```json\n" + good(8, 6) + "\n```"])
    judge = Judge(stub, JudgeSettings(), emulated=False)
    s = await judge.score("t2i", "a fox", pics["sharp"])
    assert s.scored and s.sc == [7] and s.pq == [8, 6]
    assert s.overall == pytest.approx(math.sqrt(42), abs=1e-3)
    assert judge.calls == 3


async def test_bad_pq_keeps_sc_but_unscored(pics: dict[str, Path]) -> None:
    stub = StubClient([good(7), "no idea", "still no idea"])
    judge = Judge(stub, JudgeSettings(), emulated=False)
    s = await judge.score("t2i", "a fox", pics["sharp"])
    assert not s.scored and s.sc == [7] and s.pq is None and s.overall is None
    assert s.error and s.error.startswith("PQ") and "no score found" in s.error


@pytest.mark.parametrize("style", ["json", "fenced", "list", "unquoted"])
async def test_every_answer_form_scores_every_candidate(style: str, pics: dict[str, Path]) -> None:
    """A judge that answers as chat models do (a fenced object in prose, a bare list, an
    unquoted value) leaves no candidate unscored, and the better one is picked."""
    async with Emulator(EmulatorConfig(time_scale=0.0, judge_answers=style)) as emu:
        cfg = ClientConfig(base_url=emu.base_url, api_key=SecretStr("sk-test"))
        async with DashScopeClient(cfg) as client:
            judge = Judge(client, JudgeSettings(), emulated=True)
            flat = await judge.score("t2i", "a scene", pics["flat"])
            sharp = await judge.score("t2i", "a scene", pics["sharp"])
            edit = await judge.score("tie", "invert a box", pics["edited"], source=pics["sharp"])
    assert flat.scored and sharp.scored and edit.scored, (flat.error, sharp.error, edit.error)
    assert pick([flat, sharp]) == 1
    assert judge.calls == 6  # nothing asked twice


# ----------------------------------------------------------------------------- errors, budget, pace


async def test_transport_errors_backed_off_fatal_raised(pics: dict[str, Path]) -> None:
    slept: list[float] = []

    async def record(d: float) -> None:
        slept.append(d)

    stub = StubClient(
        [ServerError("boom"), RateLimited("slow down", retry_after=2.0), good(9), good(9, 9)]
    )
    judge = Judge(stub, JudgeSettings(), emulated=False, sleep=record)
    s = await judge.score("t2i", "x", pics["sharp"])
    assert s.scored and s.overall == 9
    assert judge.usage.retries == 2 and judge.throttled == 1
    assert 2.0 in slept  # Retry-After honoured
    assert judge.calls == 3  # the 429 is not counted against the budget

    down = StubClient([ServerError("down")])
    judge = Judge(down, JudgeSettings(), emulated=False, sleep=no_sleep)
    s = await judge.score("t2i", "x", pics["sharp"])
    assert not s.scored and "failed" in (s.error or "") and len(down.calls) == 5

    with pytest.raises(Fatal):
        await Judge(StubClient([Fatal("bad key")]), JudgeSettings(), emulated=False).score(
            "t2i", "x", pics["sharp"]
        )


async def test_budget_exhausted(pics: dict[str, Path]) -> None:
    stub = StubClient()
    judge = Judge(stub, JudgeSettings(budget=3), emulated=False)
    assert (await judge.score("t2i", "x", pics["sharp"])).scored
    with pytest.raises(JudgeBudgetExhausted):
        await judge.score("t2i", "x", pics["sharp"])  # needs 2, 1 left: nothing spent
    assert judge.calls == 2 and judge.remaining == 1
    assert (await judge.score("deepfake", "", pics["sharp"], identity=0.5)).scored
    with pytest.raises(JudgeBudgetExhausted):
        await judge.score("deepfake", "", pics["sharp"], identity=0.5)
    assert len(stub.calls) == 3


async def test_rate_limit_spacing_fake_clock(pics: dict[str, Path]) -> None:
    now = [100.0]

    async def advance(d: float) -> None:
        now[0] += d

    stub = StubClient(clock=lambda: now[0])
    judge = Judge(
        stub,
        JudgeSettings(requests_per_minute=30),
        emulated=False,
        clock=lambda: now[0],
        sleep=advance,
    )
    await asyncio.gather(*(judge.score("t2i", "x", pics["sharp"]) for _ in range(3)))
    gaps = np.diff(sorted(stub.times))
    assert len(stub.times) == 6
    assert all(g >= 2.0 - 1e-9 for g in gaps)  # 30 a minute: one every 2 s


async def test_rate_limit_spacing_real_time(pics: dict[str, Path]) -> None:
    stub = StubClient()
    judge = Judge(stub, JudgeSettings(requests_per_minute=1200), emulated=False)  # 50 ms
    await asyncio.gather(*(judge.score("t2i", "x", pics["sharp"]) for _ in range(3)))
    gaps = np.diff(sorted(stub.times))
    assert all(g >= 0.045 for g in gaps), gaps


async def test_paced_by_tokens_as_well_as_requests(tmp_path: Path) -> None:
    """1,200 requests a minute allow a call every 50 ms; 20,000 tokens a minute with a
    512x512 image (about 360 tokens) and the reference's text in each call allow far fewer."""
    big = make_image(tmp_path / "big.png", (1024, 1024))
    now = [0.0]

    async def advance(d: float) -> None:
        now[0] += d

    stub = StubClient(clock=lambda: now[0])
    settings = JudgeSettings(requests_per_minute=1200, tokens_per_minute=20_000)
    judge = Judge(stub, settings, emulated=False, clock=lambda: now[0], sleep=advance)
    await asyncio.gather(*(judge.score("t2i", "x", big) for _ in range(3)))
    image_tokens = (
        estimate_tokens([{"role": "user", "content": [stub.calls[0][0]["content"][0]]}]) - 512
    )  # less the answer's share
    assert image_tokens == 19 * 19 + 2  # 512 x 512 in 28 x 28 patches
    starts = sorted(zip(stub.times, stub.calls, strict=True), key=lambda pair: pair[0])
    for (t0, msgs), (t1, _) in itertools.pairwise(starts):
        assert t1 - t0 >= estimate_tokens(msgs) * 60 / 20_000 - 1e-9
    assert stub.times[-1] - stub.times[0] > 5  # the request limit alone: 0.25 s


async def test_token_throttle_pauses_and_never_leaves_unscored(pics: dict[str, Path]) -> None:
    slept: list[float] = []

    async def record(d: float) -> None:
        slept.append(d)

    # More 429s than the transport retries allow: the tokens throttle is waited out.
    throttled = [TokensThrottled("Allocated quota exceeded", retry_after=20.0)] * 7
    stub = StubClient([*throttled, good(9), good(9, 9)])
    judge = Judge(stub, JudgeSettings(), emulated=False, sleep=record)
    s = await judge.score("t2i", "x", pics["sharp"])
    assert s.scored and s.overall == 9
    assert judge.throttled == 7 and judge.calls == 2
    assert sum(d for d in slept if d >= 19) >= 7 * 20  # paused, not hammered


async def test_token_throttle_against_emulator(pics: dict[str, Path]) -> None:
    cfg = EmulatorConfig(time_scale=0.0)
    small = cfg.models["qwen-vl-max"].model_copy(update={"tokens_per_min": 3000})
    cfg = cfg.model_copy(update={"models": {**cfg.models, "qwen-vl-max": small}})
    async with Emulator(cfg) as emu:
        config = ClientConfig(base_url=emu.base_url, api_key=SecretStr("sk-test"))
        async with DashScopeClient(config) as client:
            now = [0.0]

            async def wait(d: float) -> None:  # the world's clock moves with ours
                now[0] += d
                emu.advance(d)

            # Our pacing assumes the documented 1M tokens: the emulator's 3,000 bite.
            judge = Judge(client, JudgeSettings(), emulated=True, clock=lambda: now[0], sleep=wait)
            scores = [await judge.score("t2i", "a scene", pics["sharp"]) for _ in range(4)]
    assert all(s.scored for s in scores)
    assert emu.stats.http_429.get("Throttling.AllocationQuota", 0) >= 1
    assert judge.throttled >= 1


async def test_usage_counts_tokens_and_cost_and_tells_the_budget(pics: dict[str, Path]) -> None:
    from runner.cost import Budget, PriceBook

    budget = Budget(PriceBook(region="cn"))
    settings = JudgeSettings(input_price=2.0, output_price=8.0)
    judge = Judge(StubClient(), settings, emulated=False, spend=budget)
    score = await judge.score("t2i", "a fox", pics["sharp"])
    u = judge.usage
    assert u.calls == 2 and budget.judge_calls == 2 and u.input_size > 0 and u.output_size > 0
    assert u.cost == pytest.approx((u.input_size * 2.0 + u.output_size * 8.0) / 1e6)
    assert budget.judge_spent == pytest.approx(u.cost) and budget.cost({}) == pytest.approx(u.cost)
    # the score carries what it spent: the journal's "judged" record is the folder's count
    assert (score.calls, score.input_size, score.output_size) == (2, u.input_size, u.output_size)
    assert score.record()["cost"] == pytest.approx(u.cost)
    unpriced = Judge(StubClient(), JudgeSettings(), emulated=False, spend=budget)
    score = await unpriced.score("t2i", "a fox", pics["sharp"])
    assert unpriced.usage.cost is None and score.cost is None and budget.judge_calls == 4


async def test_a_score_the_budget_cannot_pay_is_not_begun(pics: dict[str, Path]) -> None:
    """Both questions' largest cost must fit before the first is asked; nothing is held
    after a score."""
    from runner.cost import Budget, PriceBook

    settings = JudgeSettings(input_price=2.0, output_price=8.0)
    client = StubClient()
    tight = Budget(PriceBook(region="cn"), limit=0.001)  # below one question's worst case
    with pytest.raises(JudgeBudgetExhausted, match="judge stopped: budget"):
        await Judge(client, settings, emulated=False, spend=tight).score(
            "t2i", "a fox", pics["sharp"]
        )
    assert not client.calls and tight.judge_refused == 1 and tight.cost({}) == 0
    roomy = Budget(PriceBook(region="cn"), limit=1.0)
    await Judge(client, settings, emulated=False, spend=roomy).score("t2i", "a fox", pics["sharp"])
    assert roomy.cost({}) == pytest.approx(roomy.judge_spent)  # what was held went back


def test_judge_models_paced_by_their_published_quota() -> None:
    assert pace(JudgeSettings(model="qwen2.5-vl-72b-instruct"), "intl") == (30, 50_000)
    assert pace(JudgeSettings(), "cn") == (600, 500_000)
    assert pace(JudgeSettings(model="qwen3-vl-flash"), "cn") == (1500, 2_500_000)
    assert pace(JudgeSettings(model="qwen3-vl-flash"), "intl") == (600, 500_000)
    assert pace(JudgeSettings(requests_per_minute=10, tokens_per_minute=9000), "cn") == (
        10,
        9000,
    )


# ----------------------------------------------------------------------------- rejudge


async def test_rejudge_picks_the_better_candidate(
    tmp_path: Path,
    pics: dict[str, Path],
    emu_client: tuple[Emulator, DashScopeClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    _, client = emu_client
    images = tmp_path / "inputs"
    make_image(images / "src.png", (400, 300))
    make_image(images / "face_a.png", (200, 200))
    make_image(images / "face_b.png", (200, 200))
    tasks = write_tasks(
        tmp_path / "task.csv",
        [
            ("1", "t2i", "a textured scene", "", ""),
            ("2", "tie", "invert a box", "src.png", ""),
            ("3", "deepfake", "", "face_a.png", "face_b.png"),
            ("4", "t2i", "never made", "", ""),
        ],
    )
    out = tmp_path / "out"
    (out / "imgs").mkdir(parents=True)
    (out / "candidates" / "1").mkdir(parents=True)

    def jpeg(src: Path, dst: Path) -> None:
        Image.open(src).convert("RGB").save(dst, "JPEG", quality=92)

    jpeg(pics["blurred"], out / "candidates" / "1" / "0.jpg")
    jpeg(pics["sharp"], out / "candidates" / "1" / "1.jpg")
    (out / "imgs" / "1.jpg").write_bytes((out / "candidates" / "1" / "0.jpg").read_bytes())
    src_arr = np.asarray(Image.open(images / "src.png").convert("RGB")).copy()
    src_arr[60:160, 60:260] = 255 - src_arr[60:160, 60:260]
    Image.fromarray(src_arr).save(out / "imgs" / "2.jpg", "JPEG", quality=92)
    jpeg(pics["sharp"], out / "imgs" / "3.jpg")

    journal = Journal(out)
    cands = [
        {"file": "candidates/1/0.jpg", "model": "wanx2.1-t2i-turbo"},
        {"file": "candidates/1/1.jpg", "model": "wanx2.1-t2i-plus"},
    ]
    journal.write_sync("done", index="1", file="imgs/1.jpg", model="m", candidates=cands)
    journal.write_sync("done", index="2", file="imgs/2.jpg", model="wanx2.1-imageedit")
    journal.write_sync(
        "done", index="3", file="imgs/3.jpg", model="faceswap:classic", identity_target=0.5
    )
    journal.write_sync("failed", index="4", reason="every model refused the row")
    journal.close()

    settings = Settings()
    heard: list[tuple[int, int, int]] = []
    summary = await rejudge(
        out,
        tasks,
        images,
        settings,
        client,
        on_row=lambda so_far: heard.append((so_far.rows, so_far.total, so_far.usage["calls"])),
    )
    assert summary.rows == 3 and summary.files == 4 and summary.scored == 4
    assert summary.changed == 1 and not summary.budget_exhausted
    assert summary.calls == 2 + 2 + 2 + 1 == summary.usage["calls"]
    # its progress after every row: rows done of 3, the judge's calls so far
    assert [(r, t) for r, t, _ in heard] == [(1, 3), (2, 3), (3, 3)]
    assert heard[-1][2] == 7 and summary.usage["input_size"] > 0
    # the sharp candidate is now the chosen output; every candidate file is kept
    assert (out / "imgs" / "1.jpg").read_bytes() == (out / "candidates/1/1.jpg").read_bytes()
    assert (out / "candidates/1/0.jpg").is_file()

    state = replay(out / JOURNAL_NAME)
    judged = state.rows["1"].judged
    assert set(judged) == {"candidates/1/0.jpg", "candidates/1/1.jpg"}
    assert judged["candidates/1/1.jpg"]["overall"] > judged["candidates/1/0.jpg"]["overall"]
    for key in ("sc", "pq", "overall", "identity", "judge_model", "reasoning", "error"):
        assert key in judged["candidates/1/1.jpg"]
    rec3 = state.rows["3"].judged["imgs/3.jpg"]
    assert rec3["identity"] == 0.5
    assert rec3["overall"] == pytest.approx(math.sqrt(10 * 0.5 * min(rec3["pq"])), abs=1e-3)
    assert state.rows["4"].judged == {}
    lines = [json.loads(x) for x in (out / JOURNAL_NAME).read_text().splitlines()]
    chosen = {r["index"]: r["file"] for r in lines if r["ev"] == "chosen"}
    assert chosen == {"1": "candidates/1/1.jpg", "2": "imgs/2.jpg", "3": "imgs/3.jpg"}
    assert summary.by_type["t2i"].mean_overall == judged["candidates/1/1.jpg"]["overall"]
    assert summary.by_type["deepfake"].mean_identity == 0.5

    again = await rejudge(out, tasks, images, settings, client)
    assert again.changed == 0 and again.scored == 4


async def test_rejudge_stops_at_budget(
    tmp_path: Path, pics: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    tasks = write_tasks(
        tmp_path / "task.csv", [(str(i), "t2i", "scene", "", "") for i in range(1, 4)]
    )
    out = tmp_path / "out"
    (out / "imgs").mkdir(parents=True)
    journal = Journal(out)
    for i in range(1, 4):
        Image.open(pics["sharp"]).convert("RGB").save(out / "imgs" / f"{i}.jpg", "JPEG")
        journal.write_sync("done", index=str(i), file=f"imgs/{i}.jpg", model="m")
    journal.close()
    settings = Settings(judge=JudgeSettings(budget=3))
    stub = StubClient()
    summary = await rejudge(out, tasks, tmp_path / "imgs", settings, stub, concurrency=1)
    assert summary.budget_exhausted and summary.scored == 1 and summary.calls == 2


def test_doctor_says_which_texts_and_parser_are_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.doctor import check_judge

    settings = Settings(judge=JudgeSettings(model="qwen2.5-vl-72b-instruct"))
    line = check_judge(settings).line()
    assert "qwen2.5-vl-72b-instruct, 30 requests and 50,000 tokens a minute" in line
    assert reference().source in line
    stand_in = reference_module._builtin("lmms-eval is not installed; make install adds it")
    monkeypatch.setattr(reference_module, "reference", lambda: stand_in)
    check = check_judge(settings)
    assert check.level == "warn" and "built-in (lmms-eval is not installed" in check.detail
    assert "make install" in check.line()
