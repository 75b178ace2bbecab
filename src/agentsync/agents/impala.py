"""The learner's loss on actors' segments: IMPALA's V-trace actor-critic, or APPO's clipped surrogate.

Both compute V-trace targets (:mod:`agentsync.agents.vtrace`) with the learner's current values
and policy, under ``no_grad``, then

* ``vtrace`` (IMPALA): −ρ_t A_t log π(a_t|x_t), one gradient step per batch;
* ``appo``: PPO's clipped surrogate on r = π/μ, the learner's policy over the one that acted,
  with V-trace's advantages r_t + γ v_{t+1} − V(x_t) (normalised). The clipped ratio is the
  importance correction, and it bounds how far several epochs on one batch move π from μ. A
  ratio against the learner's own policy when the batch arrived (PPO's π_old) is not: with the
  actors two batches behind it, CartPole runs collapsed from 500 to ~100 and did not recover,
  while clipping against μ ended every run at 500 (docs/tasks/rl.md);

plus vf_coef · ½(v_t − V(x_t))² − ent_coef · entropy, averaged over valid steps (not Gymnasium's
autoreset steps).
"""
from __future__ import annotations

import dataclasses

import torch

from agentsync.agents.actor import ActorCritic
from agentsync.agents.segments import Segment
from agentsync.agents.vtrace import vtrace

LOSSES = ("vtrace", "appo")


@dataclasses.dataclass(frozen=True)
class ImpalaLoss:
    gamma: float
    rho_bar: float
    c_bar: float
    lam: float
    vf_coef: float
    ent_coef: float
    kind: str = "appo"
    clip: float = 0.2
    normalize_advantage: bool = True

    def __call__(self, model: ActorCritic, batch: Segment) -> torch.Tensor:
        T, B = batch.rewards.shape
        logits, values = model(batch.obs.flatten(0, 1))
        logp_all = torch.log_softmax(logits, -1).view(T, B, -1)
        values = values.view(T, B)
        logp = logp_all.gather(-1, batch.actions[..., None]).squeeze(-1)
        bootstrap = model.values(batch.bootstrap_obs)
        targets = vtrace(batch.behaviour_logp, logp.detach(), batch.rewards, values.detach(), bootstrap.detach(),
                         batch.dones, gamma=self.gamma, rho_bar=self.rho_bar, c_bar=self.c_bar, lam=self.lam,
                         valid=batch.valid)
        mask = batch.valid
        n = mask.sum().clamp(min=1.0)

        def mean(x: torch.Tensor) -> torch.Tensor:
            return (x * mask).sum() / n

        if self.kind == "vtrace":
            policy = -mean(targets.advantages * logp)
        else:
            advantages = targets.q_advantages
            if self.normalize_advantage:  # as ppo_loss: unbiased std, over the valid steps
                centred = advantages - mean(advantages)
                advantages = centred / (((centred ** 2 * mask).sum() / (n - 1).clamp(min=1.0)).sqrt() + 1e-8)
            ratio = torch.exp(logp - batch.behaviour_logp)
            policy = -mean(torch.min(ratio * advantages, ratio.clamp(1 - self.clip, 1 + self.clip) * advantages))
        value = 0.5 * mean((targets.vs - values) ** 2)
        entropy = mean(-(logp_all.exp() * logp_all).sum(-1))
        return policy + self.vf_coef * value - self.ent_coef * entropy


def stack(segments: list[Segment], version: int) -> Segment:
    """Segments side by side: their envs become one batch of B = ΣB_i columns (time stays first)."""
    fields = {name: torch.cat([getattr(s, name) for s in segments], dim=1 if name != "bootstrap_obs" else 0)
              for name in (*Segment.FLOAT_FIELDS, "actions")}
    return Segment(**fields, version=version)
