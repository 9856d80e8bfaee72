"""The quick run for a laptop CPU: the default recipe, small (128 x 128 images, base width 16) and short
(5 epochs), to see the whole pipeline work in minutes rather than hours:

    python scripts/train.py configs/cpu_quick.py
"""

DEVICE = "cpu"
IMAGE_SIZE = 128
BASE_CHANNELS = 16
EPOCHS = 5
WARMUP_EPOCHS = 1
