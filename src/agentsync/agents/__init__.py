"""RL agent parts: a perceiver encodes observations, an actor turns them into actions, a learner
turns experience into a loss, and rollouts collect that experience on Gymnasium vector envs.

Tasks compose them; nothing here calls ``torch.distributed`` — the chosen strategy syncs the
learner's parameters like any other model's.
"""
