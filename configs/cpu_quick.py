"""The quick run for a laptop CPU: the default recipe, small (64 x 64 images, base width 16) and short (5 epochs),
to see the whole pipeline work in about a minute rather than days; it writes into its own run folder, so that a
stopped full run in outputs/ never blocks it:

    python scripts/train.py configs/cpu_quick.py

One thread, no DataLoader worker, 64 px and base width 16 were chosen by measurement (docs/training.md, "The quick
CPU recipe", which gives the times and scores).
"""

DEVICE = "cpu"
IMAGE_SIZE = 64
BASE_CHANNELS = 16
EPOCHS = 5
WARMUP_EPOCHS = 1
THREADS = 1
NUM_WORKERS = 0
OUTPUT_DIR = "outputs/cpu_quick"
