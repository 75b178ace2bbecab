"""CartPole-v1 to eval_return >= 475: agentsync actor-learner (cartpole-impala) vs agentsync PPO vs SB3 PPO
(vs RLlib APPO where it is installed), side by side in one run.

    .venv/bin/python bench/actor_learner.py [--seeds 0,1,2] [--rllib-python /work/rllib-venv/bin/python]

Every side evaluates about every 4,096 env steps (10 deterministic episodes) and stops at the first
evaluation >= 475; time is wall-clock from launching the run's process to seeing the hit, so
start-up, imports and process groups are in it on every side. ``env_steps`` are the env steps the
learners had trained on at the hit (actor-learner: batches taken × transitions per batch; actors run
up to a queue ahead), and ``env_steps_per_s`` is env_steps / time. For the actor-learner runs the
script lets the run end and also reports the actors' own rate over the run, the mean policy lag
and the learner's idle fraction from summary.json. The agentsync PPO and SB3 sides are
``bench/ppo_vs_sb3.py``'s runs (RL-Zoo hyperparameters on SB3, cartpole-ppo's defaults here).

RLlib runs only with ``--rllib-python``, an interpreter of a separate environment that has
``ray[rllib]`` (RLlib's dependencies are not agentsync's; ``python -m venv /work/rllib-venv &&
/work/rllib-venv/bin/pip install torch==2.13.0 'ray[rllib]==2.60.0'``): APPO with 2 env runners × 4
envs, RLlib's defaults otherwise, stopped after ``RLLIB_LIMIT_S`` s without a hit (its rate, env
steps sampled / elapsed, is reported either way). Prints JSON with medians and ratios to SB3.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_vs_sb3 import ENV, ROOT, TARGET, agentsync_run, kill_tree, sb3_run  # noqa: E402

EVAL_ENV_STEPS = 4096


def impala_defaults():
    from agentsync.actors import ActorsConfig
    from agentsync.tasks.impala import ImpalaConfig

    return ImpalaConfig(), ActorsConfig()


def impala_run(workers: int, actors: int, seed: int) -> dict:
    """One cartpole-impala run to its end; the first eval >= TARGET is timed as it is written."""
    task, a = impala_defaults()
    batch = task.batch_segments * a.segment_length * a.envs_per_actor  # transitions per learner batch
    eval_every = max(1, EVAL_ENV_STEPS // (batch * workers)) * task.epochs
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "agentsync", "train", "--out", out, "--task", "cartpole-impala",
               "--strategy", "allreduce", "--workers", str(workers), "--actors", str(actors),
               "--seed", str(seed), "--set", f"eval_every={eval_every}"]
        start = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        metrics, seen, hit = Path(out) / "metrics.jsonl", 0, None
        try:
            while proc.poll() is None or seen < len(lines_of(metrics)):
                lines = lines_of(metrics)
                for line in lines[seen:]:
                    row = json.loads(line)
                    if hit is None and row.get("event") in ("eval", "final") and row.get("eval_return", 0) >= TARGET:
                        batches = math.ceil(row["step"] / task.epochs)
                        hit = {"time_s": time.time() - start, "env_steps": batches * batch * workers}
                seen = len(lines)
                time.sleep(0.05)
            if proc.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read()[-2000:]}")
            summary = json.loads((Path(out) / "summary.json").read_text())
        finally:
            if proc.poll() is None:
                kill_tree(proc)
    s = summary["actors"]
    return {**(hit or {"time_s": None, "env_steps": None}), "final_eval_return": summary["metrics"]["eval_return"],
            "actor_env_steps_per_s": s["env_steps_per_s"], "learner_samples_per_s": s["learner_samples_per_s"],
            "policy_lag_mean": s["policy_lag_mean"], "learner_idle_fraction": s["learner_idle_fraction"]}


def lines_of(path: Path) -> list[str]:
    """Complete lines only (a line being written has no newline yet)."""
    if not path.exists():
        return []
    text = path.read_text()
    return text[: text.rfind("\n") + 1].splitlines()


# -- RLlib APPO, in its own environment ----------------------------------------------------------
RLLIB_CHILD = r'''
import json, sys, time
start = time.time()
import ray
from ray.rllib.algorithms.appo import APPOConfig
seed, target, limit = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
# 4 logical CPUs on this 2-core machine: APPO asks one per env runner plus its learner's, and with
# num_cpus=2 build_algo waits for resources forever
ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
config = (APPOConfig().environment("CartPole-v1").debugging(seed=seed)
          .env_runners(num_env_runners=2, num_envs_per_env_runner=4)
          .evaluation(evaluation_interval=1, evaluation_duration=10, evaluation_duration_unit="episodes",
                      evaluation_config={"explore": False}))
algo = config.build_algo()
hit, steps, best = None, 0, None
while time.time() - start < limit:
    result = algo.train()
    steps = int(result["num_env_steps_sampled_lifetime"])
    ret = result.get("evaluation", {}).get("env_runners", {}).get("episode_return_mean")
    best = ret if best is None or (ret is not None and ret > best) else best
    if ret is not None and ret >= target:
        hit = time.time() - start
        break
print(json.dumps({"time_s": hit, "env_steps": steps if hit else None, "elapsed_s": time.time() - start,
                  "env_steps_sampled": steps, "best_eval_return": best}), flush=True)
'''
RLLIB_LIMIT_S = 300


def rllib_run(python: str, seed: int) -> dict:
    """RLlib APPO; the child's clock starts before it imports Ray (start-up included, as for the others)."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(RLLIB_CHILD)
    try:
        result = subprocess.run([python, f.name, str(seed), str(TARGET), str(RLLIB_LIMIT_S)], capture_output=True,
                                text=True, env={**ENV, "RAY_DEDUP_LOGS": "0"}, timeout=RLLIB_LIMIT_S + 300)
    finally:
        os.unlink(f.name)
    if result.returncode != 0:
        return {"time_s": None, "env_steps": None, "error": (result.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- the report ------------------------------------------------------------------------------------
def with_rate(row: dict) -> dict:
    if row.get("time_s") and row.get("env_steps"):
        rate = row["env_steps"] / row["time_s"]
    elif row.get("elapsed_s") and row.get("env_steps_sampled"):  # RLlib without a hit: its rate so far
        rate = row["env_steps_sampled"] / row["elapsed_s"]
    else:
        rate = None
    return {**row, "env_steps_per_s": rate}


def median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values and len(values) == len(rows) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rllib-python", help="python of an environment with ray[rllib] (RLlib APPO is skipped without)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    load_before = os.getloadavg()[0]
    runs = {
        "agentsync_impala_w1_a2": [impala_run(1, 2, s) for s in seeds],
        "agentsync_impala_w2_a4": [impala_run(2, 4, s) for s in seeds],
        "agentsync_ppo_w1": [agentsync_run(1, s, None, False) for s in seeds],
        "agentsync_ppo_w2": [agentsync_run(2, s, None, False) for s in seeds],
        "sb3_ppo": [sb3_run(s) for s in seeds],
    }
    if args.rllib_python:
        runs["rllib_appo"] = [rllib_run(args.rllib_python, s) for s in seeds]
    runs = {name: [with_rate(r) for r in rows] for name, rows in runs.items()}
    keys = ("time_s", "env_steps", "env_steps_per_s", "actor_env_steps_per_s", "policy_lag_mean",
            "learner_idle_fraction", "final_eval_return")
    medians = {name: {k: median(rows, k) for k in keys if any(k in r for r in rows)} for name, rows in runs.items()}
    sb3 = medians["sb3_ppo"]
    ratios = {name: {k: (m[k] / sb3[k] if m.get(k) is not None and sb3.get(k) else None)
                     for k in ("time_s", "env_steps", "env_steps_per_s")}
              for name, m in medians.items() if name != "sb3_ppo"}
    print(json.dumps({"target": TARGET, "seeds": seeds, "machine": {"cpus": os.cpu_count(), "load_before": load_before},
                      "rllib": "run" if args.rllib_python else "skipped: no --rllib-python given",
                      "medians": medians, "ratios_to_sb3": ratios, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
