"""The defaults of scripts/train.py, unchanged: the baseline every other recipe of configs/ is ranked against.

python scripts/sweep.py configs/default.py configs/epochs_200.py --seeds 42 43
"""
