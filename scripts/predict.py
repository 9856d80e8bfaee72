"""Segment new images with a trained U-Net: a binary mask and an overlay per image, at the image's own size.

    python scripts/predict.py polyp.jpg                      # writes outputs/predictions/polyp_{mask,overlay}.png
    python scripts/predict.py folder/ more.png --output results --no-tta   # one forward pass per image
    python scripts/predict.py polyp.jpg --onnx models/unet_kvasirseg.onnx   # the model of scripts/export.py
    python scripts/predict.py polyp.jpg --checkpoint a.pth b.pth    # an ensemble: the mean of their probabilities

INPUT is an image file or a folder of them (PNG, JPEG, TIFF, BMP; grey, RGB or RGBA; any size). A pixel is polyp
when its probability exceeds the threshold the model was saved with (0.5 for checkpoints that chose none); with
several checkpoints (or a sweep's folder of folds, RECIPE-seedS-foldsN/), when the mean of their probabilities exceeds
their common threshold (0.5 when theirs differ).
A run never replaces an input, never writes into a folder given as INPUT (its masks would mix with the images and
be read as images by the next run), and replaces the NAME_mask.png / NAME_overlay.png already in OUTPUT only
with --overwrite.
Every UPPER_CASE constant below can be edited here or given as a flag (BATCH_SIZE -> --batch-size).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # find dataset/, model/, utils/ from anywhere


from common.config import parse_settings, script_constants
from common.device import describe_device, inference_threads, use_threads
from common.errors import UserError, first_few, run_main
from common.files import writable_folder
from common.progress import progress_bar
from dataset.images import read_rgb, write_png
from dataset.kvasir import IMAGE_SUFFIXES
from model.checkpoint import load_members
from utils import inference
from utils.visualization import overlay_mask

CHECKPOINT = [
    "models/unet_kvasirseg.pth"
]  # the model to predict with; several, or a sweep's folder of folds: their ensemble
ONNX = ""  # predict with this ONNX model of scripts/export.py instead (on the CPU with ONNX Runtime)
OUTPUT = "outputs/predictions"  # NAME_mask.png (0 or 255) and NAME_overlay.png for each input NAME.ext
BATCH_SIZE = 0  # images per forward pass; 0: 64 on a GPU, 8 on the CPU
TTA = True  # average the probabilities of the image and its flips and quarter turns (TTA_VIEWS), as evaluate.py
TTA_VIEWS = 8  # with TTA: 8 (every flip and quarter turn; chosen on validation) or 3 (the image and its 2 flips)
DEVICE = "auto"  # auto | cpu | cuda | cuda:N
THREADS = 0  # CPU threads of PyTorch (and of ONNX Runtime with ONNX); 0: one on a CPU (fastest on busy shared CPUs)
MIXED_PRECISION = True  # bf16 autocast on CUDA (fp16 on GPUs without bf16); ignored on the CPU
OVERWRITE = False  # replace the NAME_mask.png and NAME_overlay.png already in OUTPUT (an input is never replaced)

OUTPUT_KINDS = ("mask", "overlay")  # each input NAME.ext gives OUTPUT/NAME_mask.png and OUTPUT/NAME_overlay.png


def collect_inputs(inputs: list[str]) -> list[Path]:
    """The image files named, and those directly inside the folders named; refuses missing paths, empty folders
    and two inputs that would write the same output names (also x.jpg and x.png in one folder)."""
    paths = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = folder_images(path)
            if not found:
                raise UserError(f"{path} holds no images (PNG, JPEG, TIFF or BMP).")
            paths += found
        elif path.is_file():
            paths.append(path)
        elif not path.exists():
            raise UserError(f"{path} does not exist; give an image file or a folder of images.")
        else:
            raise UserError(f"{path} is neither an image file nor a folder.")
    by_stem = {}
    for path in paths:
        if path.stem in by_stem and by_stem[path.stem] != path:
            raise UserError(f"{by_stem[path.stem]} and {path} would both write {path.stem}_mask.png; rename one.")
        by_stem[path.stem] = path
    return list(by_stem.values())


def folder_images(folder: Path) -> list[Path]:
    """Every image file (by suffix) directly inside `folder`, two with one stem included, so that collect_inputs
    refuses them by name rather than predicting one of them."""
    return sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


def output_paths(path: Path, output_dir: Path) -> dict[str, Path]:
    """The files written for the input `path`, by kind (OUTPUT_KINDS)."""
    return {kind: output_dir / f"{path.stem}_{kind}.png" for kind in OUTPUT_KINDS}


def check_outputs(inputs: list[str], paths: list[Path], output_dir: Path, overwrite: bool) -> None:
    """Refuse, before any prediction, an OUTPUT that is an input folder, a file or cannot be written, an output file
    that is an input or a folder, and (without `overwrite`) output files that already exist, so a run never destroys
    a file it did not write."""
    for name in inputs:
        if Path(name).is_dir() and Path(name).resolve() == output_dir.resolve():
            raise UserError(
                f"--output {output_dir} is the input folder {name}: the masks would mix with the images and be read"
                " as images by the next run; give another --output."
            )
    writable_folder(output_dir, "--output")
    input_files = {path.resolve() for path in paths}
    targets = [target for path in paths for target in output_paths(path, output_dir).values()]
    folders = [target for target in targets if target.is_dir()]
    if folders:
        raise UserError(f"{folders[0]} is a folder, where this run would write a picture; give another --output.")
    for target in targets:
        if target.resolve() in input_files:
            raise UserError(f"{target} is an input of this run; predicting would overwrite it. Give another --output.")
    existing = [target for target in targets if target.exists()]
    if existing and not overwrite:
        names = [target.name for target in existing]
        raise UserError(
            f"{output_dir} already holds {first_few(names, 1)}; give --overwrite to replace them, or another --output."
        )
    foreign = [target for target in existing if not is_png(target)]
    if foreign:
        raise UserError(
            f"{foreign[0]} is not a PNG picture, so not an earlier prediction; --overwrite replaces only those. Move"
            " it away, or give another --output."
        )


def is_png(path: Path) -> bool:
    """Whether `path` starts with the PNG signature, as every mask and overlay this script writes does."""
    with open(path, "rb") as file:
        return file.read(8) == b"\x89PNG\r\n\x1a\n"


def main() -> None:
    inputs_flag = (("inputs",), dict(nargs="+", metavar="INPUT", help="image files and/or folders of images"))
    settings = parse_settings(script_constants(globals()), __file__, extra_flags=[inputs_flag])
    config = settings.values
    config["THREADS"] = inference_threads(config["THREADS"], config["DEVICE"])
    use_threads(config["THREADS"])
    if {"CHECKPOINT", "ONNX"} <= settings.given:
        raise UserError("give --checkpoint or --onnx, not both.")
    paths = collect_inputs(config["inputs"])
    output_dir = Path(config["OUTPUT"])
    check_outputs(config["inputs"], paths, output_dir, config["OVERWRITE"])
    members = [] if config["ONNX"] else load_members(config["CHECKPOINT"])
    predictor = inference.predictor_from_settings(members, config, onnx_model=config["ONNX"])
    batch_size = inference.inference_batch_size(config["BATCH_SIZE"], predictor.device)
    runtime = f"ONNX Runtime on the CPU ({config['ONNX']})" if config["ONNX"] else describe_device(predictor.device)
    if len(members) > 1:
        print(f"the ensemble of {', '.join(str(member.path) for member in members)}, threshold {predictor.threshold}")
    print(f"predicting {len(paths)} image(s) on {runtime} into {output_dir}")
    with progress_bar(description="predicting", total=len(paths), unit="img", disable=len(paths) == 1) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            images = [read_rgb(path) for path in chunk]
            for path, image, mask in zip(chunk, images, predictor.masks(images), strict=True):
                outputs = output_paths(path, output_dir)
                write_png(outputs["mask"], mask.astype("uint8") * 255)
                write_png(outputs["overlay"], overlay_mask(image, mask))
            bar.update(len(chunk))
    print(f"wrote {len(paths)} mask(s) and overlay(s) to {output_dir}")


if __name__ == "__main__":
    run_main(main)
