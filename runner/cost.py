"""What a run costs: list prices from settings, the budget guard, and the dry-run estimate.

Prices are the settings' ``[prices.<region>]`` tables (per image, per model) over the
built-in list prices of ``runner.models`` (each with the date it was read). A model with no
price is counted in images and shown as "price unknown"; it is never guessed. The emulator
bills nothing, but its runs are estimated at list prices all the same so that a rehearsal
shows what the real run would cost.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from runner.models import caps

if TYPE_CHECKING:
    from runner.settings import Settings

log = structlog.get_logger(__name__)

# Local work: face swap runs on this machine and bills nothing.
LOCAL_TYPES = frozenset({"deepfake"})


@dataclass(frozen=True)
class PriceBook:
    """One region's list prices: model -> price of one image, in ``currency``."""

    region: str
    currency: str = ""
    per_image: Mapping[str, float] = field(default_factory=dict)

    def price(self, model: str) -> float | None:
        if model.startswith("local:"):  # this machine's GPUs: no bill
            return 0.0
        return self.per_image.get(model)

    def cost(self, model: str, images: int) -> float | None:
        p = self.price(model)
        return None if p is None else p * images

    def money(self, amount: float | None) -> str:
        if amount is None:
            return "price unknown"
        return f"{amount:,.2f} {self.currency}".strip()


def price_book(settings: Settings, region: str | None = None) -> PriceBook:
    """The list prices of ``region`` (default: the settings' region, cn or intl)."""
    region = region or settings.region
    table = settings.prices.get(region)
    if table is None:
        return PriceBook(region=region)
    return PriceBook(region=region, currency=table.currency, per_image=dict(table.per_image))


class Budget:
    """The ``--budget`` guard: asked before each paid request and each judge call, with what
    the folder has spent.

    It counts images nothing itself: that spend is the ledger's (runner.store.ledger), images
    billed or possibly billed per model over every run in the folder, a crashed run's
    included, and requests whose answer is lost or still on its way at their full ``n``. The
    judge's spend is the journal's "judged" records of the folder's earlier runs
    (``judge_before``) and this run's served calls (``count_judge``), with what calls under
    way may cost held (``reserve_judge``): images and judge together never pass ``limit``.
    ``limit`` None: no limit. A model without a price adds no money; with a limit set,
    ``unpriced`` names such models so the caller can refuse to start (a budget that cannot see
    a model's cost guards nothing).
    """

    def __init__(self, prices: PriceBook, limit: float | None = None) -> None:
        if limit is not None and limit < 0:
            raise ValueError("a budget cannot be negative")
        self.prices = prices
        self.limit = limit
        self.refused = 0  # requests held back by the budget
        self.judge_refused = 0  # judge scores not begun: they could pass the limit
        self.judge_calls = 0  # judge calls of this run (count_judge)
        self.judge_spent = 0.0  # their estimated cost, where [judge] has prices
        self.judge_before = 0.0  # the folder's earlier runs' judge spend (``follow``)
        self._judge_held = 0.0  # the most the judge calls under way may still cost
        self._images: Callable[[], Mapping[str, int]] = dict
        self._warned: set[str] = set()

    def follow(self, images: Callable[[], Mapping[str, int]], judge_before: float) -> None:
        """Where the folder's spend is read: ``images`` the ledger's images billed per model
        (every run of this kind), ``judge_before`` the judge's estimated cost in the
        journal before this run."""
        self._images = images
        self.judge_before = judge_before

    def reserve_judge(self, cost: float) -> bool:
        """Hold ``cost`` for judge calls about to be made, when images and judge stay within
        the limit with it; False (nothing held) when they would not."""
        if self.limit is not None and cost > 0:
            if self.cost(self._images()) + cost > self.limit + 1e-9:
                self.judge_refused += 1
                return False
        self._judge_held += cost
        return True

    def count_judge(self, cost: float | None, reserved: float = 0.0) -> None:
        """One served judge call and its estimated cost (None: no price), in place of the
        ``reserved`` part of what was held for it."""
        self.release_judge(reserved)
        self.judge_calls += 1
        self.judge_spent += cost or 0.0

    def release_judge(self, reserved: float) -> None:
        """Give back what was held for judge calls not made or not served."""
        self._judge_held = max(0.0, self._judge_held - reserved)

    def judge_reason(self) -> str:
        """Why a judge call was not made."""
        return self.reason(self._images())

    def cost(self, images: Mapping[str, int]) -> float:
        """The estimated cost of ``images`` per model (models without a price add nothing)
        and of the folder's judge calls, those under way at the most they may cost."""
        return (
            sum(self.prices.cost(m, n) or 0.0 for m, n in images.items())
            + self.judge_before
            + self.judge_spent
            + self._judge_held
        )

    @property
    def exhausted(self) -> bool:
        """True once a request was held back: the rows left are "stopped" by the budget."""
        return self.refused > 0

    def allows(self, model: str, images: int, spent: Mapping[str, int]) -> bool:
        """Whether ``images`` more of ``model`` keep the estimated spend within the limit."""
        cost = self.prices.cost(model, images)
        if cost is None and model not in self._warned:
            self._warned.add(model)
            log.info("price_unknown", model=model, region=self.prices.region)
        if self.limit is not None and cost:
            if self.cost(spent) + cost > self.limit + 1e-9:
                self.refused += 1
                return False
        return True

    def unpriced(self, models: Iterable[str]) -> list[str]:
        """Models a limit cannot guard: they have no price in this region's table."""
        return sorted({m for m in models if self.prices.price(m) is None})

    def reason(self, spent: Mapping[str, int]) -> str:
        """The one line a row left undone by the budget carries."""
        return (
            f"budget {self.prices.money(self.limit)} reached "
            f"(estimated spend {self.prices.money(self.cost(spent))}); "
            "raise --budget to go on"
        )

    @classmethod
    def for_settings(cls, settings: Settings) -> Budget:
        return cls(price_book(settings), settings.budget)


