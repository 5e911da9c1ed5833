"""Training: one loop for every model and task, run folders, checkpoints."""
