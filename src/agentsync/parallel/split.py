"""How a model is cut into pipeline stages: a task's units, balanced by parameter count.

A task declares its model as an ordered list of *units* (``Task.pipeline_units``): modules that
run one after another, each taking the previous one's single output tensor. ``digits``' units are
its layers (a Linear with its ReLU); ``charlm``'s are the embeddings, each transformer block, and
the final norm with the head. :func:`balanced_split` cuts the list into P contiguous runs so that
the largest stage holds as few parameters as possible (the classic linear-partition problem,
solved exactly by dynamic programming), then :class:`StageModule` runs one run of units.

The stage's parameters *are* the whole model's tensors (no copy), so the whole model can be put
back together by name: :func:`stage_keys` maps a stage's state-dict keys to the whole model's.
"""
from __future__ import annotations

import torch
from torch import nn


def balanced_split(sizes: list[int], stages: int) -> list[int]:
    """Cut points ``[0, c1, …, len(sizes)]`` of ``stages`` non-empty contiguous runs minimising the largest sum.

    Example::

        balanced_split([8320, 16512, 1290], 2)   # [0, 1, 3]: stage 0 has 8,320, stage 1 17,802
    """
    n = len(sizes)
    if not 1 <= stages <= n:
        raise ValueError(f"cannot cut {n} units into {stages} stages")
    prefix = [0]
    for s in sizes:
        prefix.append(prefix[-1] + s)
    inf = float("inf")
    # best[k][i]: the smallest largest-stage of the first i units in k stages; cut[k][i] where the last run starts
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0
    for k in range(1, stages + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                cost = max(best[k - 1][j], prefix[i] - prefix[j])
                if cost < best[k][i]:
                    best[k][i], cut[k][i] = cost, j
    points, i = [n], n
    for k in range(stages, 0, -1):
        i = cut[k][i]
        points.append(i)
    return points[::-1]


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class StageModule(nn.Sequential):
    """One pipeline stage: a contiguous run of a model's units, applied in order."""


def stage_module(units: list[nn.Module], stage: int, stages: int, points: list[int] | None = None) -> StageModule:
    """Stage ``stage`` of ``stages`` over ``units``, cut at ``points`` (default: :func:`balanced_split`)."""
    points = points or balanced_split([param_count(u) for u in units], stages)
    return StageModule(*units[points[stage]:points[stage + 1]])


def stage_examples(units: list[nn.Module], points: list[int], stage: int, microbatch: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One microbatch's input to stage ``stage`` and its output, computed through the units before it.

    Autograd stays on: the stage checks that what it receives requires a gradient where it should.
    """
    x = microbatch
    for unit in units[:points[stage]]:
        x = unit(x)
    y = x
    for unit in units[points[stage]:points[stage + 1]]:
        y = unit(y)
    return x.detach().requires_grad_(x.requires_grad), y.detach().requires_grad_(y.requires_grad)


def stage_keys(whole: nn.Module, stage: nn.Module) -> dict[str, str]:
    """``{stage key: whole-model key}`` for every parameter and buffer the stage holds (found by identity)."""
    names = {id(t): k for k, t in whole.state_dict(keep_vars=True).items()}
    return {k: names[id(t)] for k, t in stage.state_dict(keep_vars=True).items()}


def to_whole_keys(state: dict, keys: dict[str, str]) -> dict:
    """A stage-shaped state dict (or one of a module that holds stage copies under a prefix, e.g. an
    ensemble's ``members.i.``) renamed to the whole model's keys."""
    out = {}
    for key, value in state.items():
        if key in keys:
            out[keys[key]] = value
            continue
        parts = key.split(".")
        for i in range(1, len(parts)):
            rest = ".".join(parts[i:])
            if rest in keys:
                out[".".join(parts[:i] + [keys[rest]])] = value
                break
        else:
            raise KeyError(f"{key!r} is not a key of this pipeline stage")
    return out