def billed_rows(prices: PriceBook, images: Mapping[str, int]) -> list[dict[str, Any]]:
    """Per model: images billed, price, estimated cost (None when the price is unknown)."""
    return [
        {
            "model": m,
            "images": n,
            "price": prices.price(m),
            "cost": prices.cost(m, n),
            "currency": prices.currency,
        }
        for m, n in sorted(images.items())
        if n
    ]


def _known_sum(costs: list[float | None]) -> tuple[float, bool]:
    """(sum of the costs that are known, whether all of them are)."""
    return sum(c for c in costs if c is not None), all(c is not None for c in costs)


# --------------------------------------------------------------------------- dry run
@dataclass(frozen=True)
class ModelShare:
    """One model's share of a run, as the dry run estimates it."""

    model: str
    rows: float
    images: float
    requests: float
    cost: float | None


@dataclass(frozen=True)
class Estimate:
    models: list[ModelShare]
    local_rows: int  # face swap: no request, no bill
    duration_s: float  # the quota bound: no schedule can finish the API rows sooner
    currency: str

    @property
    def cost(self) -> tuple[float, bool]:
        return _known_sum([p.cost for p in self.models])


@dataclass(frozen=True)
class Lane:
    """What the quota allows one model: requests a second, at most."""

    submits_per_second: float
    in_flight: int
    latency_s: float

    @property
    def rate(self) -> float:
        # the reference: throughput per model is min(submit rate, in-flight / latency)
        return min(self.submits_per_second, self.in_flight / self.latency_s)


def requests_per_row(model: str, candidates: int) -> int:
    """Requests one row of ``candidates`` images takes: one request returns up to the
    model's n (runner.models: wan t2i 4, qwen-image-edit-plus 6, qwen-image 1)."""
    return math.ceil(candidates / caps(model).n_max)


