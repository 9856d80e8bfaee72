"""What scripts/train.py's step uses besides the network and the loss: the optimizer, loss scaler, learning-rate
schedule, compilation and multi-scale resizing; and the estimates of how much memory and time a run takes."""

import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from common.device import free_memory, synchronized_clock
from common.errors import UserError
from common.progress import format_duration, format_size

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}  # AdamW decouples weight decay from the step
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")  # torch.compile modes (or off)
MULTI_SCALES = (0.75, 1.0, 1.25)  # PraNet's multi-scale training: each batch at one of these times IMAGE_SIZE


def make_optimizer(
    module: torch.nn.Module,
    name: str,
    learning_rate: float,
    weight_decay: float,
    device: torch.device,
    decay_norms_and_biases: bool = True,
):
    """OPTIMIZERS[name] over `module`'s parameters; on CUDA the fused version, one kernel per step instead of several
    per parameter. Without `decay_norms_and_biases`, weight decay applies to the convolution weights only: the
    BatchNorm scales and shifts and the biases (every parameter of one dimension) form a group without decay."""
    optimizer_class = OPTIMIZERS[name]
    parameters = list(module.parameters())
    groups = [{"params": parameters}]
    if not decay_norms_and_biases:
        groups = [
            {"params": [parameter for parameter in parameters if parameter.ndim > 1]},
            {"params": [parameter for parameter in parameters if parameter.ndim <= 1], "weight_decay": 0.0},
        ]
    return optimizer_class(groups, lr=learning_rate, weight_decay=weight_decay, fused=device.type == "cuda")


