"""Time and env steps to eval_return >= 475 on CartPole-v1: agentsync cartpole-ppo (W = 1, 2) vs SB3 PPO.

    .venv/bin/python bench/ppo_vs_sb3.py [--seeds 0,1,2] [--max-steps 4000] [--split-sb3-envs]
                                         [--lr-scaling linear|sqrt|none]

Both sides evaluate every 4096 env steps (all workers together) on 10 deterministic episodes and
stop at the first evaluation >= 475. SB3 uses RL-Zoo's CartPole hyperparameters (8 envs, n_steps 32,
batch 256, gae 0.8, gamma 0.98, 20 epochs, ent 0, lr and clip linear from 1e-3 / 0.2 over 1e5 steps,
gradient clipping at 0.5). agentsync runs cartpole-ppo's defaults (the same PPO settings per worker,
Adam 1e-3 and the clip ε 0.2 decayed linearly to 0 over the run's updates, the averaged gradient
clipped at 0.5): over the default 4,000 updates the W = 2 run's schedule spans 102,400 env steps, SB3's
100,000. Each W = 2 step averages two workers' 256-sample batches, a batch twice SB3's, so the W = 2
run takes the linear scaling rule (``optimizer.lr_scaling=linear``: Adam 2e-3, decayed the same way;
``--lr-scaling`` chooses). Time is wall-clock from launching the run's process to seeing the hit (the parent polls
every 50 ms), so process start-up, imports and the process group are included on both sides.
With ``--split-sb3-envs`` the W workers share SB3's 8 envs instead (8/W each: the same 256-transition
rollout and 20 updates per rollout as SB3, strong scaling), the schedule spans SB3's 1e5 env steps,
and the learning rate is not scaled (the global batch is SB3's).
Prints JSON, with the issue's goals for W = 2: time <= 0.8x SB3's and env steps <= 1.2x.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TARGET, EVAL_ENV_STEPS = 475.0, 4096
SB3_ENVS, SB3_TIMESTEPS = 8, 100_000
GOALS = {"time": 0.8, "env_steps": 1.2}  # W = 2 vs SB3, medians


def kill_tree(proc: subprocess.Popen) -> None:
    procs = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


def cartpole_ppo_defaults():
    """cartpole-ppo's options and default number of updates.

    Imported here, not at the top, so that the SB3 child does not import agentsync."""
    from agentsync.tasks.ppo import PPOConfig, PPOTask

    return PPOConfig(), PPOTask.default_steps


def agentsync_run(workers: int, seed: int, max_steps: int | None, split_sb3_envs: bool, lr_scaling: str) -> dict:
    """One run; polls metrics.jsonl for the first eval >= TARGET."""
    c, default_steps = cartpole_ppo_defaults()
    envs = SB3_ENVS // workers if split_sb3_envs else c.envs_per_worker
    rollout, updates_per_rollout = c.n_steps * envs, c.epochs * c.minibatches
    if max_steps is None:
        max_steps = SB3_TIMESTEPS * updates_per_rollout // (rollout * workers) if split_sb3_envs else default_steps
    eval_every = EVAL_ENV_STEPS // (rollout * workers) * updates_per_rollout
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "agentsync", "train", "--out", out, "--task", "cartpole-ppo",
               "--strategy", "allreduce" if workers > 1 else "none", "--workers", str(workers),
               "--seed", str(seed), "--steps", str(max_steps), "--set", f"eval_every={eval_every}",
               "--set", f"task.envs_per_worker={envs}", "--set", f"optimizer.lr_scaling={lr_scaling}"]
        start = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metrics, seen = Path(out) / "metrics.jsonl", 0
        try:
            while True:
                lines = metrics.read_text().splitlines() if metrics.exists() else []
                for line in lines[seen:]:
                    row = json.loads(line)
                    if row.get("event") in ("eval", "final") and row.get("eval_return", 0) >= TARGET:
                        rollouts = -(-row["step"] // updates_per_rollout)
                        return {"time_s": time.time() - start, "env_steps": rollouts * rollout * workers,
                                "max_steps": max_steps}
                seen = len(lines) if lines and lines[-1].endswith("}") else seen
                if proc.poll() is not None and seen >= len(lines):
                    return {"time_s": None, "env_steps": None, "max_steps": max_steps}
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                kill_tree(proc)


def sb3_child(seed: int) -> None:
    """Runs in its own process: SB3 PPO with RL-Zoo hyperparameters, stops at the threshold."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    linear = lambda v: (lambda remaining: remaining * v)  # noqa: E731
    env = make_vec_env("CartPole-v1", n_envs=SB3_ENVS, seed=seed)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                ent_coef=0.0, learning_rate=linear(1e-3), clip_range=linear(0.2), max_grad_norm=0.5,
                seed=seed, device="cpu")
    stop = StopTrainingOnRewardThreshold(reward_threshold=TARGET, verbose=0)
    callback = EvalCallback(make_vec_env("CartPole-v1", n_envs=1, seed=seed + 10_000), n_eval_episodes=10,
                            eval_freq=EVAL_ENV_STEPS // SB3_ENVS, deterministic=True, callback_on_new_best=stop, verbose=0)
    model.learn(total_timesteps=SB3_TIMESTEPS, callback=callback)
    hit = callback.best_mean_reward >= TARGET
    print(json.dumps({"hit": hit, "env_steps": int(model.num_timesteps) if hit else None}), flush=True)


def sb3_run(seed: int) -> dict:
    start = time.time()
    result = subprocess.run([sys.executable, __file__, "--sb3-child", str(seed)], capture_output=True, text=True,
                            env=ENV, cwd=ROOT, timeout=900)
    elapsed = time.time() - start
    row = json.loads(result.stdout.strip().splitlines()[-1])
    return {"time_s": elapsed if row["hit"] else None, "env_steps": row["env_steps"]}


def median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return statistics.median(values) if len(values) == len(rows) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max-steps", type=int, help="agentsync updates per worker, the learning-rate "
                        "schedule's horizon (default: cartpole-ppo's, or SB3's 1e5 env steps with --split-sb3-envs)")
    parser.add_argument("--split-sb3-envs", action="store_true",
                        help="W workers share SB3's 8 envs (same global rollout as SB3) instead of 8 envs each")
    parser.add_argument("--lr-scaling", choices=("none", "linear", "sqrt"),
                        help="agentsync's optimizer.lr_scaling (default: linear; none with --split-sb3-envs)")
    parser.add_argument("--sb3-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sb3_child is not None:
        return sb3_child(args.sb3_child)
    seeds = [int(s) for s in args.seeds.split(",")]
    scaling = args.lr_scaling or ("none" if args.split_sb3_envs else "linear")
    load_before = os.getloadavg()[0]
    runs = {"sb3": [sb3_run(s) for s in seeds],
            "agentsync_w1": [agentsync_run(1, s, args.max_steps, args.split_sb3_envs, scaling) for s in seeds],
            "agentsync_w2": [agentsync_run(2, s, args.max_steps, args.split_sb3_envs, scaling) for s in seeds]}
    medians = {name: {"time_s": median(rows, "time_s"), "env_steps": median(rows, "env_steps")}
               for name, rows in runs.items()}
    ratio = lambda a, k: (medians[a][k] / medians["sb3"][k]  # noqa: E731
                          if medians[a][k] is not None and medians["sb3"][k] else None)
    ratios = {a: {"time": ratio(a, "time_s"), "env_steps": ratio(a, "env_steps")}
              for a in ("agentsync_w1", "agentsync_w2")}
    goals = {k: {"goal": g, "w2_ratio": ratios["agentsync_w2"][k],
                 "met": ratios["agentsync_w2"][k] is not None and ratios["agentsync_w2"][k] <= g}
             for k, g in GOALS.items()}
    print(json.dumps({"target": TARGET, "seeds": seeds, "max_steps": args.max_steps,
                      "split_sb3_envs": args.split_sb3_envs, "lr_scaling": scaling, "cpu_count": os.cpu_count(),
                      "load_avg_1m": {"before": load_before, "after": os.getloadavg()[0]}, "runs": runs,
                      "medians": medians, "ratios_vs_sb3": ratios, "goals_w2": goals}, indent=1))


if __name__ == "__main__":
    main()
