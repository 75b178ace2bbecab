"""Env steps per second of rollout collection, policy inference included: agentsync vs SB3 PPO.

    .venv/bin/python bench/env_throughput.py [--envs 8] [--steps 4096] [--repeats 5]

Both collect on CartPole-v1 with the same env count and a 64x64 tanh actor-critic, one torch
thread; agentsync's :class:`Collector` (Gymnasium 1.x sync vector env, autoreset masking) against
SB3's ``PPO.collect_rollouts`` into its RolloutBuffer. Prints JSON with medians and the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from agentsync.tasks.ppo import PPOConfig, PPOTask


def agentsync_rate(envs: int, steps: int) -> float:
    task = PPOTask(PPOConfig(envs_per_worker=envs, n_steps=steps // envs), worker_rank=0, num_workers=1, seed=0)
    torch.manual_seed(0)
    model = task.build_model()
    task.collector  # build the envs outside the timed region, as SB3's are
    start = time.perf_counter()
    task.collect(model)  # rollout + value estimates + GAE, what one PPO iteration costs before updates
    return steps / (time.perf_counter() - start)


def sb3_rate(envs: int, steps: int) -> float:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.env_util import make_vec_env

    model = PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=envs, seed=0), n_steps=steps // envs,
                batch_size=steps, seed=0, device="cpu")
    model._setup_learn(steps, CallbackList([]))
    callback = CallbackList([])
    callback.init_callback(model)
    start = time.perf_counter()
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=steps // envs)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ours, theirs = [], []
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        ours.append(agentsync_rate(args.envs, args.steps))
        theirs.append(sb3_rate(args.envs, args.steps))
    a, s = statistics.median(ours), statistics.median(theirs)
    print(json.dumps({"envs": args.envs, "steps": args.steps, "repeats": args.repeats,
                      "load_avg_1m": os.getloadavg()[0], "agentsync_steps_per_s": round(a, 1),
                      "sb3_steps_per_s": round(s, 1), "ratio": round(a / s, 3)}, indent=1))


if __name__ == "__main__":
    main()
