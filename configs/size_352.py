"""Lever: resolution. Train at 352 x 352, the size of the polyp literature (PraNet, Polyp-PVT); 1.9x the work
per image of 256 px. Scores stay at each mask's own size."""

IMAGE_SIZE = 352
