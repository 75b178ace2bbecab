"""Compression: bytes to reach a target accuracy on digits with W = 4, codec × strategy, against
uncompressed allreduce; time to target under a slow simulated network; and DiLoCo on charlm.

    .venv/bin/python bench/compression.py [--steps 300] [--target 0.95] [--part digits|net|charlm|all] [--only LABEL ...]
    .venv/bin/python bench/compression.py --part charlm [--charlm-steps 1000]   # ~18 min on 2 cores

Each configuration trains once with evaluation every 10 steps. Every strategy here sends the same
volume every step (or every period), so the bytes until the first evaluation reaching the target
are the run's total bytes (all ranks, servers included) × steps_to_target / steps. Top-k's
``bits=4`` rounds the kept values to 4 bits (SparseLoCo's top-k + low-bit values); its indices are
always bit-packed. ``net`` times allreduce uncompressed against allreduce + top-k and the best
combination, gossip + top-k 0.5 % at 4 bits, under latency=20ms,bandwidth=100Mbit. ``ps-sync+pull``
compresses the servers' answers too (``strategy.pull_compression``, the same codec both ways).
``--only`` runs just the configurations named (with ``allreduce +none``, the reference).

``charlm`` (W = 4) trains allreduce for ``--charlm-steps``, then diloco for twice as many (H = 100,
the optimizer the rule picks for diloco on charlm: AdamW at charlm's tuned lr 3e-3) with
``qsgd:bits=4`` and with ``topk:ratio=0.01``, plain and streaming (K = 4, τ = 5, α = 0.5); with
``qsgd:bits=4`` summed by scatter-gather (``comm.compressed_sum``: each rank encodes and sends a
quarter of the sum, 1.5 payloads a rank instead of 3); and SparseLoCo's recipe (top-k 10 % at 2
bits, error feedback decayed by 0.95 in place of the outer momentum, outer SGD at lr 1). Bytes to
a loss are what is compared, and DiLoCo needs more steps than allreduce to reach one (H = 50 did
not reach the target in 1,000 steps, H = 200 not in 3,000, and 2-bit outer gradients diverged;
found with single runs). The target is allreduce's final held-out loss + 2 %; bytes to
target are rank 0's count at the first evaluation reaching it × W (every rank sends the same under
both strategies), and the reduction factor is allreduce's over each run's (our goal: ≥ 400×).
"""
from __future__ import annotations

import argparse
import json

from common import first_reaching, run

STRATEGIES = {
    "allreduce": ["--strategy", "allreduce"],
    "ps-sync": ["--strategy", "ps-sync"],
    "gossip": ["--strategy", "gossip", "--set", "strategy.topology=ring"],
    "local-sgd": ["--strategy", "local-sgd", "--set", "strategy.period=8"],
    "ps-sync+pull": ["--strategy", "ps-sync"],
}
CODECS = {
    "allreduce": ["none", "fp16", "qsgd:bits=4", "sign", "topk:ratio=0.01"],
    "ps-sync": ["none", "qsgd:bits=4", "topk:ratio=0.01"],
    "gossip": ["none", "qsgd:bits=4", "topk:ratio=0.01", "topk:ratio=0.01:bits=4", "topk:ratio=0.005:bits=4"],
    "local-sgd": ["none", "qsgd:bits=4", "topk:ratio=0.01", "topk:ratio=0.01:bits=4"],
    "ps-sync+pull": ["qsgd:bits=4", "topk:ratio=0.01"],
}
EXTRA = {**{("gossip", c): ["--set", "strategy.consensus_step=0.2"]  # CHOCO's γ for a sparse codec
            for c in CODECS["gossip"] if c.startswith("topk")},
         **{("ps-sync+pull", c): ["--set", f"strategy.pull_compression={c}"] for c in CODECS["ps-sync+pull"]}}
NET = "latency=20ms,bandwidth=100Mbit"
NET_RUNS = [("allreduce", "none"), ("allreduce", "topk:ratio=0.01"), ("gossip", "topk:ratio=0.005:bits=4")]
DILOCO = ["--strategy", "diloco", "--set", "strategy.inner_steps=100"]
STREAMING = ["--set", "strategy.fragments=4", "--set", "strategy.overlap=5", "--set", "strategy.mix=0.5"]
SCATTER = ["--set", "comm.compressed_sum=scatter-gather"]
SPARSELOCO = ["--set", "strategy.outer_lr=1.0", "--set", "strategy.outer_momentum=0"]  # the decayed residual instead
CHARLM = {"allreduce +none": ["--strategy", "allreduce"],
          **{f"diloco{tag} +{codec}": [*DILOCO, *streaming, "--compress", codec]
             for tag, streaming in (("", []), (" streaming", STREAMING))
             for codec in ("qsgd:bits=4", "topk:ratio=0.01")},
          "diloco scatter-gather +qsgd:bits=4": [*DILOCO, *SCATTER, "--compress", "qsgd:bits=4"],
          "diloco sparseloco +topk:ratio=0.1:bits=2:decay=0.95": [*DILOCO, *SPARSELOCO, "--compress",
                                                                   "topk:ratio=0.1:bits=2:decay=0.95"]}


