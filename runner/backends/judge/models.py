"""The judge models and their published quotas, per region (requests and tokens a minute).

From the reference's quota table (shared/reference/dashscope.md, 2026 editions). A model not
listed gets qwen-vl-max's figures until the settings say otherwise. qwen2.5-vl-72b-instruct
is the open model GEdit-Bench reports as its second judge; its quota is twenty times below
qwen-vl-max's, so a run judged by it is paced by the judge.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.settings import JudgeSettings

__all__ = ["GEDIT_OPEN_JUDGE", "JUDGE_MODELS", "QUOTA_SHARE", "JudgeQuota", "judge_quota", "pace"]

QUOTA_SHARE = 0.5  # of the model's published quota, when the settings name no rate


@dataclass(frozen=True)
class JudgeQuota:
    requests_per_minute: float
    tokens_per_minute: float
    published: bool = True  # False: not in the table, qwen-vl-max's figures assumed


GEDIT_OPEN_JUDGE = "qwen2.5-vl-72b-instruct"

# model -> region -> quota
JUDGE_MODELS: dict[str, dict[str, JudgeQuota]] = {
    "qwen-vl-max": {r: JudgeQuota(1200, 1_000_000) for r in ("cn", "intl")},
    "qwen-vl-plus": {r: JudgeQuota(1200, 1_000_000) for r in ("cn", "intl")},
    "qwen3-vl-plus": {"cn": JudgeQuota(3000, 5_000_000), "intl": JudgeQuota(1200, 1_000_000)},
    "qwen3-vl-flash": {"cn": JudgeQuota(3000, 5_000_000), "intl": JudgeQuota(1200, 1_000_000)},
    GEDIT_OPEN_JUDGE: {r: JudgeQuota(60, 100_000) for r in ("cn", "intl")},
}


def judge_quota(model: str, region: str) -> JudgeQuota:
    """The model's published quota in the region (qwen-vl-max's, marked unpublished, for a
    model the table does not know)."""
    by_region = JUDGE_MODELS.get(model)
    if by_region is None or region not in by_region:
        fallback = JUDGE_MODELS["qwen-vl-max"]["cn"]
        return JudgeQuota(fallback.requests_per_minute, fallback.tokens_per_minute, False)
    return by_region[region]


def pace(settings: JudgeSettings, region: str) -> tuple[float, float]:
    """(requests, tokens) a minute the judge keeps to: the settings', else a share of the
    model's published quota in the region."""
    quota = judge_quota(settings.model, region)
    return (
        settings.requests_per_minute or quota.requests_per_minute * QUOTA_SHARE,
        settings.tokens_per_minute or quota.tokens_per_minute * QUOTA_SHARE,
    )
