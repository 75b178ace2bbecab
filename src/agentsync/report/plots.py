"""The compare report's figures, as PNG files (matplotlib, no display needed).

Each function draws one figure from the finished cells and returns its path, or None when the
study has nothing to show there (no decentralized or asynchronous strategy, a single W, ...).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from agentsync.report.results import Result  # noqa: E402


def colors(results: list[Result]) -> dict[str, str]:
    labels = sorted({r.cell.strategy.label for r in results})
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves(results: list[Result], metric: str, x: str, xlabel: str, path: Path) -> Path | None:
    """The metric against ``x`` for each strategy at the largest W (every seed a line)."""
    ok = [r for r in results if r.ok]
    if not ok:
        return None
    workers = max(r.cell.workers for r in ok)
    palette, labelled = colors(ok), set()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for r in (r for r in ok if r.cell.workers == workers):
        points = [(e[x], e[metric]) for e in r.curve if e.get(x) is not None and e.get(metric) is not None]
        if points:
            label = r.cell.strategy.label
            ax.plot(*zip(*points), marker="o", ms=3, color=palette[label],
                    label=None if label in labelled else label, alpha=0.85)
            labelled.add(label)
    ax.set(xlabel=xlabel, ylabel=metric, title=f"{metric} vs {xlabel} (W = {workers})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def scaling(results: list[Result], path: Path) -> Path | None:
    """Training throughput against W, and scaling efficiency: throughput(W) / (W · throughput(1))."""
    ok = [r for r in results if r.ok and r.summary["throughput"].get("train_samples_per_s")]
    by_label: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in ok:
        by_label[r.cell.strategy.label][r.cell.workers].append(r.summary["throughput"]["train_samples_per_s"])
    if not ok or len({r.cell.workers for r in ok}) < 2:
        return None
    palette = colors(ok)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    for label, per_w in sorted(by_label.items()):
        ws = sorted(per_w)
        rate = [sum(per_w[w]) / len(per_w[w]) for w in ws]
        left.plot(ws, rate, marker="o", color=palette[label], label=label)
        if 1 in per_w:
            right.plot(ws, [rt / (w * rate[0]) for w, rt in zip(ws, rate)], marker="o", color=palette[label], label=label)
    left.set(xlabel="workers W", ylabel="training samples / s", title="throughput")
    right.set(xlabel="workers W", ylabel="throughput(W) / (W · throughput(1))", title="scaling efficiency")
    right.axhline(1.0, color="grey", lw=0.8, ls="--")
    for ax in (left, right):
        ax.set_xticks(sorted({r.cell.workers for r in ok}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, path)


def staleness_and_consensus(results: list[Result], path: Path) -> Path | None:
    """Parameter-server staleness histograms and decentralized consensus distance over steps."""
    ok = [r for r in results if r.ok]
    stale = [r for r in ok if r.summary.get("staleness")]
    drift = [r for r in ok if r.cell.workers > 1 and any(e.get("consensus_distance") is not None for e in r.curve)]
    if not stale and not drift:
        return None
    palette = colors(ok)
    panels = [p for p in (stale, drift) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.8), squeeze=False)
    axes = list(axes[0])
    if stale:
        ax = axes.pop(0)
        workers = max(r.cell.workers for r in stale)
        for r in (r for r in stale if r.cell.workers == workers and r.cell.seed == 0):
            hist = {int(k): v for k, v in r.summary["staleness"]["histogram"].items()}
            total = sum(hist.values())
            ax.plot(sorted(hist), [hist[k] / total for k in sorted(hist)], marker="o",
                    color=palette[r.cell.strategy.label], label=r.cell.strategy.label)
        ax.set(xlabel="staleness (server versions behind)", ylabel="fraction of gradients",
               title=f"staleness (W = {workers})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if drift:
        ax = axes.pop(0)
        styles = dict(zip(sorted({r.cell.workers for r in drift}, reverse=True), ("-", "--", ":", "-.")))
        for r in drift:
            points = [(e["step"], e["consensus_distance"]) for e in r.curve if e.get("consensus_distance") is not None]
            ax.plot(*zip(*points), marker="o", ms=3, color=palette[r.cell.strategy.label],
                    ls=styles.get(r.cell.workers, "-"), alpha=1.0 if r.cell.seed == 0 else 0.4,
                    label=f"{r.cell.strategy.label} W={r.cell.workers}" if r.cell.seed == 0 else None)
        ax.set(xlabel="step", ylabel="mean ‖θᵢ − θ̄‖", title="consensus distance")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, path)


def draw_all(results: list[Result], metric: str, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    figures = [curves(results, metric, "time_s", "wall time (s)", folder / "metric_vs_time.png"),
               curves(results, metric, "bytes_sent", "bytes sent by worker 0", folder / "metric_vs_bytes.png"),
               scaling(results, folder / "scaling.png"),
               staleness_and_consensus(results, folder / "staleness_consensus.png")]
    return [f for f in figures if f is not None]