def estimate(
    rows_by_type: Mapping[str, int],
    models: Mapping[str, list[str]],
    candidates: Mapping[str, int],
    lanes: Mapping[str, Lane],
    prices: PriceBook,
) -> Estimate:
    """Per model rows, images billed and cost; the quota-bound duration of the API rows.

    Every model a type lists is used at once, so a type's rows are split over its models in
    proportion to their rates. The duration is the fluid bound: for every set S of task
    types, S's requests over the rate of all the models S may use; the largest such ratio
    (Hall's condition) is the shortest time in which any schedule can finish.
    """
    api = {t: n for t, n in rows_by_type.items() if t not in LOCAL_TYPES and n}
    shares: dict[str, list[float]] = {}  # model -> [rows, images, requests]
    demand: dict[str, float] = {}  # task type -> requests, at its models' average cost
    for ttype, n in api.items():
        names = [m for m in models.get(ttype, []) if m in lanes] or models.get(ttype, [])[:1]
        if not names:
            continue
        total_rate = sum(lanes[m].rate for m in names if m in lanes) or 1.0
        k = candidates.get(ttype, 1)
        reqs = 0.0
        for m in names:
            part = n * (lanes[m].rate / total_rate if m in lanes else 1.0)
            r = part * requests_per_row(m, k)
            s = shares.setdefault(m, [0.0, 0.0, 0.0])
            s[0] += part
            s[1] += part * k
            s[2] += r
            reqs += r
        demand[ttype] = reqs
    duration = 0.0
    types = list(demand)
    for size in range(1, len(types) + 1):
        for subset in itertools.combinations(types, size):
            used = {m for t in subset for m in models.get(t, []) if m in lanes}
            rate = sum(lanes[m].rate for m in used)
            if rate > 0:
                duration = max(duration, sum(demand[t] for t in subset) / rate)
    shares = [
        ModelShare(
            model=m,
            rows=s[0],
            images=s[1],
            requests=s[2],
            cost=None if (p := prices.price(m)) is None else p * s[1],
        )
        for m, s in sorted(shares.items())
    ]
    local = sum(n for t, n in rows_by_type.items() if t in LOCAL_TYPES)
    return Estimate(models=shares, local_rows=local, duration_s=duration, currency=prices.currency)


def estimate_for(
    settings: Settings,
    rows_by_type: Mapping[str, int],
    *,
    emulated: bool,
    latency_s: Mapping[str, float] | None = None,
    in_flight: Mapping[str, int] | None = None,
) -> Estimate:
    """``estimate`` with the settings' models, quotas, candidates and prices.

    ``latency_s`` / ``in_flight``: what a running job has observed (p50, learned limits);
    without them, ``expected_task_s`` (scaled like the emulator when emulated) and the
    settings' quotas. A model with no in-flight limit (a sync route) is bound by its call
    rate, and by ``concurrency`` only where the user set one.
    """
    typical = settings.expected_task_s * (settings.emulator.time_scale if emulated else 1.0)
    seen = latency_s or {}
    limits = in_flight or {}
    lanes = {}
    for names in settings.models.values():
        for m in names:
            q = settings.quota(m)
            lanes[m] = Lane(
                submits_per_second=q.submits_per_second,
                # no in-flight limit (sync models): --concurrency is the bound
                in_flight=min(
                    limits.get(m) or q.in_flight or settings.concurrency, settings.concurrency
                ),
                latency_s=max(seen.get(m) or typical, 1e-3),
            )
    return estimate(
        rows_by_type,
        settings.models,
        settings.candidate_counts(),
        lanes,
        price_book(settings),
    )


def check_budget(settings: Settings, task_types: Iterable[str]) -> None:
    """With a budget, every model the run may use needs a price: SettingsError otherwise."""
    if settings.budget is None:
        return
    from runner.errors import SettingsError

    book = price_book(settings)
    models = {m for t in task_types if t not in LOCAL_TYPES for m in settings.models.get(t, [])}
    missing = sorted(m for m in models if book.price(m) is None)
    if missing:
        raise SettingsError(
            f"--budget needs a list price for every model the run may use: "
            f"{', '.join(missing)} ha{'s' if len(missing) == 1 else 've'} none in "
            f"[prices.{book.region}] (add it to the settings, or leave out --budget)"
        )
