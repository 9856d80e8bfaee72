"""The seeded batch sampler of a whole run, which makes augmentation reproducible and lets a run resume at any
step."""

import numpy as np
from torch.utils.data import Sampler


def epoch_order(size: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The shuffled sample indices of an epoch and one augmentation seed per position, fixed by (seed, epoch)."""
    generator = np.random.default_rng([seed, epoch])
    return generator.permutation(size), generator.integers(0, 2**31 - 1, size=size)


class RunBatchSampler(Sampler):
    """The batches of a whole run, epoch after epoch, as lists of (index, augmentation seed) pairs.

    One stream for all epochs lets DataLoader workers prepare the next epoch's first batches while the last ones
    of the current epoch train, instead of stalling at every epoch boundary. Epoch e's order depends only on
    (seed, e), and every epoch has `size // batch_size` full batches, so a run can start at any (epoch, step).
    With `world_size` > 1 each process takes its `rank`'s contiguous slice of every batch (the batch stays the
    same whatever the number of processes).
    """

    def __init__(self, size, batch_size, seed, first_epoch, first_step, last_epoch, rank=0, world_size=1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.first_epoch, self.first_step, self.last_epoch = first_epoch, first_step, last_epoch
        self.slice = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)

    @property
    def steps_per_epoch(self) -> int:
        return self.size // self.batch_size

    def __iter__(self):
        for epoch in range(self.first_epoch, self.last_epoch + 1):
            order, seeds = epoch_order(self.size, self.seed, epoch)
            first = self.first_step if epoch == self.first_epoch else 0
            for step in range(first, self.steps_per_epoch):
                positions = range(step * self.batch_size, (step + 1) * self.batch_size)[self.slice]
                yield [(int(order[position]), int(seeds[position])) for position in positions]

    def __len__(self) -> int:
        epochs = self.last_epoch - self.first_epoch + 1
        return max(0, epochs * self.steps_per_epoch - self.first_step)
