"""The quick run for a laptop CPU: the default recipe, small (64 x 64 images, base width 16) and short (5 epochs),
to see the whole pipeline work in about a minute rather than days; it writes into its own run folder,
outputs/cpu_quick/, with its best model (outputs/cpu_quick/best.pth), so that it never blocks nor is blocked by a
full run in outputs/ and models/:

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
NAME = "cpu_quick"
