"""Lever: a probability threshold chosen on the validation images (0.30-0.70) instead of 0.5, saved in the
checkpoint and used by evaluate.py, predict.py and the notebook; 0.5 stays unless another threshold wins."""

THRESHOLD_SEARCH = True
