"""V-trace against closed forms: on-policy it is the n-step bootstrapped return; off-policy, a
3-step example computed by hand."""
from __future__ import annotations

import math

import torch

from agentsync.agents.vtrace import vtrace

INF = float("inf")


def test_on_policy_without_truncation_gives_n_step_bootstrapped_returns():
    torch.manual_seed(0)
    T, B, gamma = 6, 4, 0.95
    rewards, values, bootstrap = torch.randn(T, B), torch.randn(T, B), torch.randn(B)
    dones = torch.zeros(T, B)
    dones[2, 1] = dones[4, 3] = dones[5, 0] = 1.0
    logp = torch.randn(T, B)
    out = vtrace(logp, logp, rewards, values, bootstrap, dones, gamma=gamma, rho_bar=INF, c_bar=INF)
    for b in range(B):
        for t in range(T):  # Σ_k (Π γ_j) r_k + (Π γ_j) V(x_T), the discount cut to 0 at an episode's end
            expected, discount = 0.0, 1.0
            for k in range(t, T):
                expected += discount * rewards[k, b].item()
                discount *= gamma * (1.0 - dones[k, b].item())
            expected += discount * bootstrap[b].item()
            assert math.isclose(out.vs[t, b].item(), expected, rel_tol=1e-5, abs_tol=1e-5), (t, b)
    next_vs = torch.cat([out.vs[1:], bootstrap[None]])
    torch.testing.assert_close(out.advantages, rewards + gamma * (1 - dones) * next_vs - values)


def test_three_off_policy_steps_match_the_hand_computed_targets():
    """V = 1, 2, 3, V(x_3) = 4, r = 1, 0, 2, γ = 0.9, π/μ = 2, 0.5, 1, ρ̄ = c̄ = 1, so ρ = c = 1, 0.5, 1:
    δ = 1.8, 0.35, 2.6; v_2 = 3 + 2.6 = 5.6; v_1 = 2 + 0.35 + 0.9·0.5·2.6 = 3.52;
    v_0 = 1 + 1.8 + 0.9·1·1.52 = 4.168; A_t = ρ_t (r_t + γ v_{t+1} − V_t) = 3.168, 1.52, 2.6."""
    behaviour = torch.log(torch.tensor([[0.25], [0.5], [0.5]]))
    target = torch.log(torch.tensor([[0.5], [0.25], [0.5]]))
    out = vtrace(behaviour, target, rewards=torch.tensor([[1.0], [0.0], [2.0]]),
                 values=torch.tensor([[1.0], [2.0], [3.0]]), bootstrap_value=torch.tensor([4.0]),
                 dones=torch.zeros(3, 1), gamma=0.9, rho_bar=1.0, c_bar=1.0)
    assert torch.allclose(out.vs[:, 0], torch.tensor([4.168, 3.52, 5.6]), atol=1e-6)
    assert torch.allclose(out.advantages[:, 0], torch.tensor([3.168, 1.52, 2.6]), atol=1e-6)


def test_truncation_caps_the_importance_weights():
    """Without truncation the first ratio (2) doubles δ_0: v_0 = 1 + 2·1.8 + 0.9·2·1.52."""
    behaviour = torch.log(torch.tensor([[0.25], [0.5], [0.5]]))
    target = torch.log(torch.tensor([[0.5], [0.25], [0.5]]))
    out = vtrace(behaviour, target, rewards=torch.tensor([[1.0], [0.0], [2.0]]),
                 values=torch.tensor([[1.0], [2.0], [3.0]]), bootstrap_value=torch.tensor([4.0]),
                 dones=torch.zeros(3, 1), gamma=0.9, rho_bar=INF, c_bar=INF)
    assert math.isclose(out.vs[0, 0].item(), 1 + 2 * 1.8 + 0.9 * 2 * 1.52, rel_tol=1e-6)
