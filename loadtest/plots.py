"""PNG plots of a rate sweep, from plain dicts (``StepResult.to_dict()`` or JSON).

Each step dict needs ``offered_per_s`` and ``achieved_per_s``; the latency plot reads
``p50_ms``, ``p99_ms``, ``p999_ms``; the time plot reads ``per_second`` (completions during
each second of the step). ``passed`` (optional) marks steps that met the gates.

Uses matplotlib's object API with the Agg canvas, never ``pyplot``, so nothing global (the
backend, the current figure) changes in the calling process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "plot_achieved_vs_offered",
    "plot_all",
    "plot_latency_vs_offered",
    "plot_throughput_over_time",
]

Step = Mapping[str, Any]
_DPI = 100


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=_DPI)
    return path


def _sorted(steps: Sequence[Step]) -> list[Step]:
    if not steps:
        raise ValueError("no steps to plot")
    return sorted(steps, key=lambda step: float(step["offered_per_s"]))


def plot_achieved_vs_offered(steps: Sequence[Step], path: str | Path, title: str = "") -> Path:
    ordered = _sorted(steps)
    offered = [float(step["offered_per_s"]) for step in ordered]
    achieved = [float(step["achieved_per_s"]) for step in ordered]
    figure = Figure(figsize=(7, 5))
    axes = figure.add_subplot()
    top = max(offered + achieved) * 1.05
    axes.plot([0, top], [0, top], linestyle=":", color="grey", label="achieved = offered")
    axes.plot(offered, achieved, marker="o", label="achieved")
    failed = [(o, a) for o, a, s in zip(offered, achieved, ordered) if s.get("passed") is False]
    if failed:
        axes.scatter(*zip(*failed), color="red", zorder=3, label="missed a gate")
    axes.set_xlabel("offered rate (requests/s)")
    axes.set_ylabel("achieved rate (responses/s)")
    axes.set_title(title or "Achieved vs offered rate")
    axes.grid(True, alpha=0.3)
    axes.legend()
    return _save(figure, path)


def plot_latency_vs_offered(
    steps: Sequence[Step], path: str | Path, title: str = "", p99_ms_max: float | None = None
) -> Path:
    ordered = _sorted(steps)
    offered = [float(step["offered_per_s"]) for step in ordered]
    figure = Figure(figsize=(7, 5))
    axes = figure.add_subplot()
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
        # Log scale cannot show zero; a step without samples is drawn at 1 µs.
        values = [max(float(step.get(key, 0.0)), 0.001) for step in ordered]
        axes.plot(offered, values, marker="o", label=label)
    if p99_ms_max is not None:
        axes.axhline(p99_ms_max, color="red", linestyle="--", label=f"p99 gate {p99_ms_max:g} ms")
    axes.set_yscale("log")
    axes.set_xlabel("offered rate (requests/s)")
    axes.set_ylabel("latency from intended send time (ms)")
    axes.set_title(title or "Latency percentiles vs offered rate")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    return _save(figure, path)


def plot_throughput_over_time(steps: Sequence[Step], path: str | Path, title: str = "") -> Path:
    """Per-second completions, steps laid end to end in the order given."""
    figure = Figure(figsize=(9, 5))
    axes = figure.add_subplot()
    offset = 0
    for step in steps:
        per_second = [int(value) for value in step.get("per_second", [])]
        seconds = list(range(offset, offset + len(per_second)))
        label = f"{float(step['offered_per_s']):.0f}/s offered"
        line = axes.plot(seconds, per_second, drawstyle="steps-post", label=label)[0]
        if per_second:
            axes.hlines(
                float(step["offered_per_s"]),
                offset,
                offset + len(per_second),
                colors=line.get_color(),
                linestyles=":",
                alpha=0.6,
            )
        offset += len(per_second) + 1
    axes.set_xlabel("seconds (steps laid end to end)")
    axes.set_ylabel("completions per second")
    axes.set_title(title or "Throughput over time")
    axes.grid(True, alpha=0.3)
    if steps:
        axes.legend(fontsize="small", ncol=2)
    return _save(figure, path)


def plot_all(
    steps: Sequence[Step], out_dir: str | Path, prefix: str = "load", p99_ms_max: float | None = None
) -> list[Path]:
    out = Path(out_dir)
    return [
        plot_achieved_vs_offered(steps, out / f"{prefix}_achieved.png"),
        plot_latency_vs_offered(steps, out / f"{prefix}_latency.png", p99_ms_max=p99_ms_max),
        plot_throughput_over_time(steps, out / f"{prefix}_throughput.png"),
    ]
