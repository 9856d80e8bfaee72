"""Lever: multi-scale training (PraNet, Polyp-PVT). Each batch at 0.75, 1 or 1.25 x IMAGE_SIZE, rounded to a
multiple of 32; validation stays at IMAGE_SIZE."""

MULTI_SCALE = True
