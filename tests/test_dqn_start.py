"""DQN's warm-up: the first update comes once ``learning_starts`` transitions are stored, and only then."""
from __future__ import annotations

import pytest
import torch

from agentsync.tasks.dqn import CartPoleDQN, DQNConfig


def task(**options) -> CartPoleDQN:
    return CartPoleDQN(DQNConfig(**options), worker_rank=0, num_workers=1, seed=0)


@pytest.mark.parametrize("options", [{}, {"n_step": 1}, {"envs_per_worker": 8, "learning_starts": 300}],
                         ids=["defaults", "one-step", "8-envs"])
def test_random_collection_stops_at_learning_starts(options):
    dqn = task(**options)
    c, model = dqn.config, dqn.build_model()
    torch.manual_seed(0)
    per_update = c.train_freq * c.envs_per_worker  # at most this many transitions per update after warm-up
    dqn.loss(model, 0)
    first = dqn.buffer.size
    # Enough for the first update, and at most two vector steps' worth more (the last random round and the
    # first ε-greedy step; one vector step completes up to n transitions per env when episodes end).
    assert c.learning_starts <= first <= c.learning_starts + 2 * c.envs_per_worker * c.n_step, first
    steps_before = dqn.collector.env_steps
    for step in range(1, 6):
        size, env_steps = dqn.buffer.size, dqn.collector.env_steps
        dqn.loss(model, step)
        assert dqn.collector.env_steps - env_steps <= per_update  # no second random top-up
        assert dqn.buffer.size - size <= per_update * c.n_step
    assert dqn.collector.env_steps - steps_before <= 5 * per_update
    assert dqn.updates == 6


def test_the_first_update_never_samples_an_under_filled_buffer():
    dqn = task(learning_starts=0, n_step=3)  # n-step transitions appear only after n vector steps
    model = dqn.build_model()
    loss, samples = dqn.loss(model, 0)
    assert dqn.buffer.size >= 1 and torch.isfinite(loss) and samples == dqn.config.batch_size
