"""Pick the compute device, its CPU threads and the mixed-precision type that suits it, and time work on it."""

import os
import resource
import statistics
import time
from pathlib import Path

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


def use_threads(threads: int) -> None:
    """Run PyTorch's CPU work on `threads` threads; 0 keeps PyTorch's default (one per core). One thread is often
    far faster on a CPU that other processes keep busy."""
    if threads < 0:
        raise UserError("THREADS must be >= 0 (0 keeps PyTorch's default).")
    if threads:
        torch.set_num_threads(threads)


def inference_threads(threads: int, device_name: str) -> int:
    """The CPU threads evaluate.py, predict.py and the notebook run on: THREADS when given; else, on a CPU, one,
    said so (as for the quick training recipe: one thread is never far from the fastest, and several are many times
    slower beside other busy processes); on a GPU, PyTorch's default (0)."""
    if threads or device_name not in ("auto", "cpu") or (device_name == "auto" and torch.cuda.is_available()):
        return threads
    print("note: on the CPU with 1 thread (fastest on a busy machine); --threads N for more on an idle one")
    return 1


def synchronized_clock(device: torch.device) -> float:
    """time.perf_counter() once the device has finished its queued work, so that timings measure the work."""
    synchronize(device)
    return time.perf_counter()


def seconds_per_call(call, device: torch.device, warmup: int, calls: int = 3, min_seconds: float = 0.0) -> float:
    """Wall-clock seconds per `call()`: after `warmup` untimed calls, over at least `calls` calls and `min_seconds`,
    device synchronised."""
    for _ in range(warmup):
        call()
    repeats, start = 0, synchronized_clock(device)
    while repeats < calls or time.perf_counter() - start < min_seconds:
        call()
        repeats += 1
    return (synchronized_clock(device) - start) / repeats


def interleaved_seconds(
    calls: dict, device: torch.device, rounds: int, calls_per_round: int, untimed: dict | None = None
) -> dict[str, list[float]]:
    """Seconds per call of each of `calls` {name: call}, in `rounds` rounds that each time every call in turn
    (A, B, A, B, ...), so that a change of the machine's load falls on all of them alike: {name: [one per round]}.
    `untimed` {name: N}: N untimed calls before each of that call's rounds (batches a DataLoader's workers
    prefetched while the others ran)."""
    seconds = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            warmup = (untimed or {}).get(name, 0)
            seconds[name].append(seconds_per_call(call, device, warmup, calls=calls_per_round))
    return seconds


def spread(values: list[float]) -> dict:
    """The median and the range of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratio_spread(numerators: list[float], denominators: list[float]) -> dict:
    """The median and range of the rounds' own ratios (each round's two timings taken one right after the other,
    as interleaved_seconds takes them), so that load drift between rounds cancels in each ratio."""
    return spread([top / bottom for top, bottom in zip(numerators, denominators, strict=True)])


def free_memory(device: torch.device) -> tuple[int, str] | None:
    """The memory a run can still take on `device`, and what bounds it: the GPU's free memory; on the CPU the least
    of the machine's available memory, this process's address-space limit (`ulimit -v`) and its container's memory
    limit (cgroup v2), since PyTorch dies at whichever comes first. None where none can be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], f"{device}'s free memory"
    bounds = [
        (_meminfo_kib("/proc/meminfo", "MemAvailable"), "the machine's available memory"),
        (_address_space_left(), "the address space left under this process's limit (ulimit -v)"),
        (_cgroup_memory_left(), "the memory left under this container's limit (cgroup memory.max)"),
    ]
    known = [(size, what) for size, what in bounds if size is not None]
    return min(known) if known else None


def _meminfo_kib(path: str, field: str) -> int | None:
    """A `field: N kB` line of /proc/meminfo or /proc/self/status, in bytes; None where it cannot be read."""
    try:
        with open(path) as lines:
            fields = dict(line.split(":", 1) for line in lines if ":" in line)
        return int(fields[field].split()[0]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _address_space_left() -> int | None:
    """RLIMIT_AS (`ulimit -v`) less the address space this process already maps; None without a limit."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    used = _meminfo_kib("/proc/self/status", "VmSize")
    if limit == resource.RLIM_INFINITY or used is None:
        return None
    return max(0, limit - used)


def _cgroup_memory_left() -> int | None:
    """memory.max less memory.current of this process's cgroup (v2); None without a limit or a cgroup v2."""
    try:
        line = next(line for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::"))
        folder = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((folder / "memory.current").read_text()))
    except (OSError, StopIteration, ValueError):
        return None
