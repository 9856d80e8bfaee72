"""The recipe of the original project description: Adam at a constant learning rate of 1e-5, batch size 8,
100 epochs at 256 x 256, flips only. Kept so the first baseline can always be reproduced:

    python scripts/train.py configs/seed.py
"""

OPTIMIZER = "adam"
LEARNING_RATE = 1e-5
WEIGHT_DECAY = 0.0
SCHEDULE = "constant"
WARMUP_EPOCHS = 0
BATCH_SIZE = 8
EPOCHS = 100
IMAGE_SIZE = 256
BASE_CHANNELS = 64
AUGMENTATION = "flips"