def measure(args, strategy: str, codec: str, *extra: str) -> dict:
    summary, events = run("--task", "digits", "--seed", str(args.seed), "--workers", str(args.workers),
                          "--steps", str(args.steps),
                          "--set", "eval_every=10", "--compress", codec, *STRATEGIES[strategy],
                          *EXTRA.get((strategy, codec), []), *extra)
    hit = first_reaching(events, "accuracy", args.target)
    total = summary["comm"]["bytes_sent"]
    return {"final_accuracy": summary["metrics"]["accuracy"],
            "steps_to_target": hit["step"] if hit else None,
            "seconds_to_target": hit["time_s"] if hit else None,
            "bytes_to_target": round(total * hit["step"] / args.steps) if hit else None,
            "bytes_total": total, "comm_time_s": summary["comm"]["comm_time_s"],
            "codec_time_s": summary["comm"].get("codec_time_s", 0.0), "wall_time_s": summary["wall_time_s"]}


def charlm(args) -> dict:
    """Each configuration of :data:`CHARLM` on charlm; bytes to allreduce's final loss + 2 %."""
    def steps(name: str) -> int:
        return args.charlm_steps * (1 if name.startswith("allreduce") else 2)

    runs = {name: run("--task", "charlm", "--seed", str(args.seed), "--workers", str(args.workers),
                      "--steps", str(steps(name)),
                      "--set", f"eval_every={args.charlm_eval_every}", *options) for name, options in CHARLM.items()
            if not args.only or name in args.only or name == "allreduce +none"}
    target = runs["allreduce +none"][0]["metrics"]["loss"] * 1.02
    results = {}
    for name, (summary, events) in runs.items():
        hit = first_reaching(events, "loss", target, lower_is_better=True)
        results[name] = {"final_loss": summary["metrics"]["loss"], "steps_to_target": hit["step"] if hit else None,
                         "bytes_to_target": hit["bytes_sent"] * args.workers if hit else None,
                         "bytes_total": summary["comm"]["bytes_sent"], "wall_time_s": summary["wall_time_s"]}
    base = results["allreduce +none"]["bytes_to_target"]
    for r in results.values():
        r["bytes_reduction_vs_allreduce"] = base / r["bytes_to_target"] if base and r["bytes_to_target"] else None
    return {"allreduce_steps": steps("allreduce"), "diloco_steps": steps("diloco"), "target_loss": target,
            **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0, help="every run's seed (a second seed shows the spread)")
    parser.add_argument("--part", choices=("digits", "net", "charlm", "all"), default="all")
    parser.add_argument("--charlm-steps", type=int, default=1000)
    parser.add_argument("--charlm-eval-every", type=int, default=50)
    parser.add_argument("--only", nargs="+", metavar="LABEL", help='configurations to run, e.g. "ps-sync+pull '
                        '+topk:ratio=0.01" (allreduce +none, the reference, always runs)')
    args = parser.parse_args()
    out = {"benchmark": "compression", "seed": args.seed, "workers": args.workers, "digits_steps": args.steps,
           "target_accuracy": args.target}
    if args.part in ("digits", "all"):
        chosen = [(s, c) for s in STRATEGIES for c in CODECS[s]
                  if not args.only or f"{s} +{c}" in args.only or (s, c) == ("allreduce", "none")]
        results = {f"{s} +{c}": measure(args, s, c) for s, c in chosen}
        base = results["allreduce +none"]
        for r in results.values():
            if r["bytes_to_target"] and base["bytes_to_target"]:
                r["bytes_reduction_vs_allreduce"] = base["bytes_to_target"] / r["bytes_to_target"]
            r["accuracy_loss_points"] = round(100 * (base["final_accuracy"] - r["final_accuracy"]), 2)
        out["digits"] = results
    if args.part in ("net", "all"):
        out["net"] = {"net": NET, **{f"{s} +{c}": measure(args, s, c, "--net", NET) for s, c in NET_RUNS}}
    if args.part in ("charlm", "all"):
        out["charlm"] = charlm(args)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
