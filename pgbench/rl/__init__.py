"""Pure tensor math every estimator shares: KL and reward shaping, loss aggregation,
policy-loss forms, rollout correction."""
