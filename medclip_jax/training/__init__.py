"""Training: the set-up a config becomes (`setup`), the state, the update step, the optimizer,
checkpoints, progress logs, precise BatchNorm, and the loop (`trainer`)."""
