"""Lever: still more optimisation steps (300 epochs, about 240 s of an H100 at 1,000 images/s)."""

EPOCHS = 300
WARMUP_EPOCHS = 9
