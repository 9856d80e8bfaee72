"""The quick run for a laptop CPU: the default recipe, small (64 x 64 images, base width 16) and short (5 epochs),
to see the whole pipeline work in minutes rather than days; it writes into its own run folder, so that a stopped
full run in outputs/ never blocks it. On the 2-core Intel Xeon shared with other jobs (load 18-21, 2026-12-01) it
took 724.6 s from a fresh copy with the zip present and reached validation Dice 0.6121 (README "On a laptop CPU"):

    python scripts/train.py configs/cpu_quick.py

Chosen by measurement there: one PyTorch thread (two ran 17.6 s per 128 px step against 1.34 s, loads 15 and 4),
no DataLoader worker (1.32 against 1.34 s: none needed with the cache), and 64 px (full-size validation Dice
0.6125 after 5 epochs, against 0.5770 at 96 px, which has 2.25 times the pixels to compute).
"""

DEVICE = "cpu"
IMAGE_SIZE = 64
BASE_CHANNELS = 16
EPOCHS = 5
WARMUP_EPOCHS = 1
THREADS = 1
NUM_WORKERS = 0
OUTPUT_DIR = "outputs/cpu_quick"
