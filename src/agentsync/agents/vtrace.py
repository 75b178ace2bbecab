"""V-trace (Espeholt et al., 2018, IMPALA §4.1): value targets and policy-gradient advantages for
experience collected by a behaviour policy μ that lags the learner's policy π.

With ρ_t = min(ρ̄, π(a_t|x_t) / μ(a_t|x_t)), c_t = min(c̄, π/μ), discount γ_t = γ · (1 − done_t):

    δ_t   = ρ_t (r_t + γ_t V(x_{t+1}) − V(x_t))
    v_t   = V(x_t) + δ_t + γ_t c_t (v_{t+1} − V(x_{t+1}))         (v_T = V(x_T), the bootstrap)
    A_t   = ρ_t (r_t + γ_t v_{t+1} − V(x_t))                      (the policy-gradient advantage)

computed backwards over a segment of T steps. On-policy with ρ̄ = c̄ = ∞ every ratio is 1 and v_t
is the n-step bootstrapped return Σ_{k<T−t} (Π γ) r + (Π γ) V(x_T); truncating ρ̄ bounds the
fixed point's bias towards μ's value, truncating c̄ bounds the variance of the trace. ``lam``
scales every c_t (the paper's remark on λ): λ < 1 cuts the trace as GAE's λ does.

``valid`` (optional, 1/0) marks steps that are transitions: Gymnasium's autoreset step after an
episode's end is not, and gets ρ = discount = 0, so its target is its own V and nothing flows
through it. The episode's last real step therefore bootstraps from V(final observation) when it
was truncated (``dones`` 0) and from nothing when it terminated (``dones`` 1).

Shapes: time first, ``(T, B)``; ``bootstrap_value`` is ``(B,)``. No gradient flows through the
targets (they are computed under ``no_grad``), as in IMPALA.
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class VTraceReturns:
    vs: torch.Tensor
    """Value targets v_t, ``(T, B)``."""
    advantages: torch.Tensor
    """Policy-gradient advantages ρ_t (r_t + γ_t v_{t+1} − V(x_t)), ``(T, B)``."""
    q_advantages: torch.Tensor
    """The same without ρ_t, r_t + γ_t v_{t+1} − V(x_t): for a loss that weighs by π/μ itself (APPO)."""


@torch.no_grad()
def vtrace(behaviour_logp: torch.Tensor, target_logp: torch.Tensor, rewards: torch.Tensor, values: torch.Tensor,
           bootstrap_value: torch.Tensor, dones: torch.Tensor, *, gamma: float, rho_bar: float = 1.0,
           c_bar: float = 1.0, lam: float = 1.0, valid: torch.Tensor | None = None) -> VTraceReturns:
    """V-trace targets of one segment; ``dones[t]`` ends the episode after step t (no bootstrap across it)."""
    ratios = torch.exp(target_logp - behaviour_logp)
    rhos, cs = ratios.clamp(max=rho_bar), lam * ratios.clamp(max=c_bar)
    discounts = gamma * (1.0 - dones.to(values.dtype))
    if valid is not None:
        rhos, discounts = rhos * valid, discounts * valid
    next_values = torch.cat([values[1:], bootstrap_value.unsqueeze(0)])
    deltas = rhos * (rewards + discounts * next_values - values)
    vs_minus_v = torch.zeros_like(values)
    carry = torch.zeros_like(bootstrap_value)
    for t in reversed(range(values.shape[0])):
        carry = deltas[t] + discounts[t] * cs[t] * carry
        vs_minus_v[t] = carry
    vs = values + vs_minus_v
    next_vs = torch.cat([vs[1:], bootstrap_value.unsqueeze(0)])
    q_advantages = rewards + discounts * next_vs - values
    return VTraceReturns(vs=vs, advantages=rhos * q_advantages, q_advantages=q_advantages)
