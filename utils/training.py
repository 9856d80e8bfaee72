"""The training step shared by scripts/train.py and scripts/benchmark.py, its optimizer and learning-rate schedule."""

import math

import torch

from common.device import autocast

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
COMPILE_MODES = (
    "off",
    "default",
    "reduce-overhead",
    "max-autotune",
)  # torch.compile modes; reduce-overhead: CUDA graphs


def make_optimizer(parameters, name: str, learning_rate: float, weight_decay: float, device: torch.device):
    """Adam or AdamW; on CUDA the fused version, one kernel per step instead of several per parameter."""
    optimizer_class = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return optimizer_class(parameters, lr=learning_rate, weight_decay=weight_decay, fused=device.type == "cuda")


def compile_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """`model` compiled with torch.compile in `mode` (sharing its weights), or `model` itself when mode is off."""
    return model if mode == "off" else torch.compile(model, mode=None if mode == "default" else mode)


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


def learning_rate_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the peak learning rate for a step: linear warm-up, then constant or cosine decay to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


def set_learning_rate(optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
    """Use `learning_rate` for the next step: the schedule is a function of the step, so resuming needs no state."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
