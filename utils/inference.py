"""Inference on RGB images of any size: resize to the checkpoint's training size, normalise, predict (optionally
averaging flipped and turned views), and resize the probabilities back to each image's own size. Shared by
scripts/evaluate.py, scripts/predict.py and notebooks/explore_predictions.ipynb; the same path runs a PyTorch model
(`Predictor`), an ONNX model from scripts/export.py under ONNX Runtime (`OnnxPredictor`), or the mean of several
models' probabilities (`EnsemblePredictor`, e.g. the folds of a cross-validation)."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from common.device import autocast, autocast_dtype, configure_fast_path, resolve_device, seconds_per_call
from common.errors import UserError
from common.optional import import_optional
from model.checkpoint import (
    Member,
    describe_bad_preprocessing,
    load_checkpoint,
    load_members,
    model_from_checkpoint,
    require_fields,
)
from utils.metrics import THRESHOLD

# Test-time augmentation views, each (quarter turns, mirrored first) of an [N, C, H, W] batch: 3 views are the image
# and its horizontal and vertical flips (a vertical flip is a mirror turned by half a turn); 8 are all the flips and
# 90-degree rotations of a square (the dihedral group).
TTA_VIEWS = {
    3: ((0, False), (0, True), (2, True)),
    8: tuple((turns, mirrored) for turns in range(4) for mirrored in (False, True)),
}
DEFAULT_TTA_VIEWS = 8  # every flip and quarter turn: as scripts/evaluate.py, predict.py and the notebook use
EXPORT_INSTALL = "pip install -r requirements-export.txt"  # installs onnx, onnxscript and onnxruntime


def normalise(image: np.ndarray, preprocessing: dict) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> float32 [3, H, W], (x / 255 - mean) / std as in training, at the image's own size."""
    scaled = image.astype(np.float32) / 255
    normalised = (scaled - np.float32(preprocessing["mean"])) / np.float32(preprocessing["std"])
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))


def prepare_image(image: np.ndarray, preprocessing: dict) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> float32 [3, S, S] at the training size S, normalised as in training.

    Resized with area interpolation like the training data (dataset/images.py), then `normalise`d.
    """
    size = preprocessing["image_size"]
    return normalise(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA), preprocessing)


def resize_probabilities(probabilities: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A [1, S, S] probability map -> [height, width] by bilinear interpolation (before any thresholding)."""
    resized = F.interpolate(probabilities[None].float(), size=(height, width), mode="bilinear", align_corners=False)
    return resized[0, 0]


