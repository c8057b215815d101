"""One run: the trainer loop, its parts, rollout, the update, checkpoints, run directories,
tracking."""
