"""Several processes training one model with DistributedDataParallel, as `torchrun --nproc_per_node N` starts them.

Without torchrun (no WORLD_SIZE in the environment) everything here is a no-op for one process, so scripts use the
same code either way.
"""

import contextlib
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from common.errors import UserError


@dataclass(frozen=True)
class Processes:
    """This process's place among the run's processes: its rank, how many there are, and its rank on this machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes on this machine, who share its CPU cores

    @property
    def is_main(self) -> bool:
        """Rank 0 validates and writes every file; the others only train."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start_processes(device: torch.device) -> Processes:
    """Join the process group torchrun set up (NCCL on CUDA, where the process takes GPU LOCAL_RANK; gloo on the
    CPU), or stand alone. Processes other than rank 0 print nothing, so the output reads like one process's."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes()
    processes = Processes(
        int(os.environ["RANK"]),
        world_size,
        int(os.environ.get("LOCAL_RANK", "0")),
        int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))),
    )
    if device.type == "cuda":
        if processes.local_rank >= torch.cuda.device_count():
            raise UserError(
                f"torchrun started {world_size} processes on this machine but only {torch.cuda.device_count()}"
                " GPU(s) are visible; lower --nproc_per_node."
            )
        torch.cuda.set_device(processes.local_rank)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if not processes.is_main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  closed when the process ends
    return processes


def process_device(device: torch.device, processes: Processes) -> torch.device:
    """The device of this process: its own GPU under torchrun, else `device` itself."""
    return torch.device("cuda", processes.local_rank) if device.type == "cuda" and processes.distributed else device


def data_parallel(module: torch.nn.Module, processes: Processes, device: torch.device) -> torch.nn.Module:
    """Under torchrun the module in DistributedDataParallel (gradients averaged over the processes after every
    backward pass, so all keep the same weights), else the module itself."""
    if not processes.distributed:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


@contextlib.contextmanager
def main_process_first(processes: Processes):
    """Run the block in the main process first, then in the others (downloading, extracting and caching the data
    once, then reading what it left)."""
    if not processes.is_main:
        barrier(processes)
    yield
    if processes.is_main:
        barrier(processes)


def barrier(processes: Processes) -> None:
    """Wait until every process gets here."""
    if processes.distributed:
        dist.barrier()


def mean_over_processes(tensor: torch.Tensor, processes: Processes) -> torch.Tensor:
    """The element-wise mean of `tensor` over all processes (gloo has no average, so a sum divided)."""
    if not processes.distributed:
        return tensor
    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / processes.world_size


def max_over_processes(value: int, processes: Processes, device: torch.device) -> int:
    """The largest of the processes' `value`s (e.g. the number of a signal one of them received, 0 for none): how
    all processes agree to stop at the same step, for the same reason."""
    if not processes.distributed:
        return value
    tensor = torch.tensor([value], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def agreed_stop(stop, processes: Processes, device: torch.device, step: int | None, every: int) -> bool:
    """Whether to stop after global step `step` (None: at an epoch's end) for a Ctrl-C/SIGTERM in `stop` (a
    common.signals.StopRequest): at once for one process; under torchrun at an epoch's end and every `every` steps,
    where all processes ask together, so that all stop after the same step, each then holding the signal one of
    them received."""
    if not processes.distributed:
        return stop.requested
    if step is not None and step % every:
        return False
    agreed = max_over_processes(stop.number, processes, device)  # a signal arriving later waits for the next
    stop.adopt(agreed)
    return agreed != 0


PEER_FAILURES = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Broken pipe",
    "NCCL",
)  # in gloo's and NCCL's errors


@contextlib.contextmanager
def peer_failure_reported(processes: Processes):
    """Turn the error a collective raises when another process of the run died (kill -9, out of memory) into one
    line, so that every survivor stops with a message instead of a traceback (or waiting for ever)."""
    try:
        yield
    except RuntimeError as error:  # torch.distributed.DistError and gloo's errors are RuntimeErrors
        if not processes.distributed or not (
            isinstance(error, dist.DistError) or any(sign in str(error) for sign in PEER_FAILURES)
        ):
            raise
        raise UserError(
            f"another of the {processes.world_size} training processes stopped without a word (killed, or out of"
            f" memory; torchrun names it), so process {processes.rank} stops too. Continue with --resume from the"
            " last state saved (start again if none was)."
        ) from None


def stop_processes(processes: Processes) -> None:
    """Wait for every process, then leave the process group together (no-op for one process): a process that
    tears its group down while another still uses it aborts."""
    if processes.distributed:
        with contextlib.suppress(Exception):  # already torn down by a failed peer: nothing left to leave
            dist.barrier()
            dist.destroy_process_group()
