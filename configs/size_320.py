"""Lever: resolution. Train at 320 x 320 (1.56x the pixels of 256); scores stay at each mask's own size."""

IMAGE_SIZE = 320
