"""Lever: an exponential moving average of the weights (half-life about 350 steps, 7 epochs), validated and saved
instead of the raw weights. At CPU scale (30-60 short epochs) it lagged; full scale has 4,900 steps."""

EMA_DECAY = 0.998
