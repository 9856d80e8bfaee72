"""Lever: weight decay 0.05 on the convolution weights only (BatchNorm and bias parameters undecayed, the common
practice). The default 1e-4 shrinks the weights by a factor of only 0.9998 over a whole run: in effect no decay."""

WEIGHT_DECAY = 0.05
DECAY_NORMS_AND_BIASES = False
