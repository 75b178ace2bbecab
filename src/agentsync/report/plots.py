"""The compare report's figures, as PNG files (matplotlib, no display needed).

Each function draws one figure from the finished cells and returns :class:`Figure` entries: a
drawn figure with a caption a reader understands, or a figure (or panel) left out, with one line
saying why (a single W, a single evaluation per run, ...). A figure is never drawn empty. Where the
study has nothing of that kind at all (no decentralized or asynchronous strategy), it says nothing.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from agentsync.report.results import Result  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Figure:
    """A drawn figure (``path``) and its caption, or (``path`` None) a figure left out and why."""

    caption: str
    path: Path | None = None
    title: str = ""
    """A few words naming the figure (the image's alt text)."""

    @property
    def drawn(self) -> bool:
        return self.path is not None


def colors(results: list[Result]) -> dict[str, str]:
    labels = sorted({r.cell.strategy.label for r in results})
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves(results: list[Result], metric: str, x: str, xlabel: str, path: Path, *, phrase: str) -> list[Figure]:
    """The metric against ``x`` for each strategy at the largest W (every seed a line)."""
    ok = [r for r in results if r.ok]
    if not ok:
        return []
    workers = max(r.cell.workers for r in ok)
    lines = [(r, [(e[x], e[metric]) for e in r.curve if e.get(x) is not None and e.get(metric) is not None])
             for r in ok if r.cell.workers == workers]
    what = f"{metric} against {phrase}"
    if max((len(points) for _, points in lines), default=0) < 2:
        return [Figure(f"{what.capitalize()} is left out: each run has a single measurement of {metric} (its final "
                       "one; evaluate during training with --set eval_every=N to draw curves).")]
    palette, labelled = colors(ok), set()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for r, points in lines:
        if points:
            label = r.cell.strategy.label
            ax.plot(*zip(*points), marker="o", ms=3, color=palette[label],
                    label=None if label in labelled else label, alpha=0.85)
            labelled.add(label)
    ax.set(xlabel=xlabel, ylabel=metric, title=f"{metric} vs {xlabel} (W = {workers})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return [Figure(f"{what.capitalize()} with W = {workers} workers, one line per strategy and seed, from worker "
                   f"0's evaluations and the final result: the curve that reaches a good {metric} furthest "
                   f"{'left' if x == 'time_s' else 'left (fewest bytes)'} is the cheapest way there.", save(fig, path),
                   what)]


def scaling(results: list[Result], path: Path) -> list[Figure]:
    """Training throughput against W, and scaling efficiency: throughput(W) / (W · throughput(1))."""
    ok = [r for r in results if r.ok and r.summary["throughput"].get("train_samples_per_s")]
    by_label: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in ok:
        by_label[r.cell.strategy.label][r.cell.workers].append(r.summary["throughput"]["train_samples_per_s"])
    if not ok:
        return []
    if len({r.cell.workers for r in ok}) < 2:
        return [Figure("Throughput against the number of workers is left out: the study ran a single worker "
                       "count (give --workers several, like 1,2,4).")]
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
    return [Figure("Training samples per second summed over the workers, against the number of workers (left), "
                   "and the scaling efficiency (right): 1 means W workers train W times as fast as one, below 1 "
                   "is what communication and contention cost.", save(fig, path), "throughput and scaling efficiency")]


def staleness_and_consensus(results: list[Result], path: Path) -> list[Figure]:
    """Parameter-server staleness histograms and decentralized consensus distance over steps."""
    ok = [r for r in results if r.ok]
    stale = [r for r in ok if r.summary.get("staleness")]
    measured = [r for r in ok if r.cell.workers > 1 and any(e.get("consensus_distance") is not None for e in r.curve)]
    drift = [r for r in measured if sum(e.get("consensus_distance") is not None for e in r.curve) >= 2]
    notes = [] if drift or not measured else [Figure(
        "Consensus distance over training is left out: it was measured at fewer than two evaluations per run "
        "(evaluate more often with --set eval_every=N).")]
    if not stale and not drift:
        return notes
    palette = colors(ok)
    panels = [p for p in (stale, drift) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.8), squeeze=False)
    axes = list(axes[0])
    captions = []
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
        captions.append(f"how stale the gradients a parameter server applied were (W = {workers}: the fraction "
                        "computed on parameters that many server versions old)")
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
        captions.append("how far the replicas of the strategies that let them differ were from their average "
                        "over training (mean ‖θᵢ − θ̄‖; lower means the workers agree more)")
    text = " and ".join(captions)
    title = " and ".join(t for t, panel in (("staleness", stale), ("consensus distance", drift)) if panel)
    return [Figure(text[0].upper() + text[1:] + ".", save(fig, path), title), *notes]


def draw_all(results: list[Result], metric: str, folder: Path) -> list[Figure]:
    """Every figure of the report, in order: drawn ones with their captions, left-out ones with why."""
    folder.mkdir(parents=True, exist_ok=True)
    return [*curves(results, metric, "time_s", "wall time (s)", folder / "metric_vs_time.png", phrase="wall time"),
            *curves(results, metric, "bytes_sent", "bytes sent by worker 0", folder / "metric_vs_bytes.png",
                    phrase="bytes sent by worker 0"),
            *scaling(results, folder / "scaling.png"),
            *staleness_and_consensus(results, folder / "staleness_consensus.png")]
