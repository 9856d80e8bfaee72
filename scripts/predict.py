"""Segment new images with a trained U-Net: a binary mask and an overlay per image, at the image's own size.

    python scripts/predict.py polyp.jpg                      # writes outputs/predictions/polyp_{mask,overlay}.png
    python scripts/predict.py folder/ more.png --output results --no-tta   # one forward pass per image

INPUT is an image file or a folder of them (PNG, JPEG, TIFF, BMP; grey, RGB or RGBA; any size).
Every UPPER_CASE constant below can be edited here or given as a flag (BATCH_SIZE -> --batch-size).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # find dataset/, model/, utils/ from anywhere

from tqdm import tqdm

from common.config import parse_settings, script_constants
from common.device import describe_device
from common.errors import UserError, run_main
from dataset.images import read_rgb, write_png
from dataset.kvasir import list_images
from utils import inference  # as a module: its THRESHOLD is not a setting of this script
from utils.visualization import overlay_mask

CHECKPOINT = "models/unet_kvasirseg.pth"  # the model to predict with
OUTPUT = "outputs/predictions"  # NAME_mask.png (0 or 255) and NAME_overlay.png for each input NAME.ext
BATCH_SIZE = 8  # images per forward pass
TTA = True  # average the probabilities of the image and its horizontal and vertical flips, as evaluate.py
DEVICE = "auto"  # auto | cpu | cuda | cuda:N
MIXED_PRECISION = True  # bf16 autocast on CUDA (fp16 on GPUs without bf16); ignored on the CPU


def collect_inputs(inputs: list[str]) -> list[Path]:
    """The image files named, and those directly inside the folders named; refuses missing paths, empty folders
    and two inputs that would write the same output names."""
    paths = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = list(list_images(path).values())
            if not found:
                raise UserError(f"{path} holds no images (PNG, JPEG, TIFF or BMP).")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise UserError(f"{path} is neither an image file nor a folder.")
    by_stem = {}
    for path in paths:
        if path.stem in by_stem and by_stem[path.stem] != path:
            raise UserError(f"{by_stem[path.stem]} and {path} would both write {path.stem}_mask.png; rename one.")
        by_stem[path.stem] = path
    return list(by_stem.values())


def main() -> None:
    inputs_flag = (("inputs",), dict(nargs="+", metavar="INPUT", help="image files and/or folders of images"))
    config = parse_settings(script_constants(globals()), __file__, extra_flags=[inputs_flag]).values
    paths = collect_inputs(config["inputs"])
    predictor = inference.predictor_from_settings(config["CHECKPOINT"], config)
    output_dir = Path(config["OUTPUT"])
    print(f"predicting {len(paths)} image(s) on {describe_device(predictor.device)} into {output_dir}")
    with tqdm(total=len(paths), desc="predicting", unit="img", disable=len(paths) == 1) as bar:
        for start in range(0, len(paths), config["BATCH_SIZE"]):
            chunk = paths[start : start + config["BATCH_SIZE"]]
            images = [read_rgb(path) for path in chunk]
            for path, image, mask in zip(chunk, images, predictor.masks(images), strict=True):
                write_png(output_dir / f"{path.stem}_mask.png", mask.astype("uint8") * 255)
                write_png(output_dir / f"{path.stem}_overlay.png", overlay_mask(image, mask))
            bar.update(len(chunk))
    print(f"wrote {len(paths)} mask(s) and overlay(s) to {output_dir}")


if __name__ == "__main__":
    run_main(main)
