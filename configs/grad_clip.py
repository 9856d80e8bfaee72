"""Lever: gradient clipping. The global gradient norm is clipped to 1, against the occasional large step of a
from-scratch network at a learning rate of 1e-3."""

GRAD_CLIP = 1.0
