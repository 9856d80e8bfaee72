"""The PyTorch dataset over (image, mask) pairs, resized (and cached) once, augmented per sample from a seed."""

import random

import numpy as np
import torch
from torch.utils.data import Dataset

from dataset.cache import cache_folder, open_cache
from dataset.images import load_pair


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
