"""The quick run for a laptop CPU: the default recipe, small (64 x 64 images, base width 16) and short (5 epochs),
to see the whole pipeline work in about a minute rather than days; it writes into its own run folder, so that a
stopped full run in outputs/ never blocks it. On this repository's 2-core Intel Xeon, idle (2026-12-02, commit
6019b4a), it took 64.5 s from a fresh clone with only data/kvasir-seg.zip present (extraction and caching
included) and reached validation Dice 0.6048; with two other busy processes on the two cores, 129.1 s:

    python scripts/train.py configs/cpu_quick.py

Chosen by measurement there (docs/training.md, "The quick CPU recipe"): one PyTorch thread (two took 418.5 s
idle: the two threads wait for each other), no DataLoader worker (one: 66.1 s, the image cache leaves little to
load), 64 px (96 px: 133.0 s for Dice 0.5662) and base width 16 (8: 33.1 s for Dice 0.5803).
"""

DEVICE = "cpu"
IMAGE_SIZE = 64
BASE_CHANNELS = 16
EPOCHS = 5
WARMUP_EPOCHS = 1
THREADS = 1
NUM_WORKERS = 0
OUTPUT_DIR = "outputs/cpu_quick"
