"""The quick run for a laptop CPU: the default recipe, small (64 x 64 images, base width 16) and short (5 epochs),
to see the whole pipeline work in about a minute rather than days; it writes into its own run folder, so that a
stopped full run in outputs/ never blocks it. On this repository's 2-core Intel Xeon, idle (2026-12-02, commit
5d72082), it took 69.7 s from a fresh clone with only data/kvasir-seg.zip present (extraction and caching
included) and reached validation Dice 0.5893; beside two other busy processes on the two cores, 94.7 s:

    python scripts/train.py configs/cpu_quick.py

Chosen by measurement there (docs/training.md, "The quick CPU recipe"): one PyTorch thread (two took 39.0 s idle
but 418.5 s beside one busy process, as the two threads wait for each other), no DataLoader worker (one: 67.3 s,
the image cache leaves little to load), 64 px (96 px: 140.4 s for Dice 0.5819) and base width 16 (8: 34.2 s for
Dice 0.5548).
"""

DEVICE = "cpu"
IMAGE_SIZE = 64
BASE_CHANNELS = 16
EPOCHS = 5
WARMUP_EPOCHS = 1
THREADS = 1
NUM_WORKERS = 0
OUTPUT_DIR = "outputs/cpu_quick"
