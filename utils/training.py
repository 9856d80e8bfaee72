"""The training step shared by scripts/train.py and scripts/benchmark.py, and its optimizer."""

import torch

from utils.device import autocast


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