def view(batch: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    """`batch` mirrored left-right (when `mirrored`), then turned by `turns` quarter turns."""
    mirrored_batch = batch.flip(3) if mirrored else batch
    return torch.rot90(mirrored_batch, turns, dims=(2, 3)) if turns else mirrored_batch


def unview(batch: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    """The inverse of `view`: turned back, then mirrored back."""
    turned = torch.rot90(batch, -turns, dims=(2, 3)) if turns else batch
    return turned.flip(3) if mirrored else turned


class ImagePredictor:
    """The pre- and post-processing shared by the PyTorch and the ONNX Runtime predictors: RGB images of any size
    in, probability maps and masks of that size out. Subclasses set `preprocessing`, `tta`, `tta_views`, `threshold`,
    `device` and `memory_format`, and implement `logits`."""

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """The model's logits [N, 1, H, W] of a prepared batch."""
        raise NotImplementedError

    def check_settings(self) -> None:
        """Resolve the threshold and refuse a number of TTA views that TTA_VIEWS does not have."""
        if self.tta_views not in TTA_VIEWS:
            raise UserError(f"TTA_VIEWS is {self.tta_views!r}; it must be one of {sorted(TTA_VIEWS)}.")
        self.resolve_threshold()

    def resolve_threshold(self) -> None:
        """Take the threshold from the preprocessing when none was given (THRESHOLD for checkpoints that chose
        none), and refuse one that is not a probability strictly between 0 and 1."""
        if self.threshold is None:
            self.threshold = self.preprocessing.get("threshold", THRESHOLD)
        threshold = self.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold < 1:
            raise UserError(f"the threshold is {threshold!r}; it must be a probability strictly between 0 and 1.")
        self.threshold = float(threshold)

    def prepare(self, images: list[np.ndarray]) -> torch.Tensor:
        """A normalised batch [N, 3, S, S] on the predictor's device."""
        batch = torch.from_numpy(np.stack([prepare_image(image, self.preprocessing) for image in images]))
        return batch.to(self.device, memory_format=self.memory_format)

    @torch.inference_mode()
    def predict_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities [N, 1, H, W] (float32) of a prepared batch; with TTA, the mean over the `tta_views`
        views of TTA_VIEWS, each turned back before averaging."""
        views = TTA_VIEWS[self.tta_views] if self.tta else TTA_VIEWS[3][:1]
        total = torch.zeros((), device=batch.device)
        for turns, mirrored in views:
            probabilities = torch.sigmoid(self.logits(view(batch, turns, mirrored)).float())
            total = total + unview(probabilities, turns, mirrored)
        return total / len(views)

    def probabilities(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """Probability maps [H, W] on the CPU, each at its image's own size."""
        batch_probabilities = self.predict_batch(self.prepare(images)).cpu()
        return [
            resize_probabilities(probabilities, *image.shape[:2])
            for probabilities, image in zip(batch_probabilities, images, strict=True)
        ]

    def masks(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Boolean masks [H, W] (probability > the predictor's threshold), each at its image's own size."""
        return [(probabilities > self.threshold).numpy() for probabilities in self.probabilities(images)]

    def speed(self, images: list[np.ndarray]) -> dict:
        """measure_speed on a batch of `images`: the model alone (TTA included when on)."""
        return measure_speed(self, self.prepare(images))


@dataclass
class Predictor(ImagePredictor):
    """A PyTorch segmentation model with its preprocessing: RGB images of any size in, probability maps of that
    size out. `threshold` defaults to the preprocessing's own (THRESHOLD when it has none)."""

    model: torch.nn.Module
    preprocessing: dict
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None
    tta: bool = False
    threshold: float | None = None
    tta_views: int = DEFAULT_TTA_VIEWS

    def __post_init__(self):
        self.check_settings()
        self.memory_format = configure_fast_path(self.device)
        self.model = self.model.to(self.device, memory_format=self.memory_format).eval()

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint,
        device="auto",
        mixed_precision: bool = True,
        tta: bool = False,
        tta_views: int = DEFAULT_TTA_VIEWS,
        name="",
    ):
        """Build from a checkpoint dict or path; `device` is auto | cpu | cuda | cuda:N, bf16/fp16 autocast on CUDA.
        The threshold is the checkpoint's `preprocessing["threshold"]` (THRESHOLD when it has none); `name` names a
        checkpoint dict in messages."""
        source = (name or "the checkpoint") if isinstance(checkpoint, dict) else checkpoint
        checkpoint = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        require_fields(checkpoint, source, ("preprocessing",))  # its other fields were checked by load_checkpoint
        device = resolve_device(device) if isinstance(device, str) else device
        amp_dtype = autocast_dtype(device) if mixed_precision else None
        model = model_from_checkpoint(checkpoint, source)
        return cls(model, checkpoint["preprocessing"], device, amp_dtype, tta, tta_views=tta_views)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """The model's logits, under autocast when the predictor has a mixed-precision type."""
        with autocast(self.device, self.amp_dtype):
            return self.model(batch)


@dataclass
class OnnxPredictor(ImagePredictor):
    """An ONNX model written by scripts/export.py, run by ONNX Runtime on the CPU, with Predictor's pre- and
    post-processing; `from_file` takes the preprocessing and threshold from the model's metadata."""

    session: object  # an onnxruntime.InferenceSession (onnxruntime is optional: imported by from_file)
    preprocessing: dict
    tta: bool = False
    threshold: float | None = None
    tta_views: int = DEFAULT_TTA_VIEWS
    device: torch.device = field(default=torch.device("cpu"), init=False)
    memory_format: torch.memory_format = field(default=torch.contiguous_format, init=False)

    def __post_init__(self):
        self.check_settings()
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.fixed_batch = fixed_batch_size(model_input.shape, self.preprocessing["image_size"])

    @classmethod
    def from_file(cls, path, tta: bool = False, threads: int = 0, tta_views: int = DEFAULT_TTA_VIEWS):
        """Open an exported model on ONNX Runtime's CPU provider (`threads` 0: its default, one per core)."""
        onnxruntime = import_export_package("onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise UserError(f"ONNX model {path} not found; write one with `python scripts/export.py`.")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for unreadable models
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UserError(f"{path} is not an ONNX model that ONNX Runtime can run ({reason}).") from None
        preprocessing = onnx_metadata(session, path).get("preprocessing")
        problem = describe_bad_preprocessing(preprocessing)
        if problem:
            raise UserError(f"{path} has unusable preprocessing metadata ({problem}); re-export it.")
        return cls(session, preprocessing, tta, tta_views=tta_views)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """The ONNX model's logits of a prepared (CPU, float32) batch; a model with a fixed batch axis (exported
        elsewhere for batches of B) is run B images at a time, the last chunk padded with copies of its last image."""
        size = self.fixed_batch or len(batch)
        chunks = []
        for start in range(0, len(batch), size):
            chunk = batch[start : start + size]
            padded = torch.cat([chunk, chunk[-1:].expand(size - len(chunk), *chunk.shape[1:])])
            (logits,) = self.session.run(None, {self.input_name: np.ascontiguousarray(padded.numpy())})
            chunks.append(torch.from_numpy(logits)[: len(chunk)])
        return torch.cat(chunks)


def fixed_batch_size(shape: list, image_size: int) -> int | None:
    """The batch size an ONNX model's input `shape` fixes (None when its batch axis is dynamic), refusing an input
    that is not [N, 3, H, W] or whose fixed height or width is not the model's image_size."""
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        raise UserError(f"the ONNX model's input has shape {shape}; predict.py feeds [N, 3, H, W] RGB batches.")
    fixed_sides = [side for side in shape[2:] if isinstance(side, int) and side != image_size]
    if fixed_sides:
        raise UserError(
            f"the ONNX model's input has the fixed shape {shape}, but its images are resized to {image_size} px;"
            " re-export it with scripts/export.py (dynamic height and width)."
        )
    return shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None


@dataclass
class EnsemblePredictor(ImagePredictor):
    """Several predictors as one: each member predicts an image with its own preprocessing and TTA, its probabilities
    are resized to the image's own size (so members trained at different sizes combine), and their mean is
    thresholded once, at the members' common threshold (THRESHOLD when theirs differ). It predicts images
    (`probabilities`, `masks`), not prepared batches, as each member prepares its own."""

    members: list[ImagePredictor]
    names: list[str]
    threshold: float | None = None

    def __post_init__(self):
        self.device, self.tta, self.tta_views = self.members[0].device, self.members[0].tta, self.members[0].tta_views
        thresholds = {member.threshold for member in self.members}
        self.common_threshold = len(thresholds) == 1  # else THRESHOLD, as no member's threshold is the ensemble's
        if self.threshold is None:
            self.threshold = thresholds.pop() if self.common_threshold else THRESHOLD
        self.check_settings()

    def probabilities(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """The mean of the members' probability maps [H, W], each at its image's own size."""
        per_member = [member.probabilities(images) for member in self.members]
        return [torch.stack(maps).mean(0) for maps in zip(*per_member, strict=True)]

    def speed(self, images: list[np.ndarray]) -> dict:
        """The members' models alone, one after another (their measure_speed times added up), and each one's."""
        each = [member.speed(images) for member in self.members]
        ms_per_image = sum(speed["ms_per_image"] for speed in each)
        return {"images_per_second": 1000 / ms_per_image, "ms_per_image": ms_per_image, "members": each}


def load_predictor(
    names: list[str], device="auto", mixed_precision: bool = True, tta: bool = False, tta_views=DEFAULT_TTA_VIEWS
):
    """The predictor of the checkpoint files and sweep folders of folds named (see model.checkpoint.load_members):
    `load_predictor(["a.pth", "b.pth"], tta=True)` is the ensemble of two, `load_predictor(["a.pth"])` one model."""
    return predictor_of(load_members(names), device, mixed_precision, tta, tta_views)


def predictor_of(
    members: list[Member], device="auto", mixed_precision: bool = True, tta: bool = False, tta_views=DEFAULT_TTA_VIEWS
):
    """A Predictor of one checkpoint, or the EnsemblePredictor of several (each member built by
    Predictor.from_checkpoint)."""
    device = resolve_device(device) if isinstance(device, str) else device
    predictors = [
        Predictor.from_checkpoint(member.checkpoint, device, mixed_precision, tta, tta_views, name=str(member.path))
        for member in members
    ]
    if len(predictors) == 1:
        return predictors[0]
    return EnsemblePredictor(predictors, [str(member.path) for member in members])


def onnx_metadata(session, path) -> dict:
    """The JSON values of an exported model's metadata_props, refusing a model that scripts/export.py did not write."""
    metadata = session.get_modelmeta().custom_metadata_map
    try:
        return {key: json.loads(metadata[key]) for key in ("preprocessing", "builder")}
    except (KeyError, json.JSONDecodeError):
        raise UserError(
            f"{path} has no preprocessing and builder metadata; export it with scripts/export.py."
        ) from None


def import_export_package(name: str):
    """Import one of the optional packages of requirements-export.txt, or refuse saying in one line how to get it."""
    return import_optional(name, f"ONNX export and inference need `{EXPORT_INSTALL}`")


def predictor_from_settings(members: list[Member], settings: dict, onnx_model: str = "") -> ImagePredictor:
    """The Predictor of scripts/evaluate.py and scripts/predict.py, from their shared settings DEVICE,
    MIXED_PRECISION, TTA and TTA_VIEWS, after checking their BATCH_SIZE; `members` are the checkpoints of
    model.checkpoint.load_members, several making an EnsemblePredictor. With `onnx_model` (a path), an OnnxPredictor
    of that file instead, which runs on the CPU on THREADS threads."""
    if settings["BATCH_SIZE"] < 0:
        raise UserError("BATCH_SIZE must be at least 1, or 0 to pick it for the device.")
    if onnx_model:
        if settings["DEVICE"] not in ("auto", "cpu"):
            raise UserError(f"an ONNX model runs on the CPU with ONNX Runtime; drop --device {settings['DEVICE']}.")
        return OnnxPredictor.from_file(
            onnx_model, settings["TTA"], threads=settings["THREADS"], tta_views=settings["TTA_VIEWS"]
        )
    return predictor_of(
        members, settings["DEVICE"], settings["MIXED_PRECISION"], settings["TTA"], settings["TTA_VIEWS"]
    )


GPU_BATCH_SIZE, CPU_BATCH_SIZE = 64, 8  # images per forward pass when BATCH_SIZE is 0


def inference_batch_size(requested: int, device: torch.device) -> int:
    """`requested`, or for 0 a batch that keeps the device busy: 64 on a GPU (a U-Net at 256 px uses a few GB),
    8 on the CPU (where memory, not parallelism, is the limit)."""
    return requested or (GPU_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE)


def measure_speed(predictor: ImagePredictor, batch: torch.Tensor, warmup: int = 2, min_seconds: float = 1.0) -> dict:
    """Throughput of the model alone on a prepared batch (TTA included when on): no file reading, resizing or
    scoring. Runs `warmup` untimed batches, then times at least 3 batches and `min_seconds`, CUDA synchronised."""
    seconds_per_batch = seconds_per_call(
        lambda: predictor.predict_batch(batch), predictor.device, warmup, min_seconds=min_seconds
    )
    seconds_per_image = seconds_per_batch / len(batch)
    return {"images_per_second": 1 / seconds_per_image, "ms_per_image": 1000 * seconds_per_image}
