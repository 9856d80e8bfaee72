"""The training step shared by scripts/train.py and scripts/benchmark.py, and the settings that make it fast."""

import torch

from utils.device import autocast


def configure_fast_path(device: torch.device) -> torch.memory_format:
    """On CUDA, let cuDNN time and pick the fastest convolution algorithms for the (fixed) input size and
    return channels_last (tensor-core convolutions then need no layout transposes); elsewhere the default."""
    if device.type != "cuda":
        return torch.contiguous_format
    torch.backends.cudnn.benchmark = True
    return torch.channels_last


def make_optimizer(parameters, name: str, learning_rate: float, weight_decay: float, device: torch.device):
    """Adam or AdamW; on CUDA the fused version, one kernel per step instead of several per parameter."""
    optimizer_class = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return optimizer_class(parameters, lr=learning_rate, weight_decay=weight_decay, fused=device.type == "cuda")


def training_step(model, images, masks, loss_fn, optimizer, scaler, amp_dtype) -> torch.Tensor:
    """One forward, backward and optimizer step; returns the detached loss without waiting for the GPU."""
    with autocast(images.device, amp_dtype):
        logits = model(images)
    loss = loss_fn(logits, masks)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()
