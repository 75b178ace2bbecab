"""Raw vector-env throughput on CartPole-v1: EnvPool vs Gymnasium's sync and async vector envs.

    .venv/bin/python bench/envpool_vs_gymnasium.py --python /work/envpool-venv/bin/python [--envs 8] [--steps 20000]

EnvPool is not an agentsync dependency (its wheels pin their own numpy and gymnasium), so both sides
run in one child interpreter given by ``--python`` that has ``envpool`` and ``gymnasium``:
``python -m venv /work/envpool-venv && /work/envpool-venv/bin/pip install envpool gymnasium``.
Random actions, no policy, ``--repeats`` timings per side (median reported); prints JSON with the
ratio envpool / gymnasium-sync. It decides whether agentsync offers EnvPool as a backend: only
where it is faster here.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r'''
import json, statistics, sys, time
import numpy as np
import gymnasium as gym
import envpool
envs, steps, repeats = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

def rate(make):
    env = make()
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 2, size=(steps, envs))
    start = time.perf_counter()
    for a in actions:
        env.step(a)
    elapsed = time.perf_counter() - start
    env.close()
    return steps * envs / elapsed

sides = {
    "gymnasium_sync": lambda: gym.make_vec("CartPole-v1", num_envs=envs, vectorization_mode="sync"),
    "gymnasium_async": lambda: gym.make_vec("CartPole-v1", num_envs=envs, vectorization_mode="async"),
    "envpool": lambda: envpool.make_gymnasium("CartPole-v1", num_envs=envs, seed=0),
}
out = {name: [rate(make) for _ in range(repeats)] for name, make in sides.items()}
print(json.dumps({"versions": {"envpool": envpool.__version__, "gymnasium": gym.__version__},
                  "env_steps_per_s": {k: statistics.median(v) for k, v in out.items()}, "runs": out}))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True, help="interpreter of an environment with envpool and gymnasium")
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20_000, help="vector steps per timing")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result = subprocess.run([args.python, "-c", CHILD, str(args.envs), str(args.steps), str(args.repeats)],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if result.returncode != 0:
        sys.exit(f"the child failed:\n{result.stderr[-2000:]}")
    child = json.loads(result.stdout.strip().splitlines()[-1])
    rates = child["env_steps_per_s"]
    print(json.dumps({"envs": args.envs, "steps": args.steps, "cpus": os.cpu_count(), "load_before": os.getloadavg()[0],
                      **child, "ratio_envpool_to_gymnasium_sync": rates["envpool"] / rates["gymnasium_sync"],
                      "ratio_envpool_to_gymnasium_async": rates["envpool"] / rates["gymnasium_async"]}, indent=2))


if __name__ == "__main__":
    main()
