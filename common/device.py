"""Pick the compute device and the mixed-precision type that suits it."""

import os

import torch

from common.errors import UserError


def resolve_device(name: str) -> torch.device:
    """Turn 'auto', 'cpu', 'cuda' or 'cuda:N' into a device, refusing a GPU that is not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"DEVICE={name!r} is not a device name; use auto, cpu or cuda.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"DEVICE={name!r} but no CUDA GPU is visible; use --device cpu or --device auto.")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"DEVICE={name!r} is not supported; use auto, cpu or cuda.")
    return device


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 on GPUs that support it, float16 on older GPUs, None (full precision) on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context that is a no-op when `dtype` is None."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def describe_device(device: torch.device) -> str:
    """The device with its GPU name, or the CPU's core count and PyTorch's thread count, for reports of timings."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def configure_fast_path(device: torch.device) -> torch.memory_format:
    """On CUDA, let cuDNN time and pick the fastest convolution algorithms for the (fixed) input size and
    return channels_last (tensor-core convolutions then need no layout transposes); elsewhere the default."""
    if device.type != "cuda":
        return torch.contiguous_format
    torch.backends.cudnn.benchmark = True
    return torch.channels_last


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that timings measure the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
