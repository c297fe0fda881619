"""Learning: the actor-critic network, PPO over a rollout source, checkpoints and the training run."""