def make_scaler(device: torch.device, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """The loss scaler: it scales the loss for float16 autocast, whose small range loses tiny gradients; for bfloat16
    and full precision it is switched off and passes every call through."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


def compile_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """`model` compiled with torch.compile in `mode` (sharing its weights), or `model` itself when mode is off."""
    return model if mode == "off" else torch.compile(model, mode=None if mode == "default" else mode)


def least_step_bytes(batch_size: int, image_size: int, parameters: int) -> int:
    """A lower bound of the memory of one training step, far below the real need: the float32 input and mask, and
    the network's float32 weights, gradients and AdamW's two moments."""
    return batch_size * image_size**2 * 4 * (3 + 1) + 4 * 4 * parameters


def check_step_memory(network: torch.nn.Module, config: dict, device: torch.device, processes: int) -> None:
    """Refuse, before any data is read or cached, an IMAGE_SIZE and BATCH_SIZE (shared among `processes`) whose
    training step of `network` could not fit in the device's free memory even by a lower bound of its need
    (least_step_bytes)."""
    need = least_step_bytes(config["BATCH_SIZE"] // processes, config["IMAGE_SIZE"], parameter_count(network))
    free = free_memory(device)
    if free is not None and need > free[0]:
        raise UserError(
            f"IMAGE_SIZE {config['IMAGE_SIZE']} with BATCH_SIZE {config['BATCH_SIZE']} needs more than"
            f" {format_size(need)} for one training step, and {free[1]} is {format_size(free[0])}; lower"
            " --image-size or --batch-size, or raise that limit."
        )


def parameter_count(network: torch.nn.Module) -> int:
    """How many numbers the network learns."""
    return sum(parameter.numel() for parameter in network.parameters())


def multi_scale_sizes(image_size: int, multiple: int) -> tuple[int, ...]:
    """The sides of multi-scale training: image_size itself, and the other MULTI_SCALES x image_size at the nearest
    multiple of `multiple` (a side every level of the network halves exactly), each at least one multiple away from
    image_size, so the scales never collapse into one (64 px, multiple 16: 48, 64, 80)."""
    sizes = []
    for scale in MULTI_SCALES:
        nearest = math.floor(image_size * scale / multiple + 0.5) * multiple
        if scale < 1:
            nearest = max(multiple, min(nearest, image_size - multiple))
        elif scale > 1:
            nearest = max(nearest, image_size + multiple)
        sizes.append(image_size if scale == 1 else nearest)
    return tuple(sizes)


def multi_scale_size(image_size: int, seed: int, step: int, multiple: int) -> int:
    """The side of step `step`'s batch in multi-scale training: a seeded choice among multi_scale_sizes. It depends
    only on (seed, step), so resuming is exact."""
    return int(np.random.default_rng([seed, step]).choice(multi_scale_sizes(image_size, multiple)))


def resize_batch(images: torch.Tensor, masks: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch resized to size x size: images bilinearly, masks bilinearly then binarised again at 0.5."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images, masks
    resized = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    resized_masks = F.interpolate(masks, size=(size, size), mode="bilinear", align_corners=False) > 0.5
    return resized, resized_masks.to(masks.dtype)  # interpolate keeps the images' memory format


def cosine(progress: float) -> float:
    """Cosine decay from 1 at the warm-up's end to 0 at the run's end (`progress` 0 to 1)."""
    return 0.5 * (1 + math.cos(math.pi * progress))


def constant(progress: float) -> float:
    """The peak learning rate throughout."""
    return 1.0


# Each SCHEDULE: the learning rate after warm-up, as a fraction of LEARNING_RATE, of the share of those steps done.
SCHEDULES = {"constant": constant, "cosine": cosine}


def learning_rate_stride(steps_per_epoch: int, points: int = 20) -> int:
    """Every how many steps a run records its learning rate for its curves: about `points` times per epoch, so a
    warm-up of one epoch shows. The rate is a Python float the loop sets, so recording it never waits for the GPU."""
    return max(1, steps_per_epoch // points)


class TimeEstimate:
    """Prints how long the rest of the run will take at its recent pace: first after `first_seconds` of steps (or
    after the first epoch's last step, when that comes sooner), then each time the run has trained twice as long as
    at the previous estimate, at the pace since then, so that it follows a machine whose load changes.

    The first step is left out (it pays for start-up: worker processes, cuDNN autotuning, compilation). The device
    is synchronised only for a reading, so the time is that of the work, not its launch. `steps_left` counts to the
    run's last step, so an epoch ends wherever it is a multiple of `steps_per_epoch`; a pace measured across an
    epoch's end includes its validation and saving.
    """

    def __init__(
        self, device: torch.device, steps_per_epoch: int, first_seconds: float = 30.0, clock=time.perf_counter
    ):
        self.device, self.steps_per_epoch, self.clock = (
            device,
            steps_per_epoch,
            clock,
        )  # clock: a test's, unsynchronised
        self.first_seconds, self.readings, self.steps_done = first_seconds, 0, 0
        self.started = self.window_start = 0.0
        self.window_steps, self.window_has_epoch_end = 0, False

    def step_done(self, steps_left: int, write=print) -> str | None:
        """Count one step; when a reading is due, write (and return) the estimate for the `steps_left` steps."""
        self.steps_done += 1
        ends_epoch = steps_left % self.steps_per_epoch == 0
        if self.steps_done == 1:
            self.started = self.window_start = self._now(synchronized=True)
            self.window_steps, self.window_has_epoch_end = 1, ends_epoch
            return None
        due = self.first_seconds * 2**self.readings
        if not steps_left or (self._now() - self.started < due and not (ends_epoch and not self.readings)):
            self.window_has_epoch_end |= ends_epoch
            return None
        now = self._now(synchronized=True)
        per_step = (now - self.window_start) / (self.steps_done - self.window_steps)
        validation = "validation included" if self.window_has_epoch_end else "validation comes on top"
        message = (
            f"estimated time left: {format_duration(per_step * steps_left)} for the {steps_left} steps left"
            f" ({per_step:.2f} s each over the last {format_duration(now - self.window_start)}; {validation})"
        )
        self.readings += 1
        self.window_start, self.window_steps, self.window_has_epoch_end = now, self.steps_done, ends_epoch
        write(message)
        return message

    def _now(self, synchronized: bool = False) -> float:
        """The clock: after waiting for the device when `synchronized` (only for a reading), else as it runs."""
        if self.clock:
            return self.clock()
        return synchronized_clock(self.device) if synchronized else time.perf_counter()


GPU_SIZED = 256**2 * 31_000_000  # image side squared times parameters of the default U-Net (256 px, 31 M)


def gpu_sized_on_a_cpu(device: torch.device, image_size: int, network: torch.nn.Module) -> bool:
    """True for a GPU-sized run (the default U-Net at the default image size, or larger) on a CPU: days of training."""
    return device.type == "cpu" and image_size**2 * parameter_count(network) >= GPU_SIZED


def probed_seconds(module: torch.nn.Module, image_size: int, batch_size: int, steps: int) -> float:
    """The training time of `steps` steps on this CPU from one forward and backward pass of two random images through
    a copy of `module` (the real weights, statistics and random state stay untouched)."""
    probe = copy.deepcopy(module).train()
    images = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    outputs = probe(images)
    started = time.perf_counter()
    outputs = probe(images)
    (outputs[0] if isinstance(outputs, tuple) else outputs).mean().backward()
    return (time.perf_counter() - started) / 2 * batch_size * steps
