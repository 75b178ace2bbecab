"""The ranking table, ``report.md`` and a self-contained ``report.html`` (figures embedded as base64)."""
from __future__ import annotations

import base64
import dataclasses
import html
import statistics
from collections import defaultdict
from pathlib import Path

from agentsync.report.matrix import Study
from agentsync.report.plots import Figure
from agentsync.report.results import Result


@dataclasses.dataclass
class Rank:
    """One strategy at one W, over its seeds."""

    strategy: str
    workers: int
    runs: int
    failed: int
    final: float | None = None
    final_std: float | None = None
    time_to_target_s: float | None = None
    bytes_to_target: float | None = None
    step_time_s: float | None = None


TARGET_SLACK = 0.05
"""The default target sits this fraction of the best final's magnitude short of the best final."""


def default_target(results: list[Result]) -> float | None:
    """The best final metric of the study, moved 5 % of its magnitude in the worse direction.

    ``best − 0.05·|best|`` where higher is better, ``best + 0.05·|best|`` where lower is: 0.95 × 0.96
    for an accuracy, 1.05 × a loss, and −84 for returns of −80 and −95 (``0.95 × max`` would give −76,
    which no run reached). At least the best run reaches it, whatever the metric's sign."""
    ok = [r for r in results if r.ok]
    if not ok:
        return None
    metric, higher = ok[0].summary["metric"], ok[0].summary["higher_is_better"]
    finals = [r.summary["metrics"][metric] for r in ok if r.summary["metrics"].get(metric) is not None]
    if not finals:
        return None
    best = max(finals) if higher else min(finals)
    slack = TARGET_SLACK * abs(best)
    return best - slack if higher else best + slack


def first_hit(result: Result, target: float) -> dict | None:
    metric, higher = result.summary["metric"], result.summary["higher_is_better"]
    for point in result.curve:
        value = point.get(metric)
        if value is not None and (value >= target if higher else value <= target):
            return point
    return None


def median_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ranking(results: list[Result], target: float | None) -> list[Rank]:
    """Fastest to the target first (then by final metric); strategies that never got there last."""
    groups: dict[tuple[str, int], list[Result]] = defaultdict(list)
    for r in results:
        groups[r.cell.strategy.label, r.cell.workers].append(r)
    ranks = []
    for (label, workers), runs in groups.items():
        ok = [r for r in runs if r.ok]
        rank = Rank(label, workers, len(runs), len(runs) - len(ok))
        if ok:
            metric = ok[0].summary["metric"]
            finals = [r.summary["metrics"][metric] for r in ok]
            rank.final = statistics.fmean(finals)
            rank.final_std = statistics.pstdev(finals)
            hits = [first_hit(r, target) if target is not None else None for r in ok]
            if all(hits):  # a median over the seeds that all reached it
                rank.time_to_target_s = median_or_none([h["time_s"] for h in hits])
                rank.bytes_to_target = median_or_none([h.get("bytes_sent") for h in hits])
            rank.step_time_s = median_or_none([r.summary.get("step_time_s") for r in ok])
        ranks.append(rank)
    higher = next((r.summary["higher_is_better"] for r in results if r.ok), True)
    return sorted(ranks, key=lambda k: (k.final is None, k.time_to_target_s is None, k.time_to_target_s or 0,
                                        -(k.final or 0) if higher else (k.final or 0)))


def fmt(value: float | None, spec: str = ".3g", unit: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{unit}"


def table_rows(ranks: list[Rank]) -> list[list[str]]:
    return [[r.strategy, str(r.workers), f"{fmt(r.final, '.4f')} ± {fmt(r.final_std, '.4f')}" if r.final is not None
             else "—", fmt(r.time_to_target_s, ".1f", " s"),
             fmt(r.bytes_to_target / 1e6 if r.bytes_to_target is not None else None, ".3g", " MB"),
             fmt(r.step_time_s * 1e3 if r.step_time_s is not None else None, ".3g", " ms"),
             f"{r.runs - r.failed}/{r.runs}" + (" (failed: see below)" if r.failed else "")] for r in ranks]


HEADER = ["strategy", "W", "final {metric} (mean ± sd over seeds)", "time to target", "bytes to target (worker 0)",
          "step time", "runs ok"]


def describe(study: Study, target: float | None, metric: str, higher: bool) -> str:
    net = study.net or "loopback (no simulated network)"
    return (f"Task {study.task}, {study.seeds} seed(s), {study.steps or 'default'} steps per run, network: {net}"
            + (f", straggler {study.straggler}" if study.straggler else "")
            + (f". Target: {metric} {'≥' if higher else '≤'} {target:.4g}." if target is not None else ".")
            + " Time and bytes to target are medians over seeds, shown when every seed reached it.")


def markdown(study: Study, results: list[Result], ranks: list[Rank], target: float | None, metric: str,
             higher: bool, figures: list[Figure], out: Path) -> str:
    header = [h.format(metric=metric) for h in HEADER]
    lines = [f"# agentsync compare: {study.task}", "", describe(study, target, metric, higher), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(ranks)]
    failed = [r for r in results if not r.ok]
    if failed:
        lines += ["", "## Failed cells", ""] + [f"* `{r.cell.name}`: FAILED — {r.error}" for r in failed]
    lines += ["", "## Figures", ""]
    for f in figures:
        lines += [f"![{f.title}]({f.path.relative_to(out).as_posix()})", "", f"*{f.caption}*", ""] if f.drawn \
            else [f"*{f.caption}*", ""]
    lines += ["", "Every run's numbers are in `results.csv`; each run's folder is under `runs/`."]
    return "\n".join(lines) + "\n"


def html_page(study: Study, results: list[Result], ranks: list[Rank], target: float | None, metric: str,
              higher: bool, figures: list[Figure]) -> str:
    """One file with no external resource and no script: it opens anywhere, offline."""
    esc = html.escape
    head = "".join(f"<th>{esc(h.format(metric=metric))}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in table_rows(ranks))
    failed = [r for r in results if not r.ok]
    failures = ("<h2>Failed cells</h2><ul>" + "".join(f"<li><code>{esc(r.cell.name)}</code>: FAILED — {esc(r.error)}</li>"
                                                       for r in failed) + "</ul>") if failed else ""
    images = "".join(f'<figure><img alt="{esc(f.title)}" src="data:image/png;base64,'
                     f'{base64.b64encode(f.path.read_bytes()).decode()}"><figcaption>{esc(f.caption)}</figcaption></figure>'
                     if f.drawn else f'<p class="omitted">{esc(f.caption)}</p>' for f in figures)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>agentsync compare: {esc(study.task)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}th{{background:#f3f3f3}}img{{max-width:100%}}
figure{{margin:1.5em 0}}figcaption,.omitted{{color:#555;font-size:0.95em}}</style></head>
<body><h1>agentsync compare: {esc(study.task)}</h1><p>{esc(describe(study, target, metric, higher))}</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{failures}
<h2>Figures</h2>{images}</body></html>
"""
