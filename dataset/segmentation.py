"""The PyTorch dataset over (image, mask) pairs and the seeded batch sampler that makes augmentation reproducible
and lets a run resume at any step."""

import os
import random
import signal

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from dataset.cache import cache_folder, open_cache
from dataset.images import load_pair

PREFETCH_BATCHES = 4  # per worker; twice the PyTorch default, to ride out slow samples


class PolypDataset(Dataset):
    """Pairs resized to `image_size` and passed through an albumentations `transform`.

    Items are (image float32 [3, H, W] normalised, mask float32 [1, H, W] in {0, 1}). With `cache_dir`,
    every file is decoded and resized once into a memory-mapped cache; without it, on every access.
    An item key may be an index or an (index, seed) pair from RunBatchSampler: the seed fixes the
    augmentation of that sample, so results do not depend on worker count or scheduling.
    """

    def __init__(self, pairs, image_size: int, transform, cache_dir=None):
        self.pairs = list(pairs)
        self.image_size = image_size
        self.transform = transform
        self.cache_folder = cache_folder(self.pairs, image_size, cache_dir) if cache_dir is not None else None
        self.arrays = None  # the memory maps, opened on first use in each process

    def __getstate__(self) -> dict:
        """Pickle (for spawned DataLoader workers) without the arrays: a pickled memory map is a full copy."""
        return {**self.__dict__, "arrays": None}

    def __len__(self) -> int:
        return len(self.pairs)

    def resized_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The resized uint8 image [H, W, 3] and {0,1} mask [H, W] before augmentation."""
        if self.cache_folder is not None:
            if self.arrays is None:
                self.arrays = open_cache(self.cache_folder)
            return self.arrays[0][index], self.arrays[1][index]
        _, image_path, mask_path = self.pairs[index]
        return load_pair(image_path, mask_path, self.image_size)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, mask = self.resized_pair(index)
        if seed is not None:
            # One pair of generators shared by every transform, drawn from in turn: Compose.set_random_seed would
            # start each transform's own generator from the same seed, so all of them would fire together.
            self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        sample = self.transform(image=np.asarray(image), mask=np.asarray(mask))
        image = torch.from_numpy(np.ascontiguousarray(sample["image"].transpose(2, 0, 1), dtype=np.float32))
        mask = torch.from_numpy(np.array(sample["mask"], dtype=np.float32)[None])
        return image, mask


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


def worker_init(_worker_id: int) -> None:
    """Workers leave Ctrl-C and a first SIGTERM to the main process, which saves and then shuts them down in order.

    A terminal's Ctrl-C, and SLURM's or systemd's SIGTERM, reach every process of the run at once; a worker that
    died of it would end the run with a DataLoader traceback instead of a save. A second SIGTERM (how a worker is
    terminated when it does not stop by itself) ends the worker.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _ignore_first_sigterm)


def _ignore_first_sigterm(number, _frame) -> None:
    signal.signal(number, signal.SIG_DFL)


def worker_count(requested: int, processes_on_machine: int = 1) -> int:
    """DataLoader workers: `requested`, or for -1 a share of the CPU cores (the machine's cores divided among its
    training processes, one core each kept for the process itself), at most 8."""
    cores = (os.cpu_count() or 1) // processes_on_machine
    return requested if requested >= 0 else min(8, max(cores - 1, 0))


def loader_options(workers: int, device: torch.device) -> dict:
    """DataLoader settings that keep a GPU fed: pinned memory (so copies to the GPU are asynchronous), and
    PREFETCH_BATCHES batches per worker ready in advance."""
    options = dict(num_workers=workers, pin_memory=device.type == "cuda", worker_init_fn=worker_init)
    if workers > 0:
        options.update(prefetch_factor=PREFETCH_BATCHES)
    return options
