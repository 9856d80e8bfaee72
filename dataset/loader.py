"""DataLoader settings for training: how many worker processes, and the options that keep a GPU fed."""

import os

import torch

from common.signals import worker_init

PREFETCH_BATCHES = 4  # per worker; twice the PyTorch default, to ride out slow samples


def worker_count(requested: int, processes_on_machine: int = 1, at_least: int = 0) -> int:
    """DataLoader workers per process: `requested`, or for -1 the machine's CPU cores but one, shared among the
    `processes_on_machine` that each start their own (torchrun's processes, or a sweep's parallel runs), at least
    `at_least` and at most 8."""
    share = ((os.cpu_count() or 1) - 1) // processes_on_machine
    return requested if requested >= 0 else min(8, max(share, at_least))


def loader_options(workers: int, device: torch.device) -> dict:
    """DataLoader settings that keep a GPU fed: pinned memory (so copies to the GPU are asynchronous), and
    PREFETCH_BATCHES batches per worker ready in advance."""
    options = dict(num_workers=workers, pin_memory=device.type == "cuda", worker_init_fn=worker_init)
    if workers > 0:
        options.update(prefetch_factor=PREFETCH_BATCHES)
    return options
