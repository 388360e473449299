"""The retry policy: one decision per typed error, step and tries so far."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from runner import errors
from runner.errors import Step
from runner.images import ImageProblem
from runner.policy import Action, RetryPolicy, Tries

POLICY = RetryPolicy(max_attempts=3, max_throttled=2, backoff_max_s=0.5, retry_after_cap_s=5.0)


@pytest.mark.parametrize(
    ("error", "action"),
    [
        (errors.Fatal("bad key"), Action.STOP),
        (errors.ServiceUnreachable("h", "refused", 30), Action.STOP),
        (errors.ServerError("503", step=Step.SUBMIT), Action.RESUBMIT),
        (errors.ResultExpired("UNKNOWN", step=Step.POLL), Action.RESUBMIT),
        (errors.RateLimited("429", step=Step.SUBMIT), Action.RESUBMIT),
        (errors.Uncertain("unreadable 200", step=Step.SUBMIT), Action.FAIL),
        (errors.ModelNotServed("Model not exist.", model="m"), Action.SET_ASIDE),
        (errors.ModelRefused("DataInspectionFailed", model="m"), Action.NEXT_MODEL),
        (errors.RowFailed("InvalidParameter"), Action.FAIL),
        (ImageProblem("not an image"), Action.FAIL),
    ],
)
def test_each_error_class_has_its_decision(error: BaseException, action: Action) -> None:
    assert POLICY.decide(error, Tries()).action is action


def test_a_row_gives_up_after_max_attempts() -> None:
    tries = Tries()
    first = POLICY.decide(errors.ServerError("500"), tries)
    assert first.action is Action.RESUBMIT and 0 < first.delay_s <= 0.5
    assert POLICY.decide(errors.ServerError("500"), tries).action is Action.RESUBMIT
    last = POLICY.decide(errors.ServerError("500"), tries)
    assert last.action is Action.FAIL and last.attempts == 3
    assert "gave up after 3 attempts" in last.reason


def test_429s_count_apart_and_honour_a_capped_retry_after() -> None:
    tries = Tries()
    hinted = POLICY.decide(errors.RateLimited("429", retry_after=60.0), tries)
    assert hinted.action is Action.RESUBMIT and hinted.delay_s == 5.0  # capped
    assert tries.count == 0 and tries.throttled == 1
    POLICY.decide(errors.RateLimited("429"), tries)
    over = POLICY.decide(errors.RateLimited("429"), tries)
    assert over.action is Action.FAIL and "throttled 3 times" in over.reason


def test_a_download_is_retried_then_fails_with_the_task_kept() -> None:
    tries = Tries()
    policy = RetryPolicy(download_rounds=3, backoff_max_s=0.5)
    error = errors.DownloadError("reset", step=Step.DOWNLOAD)
    assert policy.decide(error, tries).action is Action.RETRY
    renew = policy.decide(errors.ResultExpired("403", step=Step.DOWNLOAD), tries)
    assert renew.action is Action.RETRY and renew.delay_s == 0.0  # fresh URLs at once
    assert policy.decide(error, tries).action is Action.FAIL


def test_a_judge_call_waits_out_a_tokens_throttle_but_not_forever() -> None:
    policy = RetryPolicy(tokens_pause_max_s=50.0)
    tries = Tries()
    throttled = errors.TokensThrottled("tpm", retry_after=20.0, step=Step.JUDGE_CALL)
    for _ in range(2):
        wait = policy.decide(throttled, tries)
        assert wait.action is Action.RETRY and wait.delay_s == 20.0
    assert policy.decide(throttled, tries).action is Action.FAIL  # 60 s > 50 s
    assert tries.count == 0


def test_a_judge_call_is_retried_a_few_times_and_a_refusal_not_at_all() -> None:
    policy = RetryPolicy(call_retries=2)
    tries = Tries()
    error = errors.ServerError("502", step=Step.JUDGE_CALL)
    assert [policy.decide(error, tries).action for _ in range(3)] == [
        Action.RETRY,
        Action.RETRY,
        Action.FAIL,
    ]
    refused = errors.ModelRefused("moderation", step=Step.JUDGE_CALL)
    assert policy.decide(refused, Tries()).reason.startswith("judge refused")


def test_the_step_is_stamped_once() -> None:
    error = errors.classify(500, "InternalError", "boom").at(Step.POLL)
    assert error.at(Step.SUBMIT).step is Step.POLL


def test_from_settings_reads_the_run_limits() -> None:
    settings = SimpleNamespace(
        max_attempts=9,
        max_throttled=7,
        backoff_max_s=1.5,
        retry_after_cap_s=30.0,
        repay_uncertain=True,
    )
    policy = RetryPolicy.from_settings(settings)
    assert (policy.max_attempts, policy.max_throttled) == (9, 7)
    assert (policy.backoff_max_s, policy.retry_after_cap_s) == (1.5, 30.0)
    assert policy.repay_uncertain


def test_an_uncertain_request_is_paid_again_only_when_the_user_says_so() -> None:
    lost = errors.Uncertain("answer lost", step=Step.SUBMIT, model="m")
    refused = POLICY.decide(lost, Tries())
    assert refused.action is Action.FAIL and "--repay-uncertain" in refused.reason
    repay = RetryPolicy(max_attempts=3, repay_uncertain=True)
    tries = Tries()
    assert repay.decide(lost, tries).action is Action.RESUBMIT
    assert repay.decide(lost, tries).action is Action.RESUBMIT
    assert repay.decide(lost, tries).action is Action.FAIL  # within max_attempts all the same


async def test_lifecycle_stamps_the_submit_step(tmp_path: Path) -> None:
    from runner.scheduling.lifecycle import Lifecycle, Request
    from runner.store.journal import Journal
    from runner.store.ledger import Ledger, PaidBook

    class Refusing:
        async def submit_text2image(self, model: str, prompt: str, **kw: object) -> object:
            raise errors.ServerError("503")

    async def cpu(fn: Callable[..., object], *args: object) -> object:
        return fn(*args)

    journal = Journal(tmp_path)
    try:
        ledger = Ledger(journal, PaidBook(), backend="b", emulated=False)
        life = Lifecycle(Refusing(), ledger, None, cpu=cpu)  # type: ignore[arg-type]
        with pytest.raises(errors.ServerError) as info:
            await life.submit(Request(index="1", model="m", prompt="p"))
        assert info.value.step is Step.SUBMIT
        # the refusal is journaled: the request was not billed
        assert [p.phase for p in ledger.book.requests.values()] == ["refused"]
    finally:
        journal.close()
