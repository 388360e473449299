"""Slots in use per model over time (the emulator's own count), one panel per run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {
    "wanx2.1-t2i-turbo": "#1f77b4",
    "wanx2.1-t2i-plus": "#17becf",
    "wan2.2-t2i-flash": "#2ca02c",
    "wanx2.1-imageedit": "#d62728",
    "qwen-image-edit": "#ff7f0e",
}
BIN_REAL_S = 20.0  # average over bins of this many real seconds


def binned(series: list[Any], end: float, width: float) -> list[float]:
    """Mean of a step function (t, value) over [k*width, (k+1)*width) bins up to ``end``."""
    n = max(1, int(end / width) + 1)
    area = [0.0] * n
    steps = [(float(t), float(v)) for t, v in series]
    for (t0, v), (t1, _) in zip(steps, [*steps[1:], (end, 0.0)], strict=False):
        t0, t1 = max(t0, 0.0), min(t1, end)
        while t0 < t1:
            k = min(int(t0 / width), n - 1)
            edge = min(t1, (k + 1) * width)
            area[k] += v * (edge - t0)
            t0 = edge
    return [a / width for a in area]


def plot_slots(runs: list[dict[str, Any]], path: Path) -> Path:
    """``runs``: results with ``timeline`` {model: [(t, in_flight), ...]}, ``slots``,
    ``scale`` and ``name``; one panel each, stacked, on a real-time axis (minutes)."""
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 3.4 * len(runs)), sharex=True)
    axes = list(axes) if len(runs) > 1 else [axes]
    for ax, run in zip(axes, runs, strict=True):
        scale = float(run["scale"])
        width = BIN_REAL_S * scale
        end = float(run["makespan_s"])
        models = [m for m, s in run["timeline"].items() if len(s) > 1]
        layers = [binned(run["timeline"][m], end, width) for m in models]
        xs = [(k * width) / scale / 60 for k in range(len(layers[0]))] if layers else []
        if layers:
            ax.stackplot(
                xs,
                layers,
                labels=models,
                colors=[COLORS.get(m, "#888888") for m in models],
                step="post",
                alpha=0.85,
            )
        total = sum(int(v or 0) for v in run["slots"].values())
        ax.axhline(total, color="black", lw=0.8, ls="--", label=f"all capped slots ({total})")
        ax.set_title(
            f"{run['name']} (latencies at 1/{1 / scale:.0f}): done after "
            f"{end / scale / 60:.0f} min real-time equivalent",
            fontsize=9,
        )
        ax.set_ylabel("tasks in flight")
        stacked = sum(max(layer, default=0.0) for layer in layers)  # an uncapped model too
        ax.set_ylim(0, max(total, stacked) + 1.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right", ncol=3)
    axes[-1].set_xlabel(
        f"real-time equivalent, minutes (runs are time-scaled; {BIN_REAL_S:.0f} s averages)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
