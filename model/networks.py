"""The networks a run can train: one table {MODEL name: builder}, and the one way a network is made from it.

A builder's keyword arguments are scripts/train.py settings of the same name in upper case (`base_channels` is
BASE_CHANNELS), so a new network is a builder, a line here and its settings. The model a builder returns tells the
rest of the repository what it needs: `smallest_input` and `size_multiple` (the image sides it takes), and its
parameters. A checkpoint stores the builder's name and keyword arguments; loading is NETWORKS[name](**kwargs).
"""

import torch

from common.config import keyword_settings
from common.errors import UserError
from model.smp import SMP_NETWORKS
from model.unet import build_unet

NETWORKS = {"unet": build_unet, **SMP_NETWORKS}
MAX_PARAMETERS = 2_000_000_000  # 64x the default U-Net (31 M): its weights and AdamW state alone need 32 GB
# Keyword arguments that only choose a network's starting weights: a checkpoint's own weights replace them, so it
# stores none of them (loading it never downloads, nor reads a file that may be gone).
STARTING_WEIGHTS = ("encoder_weights",)


def network_kwargs(name: str, config: dict) -> dict:
    """The keyword arguments of MODEL `name`'s builder, each the setting of its name in upper case."""
    return keyword_settings(NETWORKS[name], config)


def build_network(name: str, kwargs: dict, image_size: int | None = None) -> torch.nn.Module:
    """NETWORKS[name](**kwargs), checked first (check_network). The model keeps `builder`, what its checkpoints
    store."""
    check_network(name, kwargs, image_size)
    network = NETWORKS[name](**kwargs)
    network.builder = {"name": name, "kwargs": {k: v for k, v in kwargs.items() if k not in STARTING_WEIGHTS}}
    return network


def check_network(name: str, kwargs: dict, image_size: int | None = None) -> None:
    """Refuse in one line, before any memory is allocated, a network that is unknown, too large to train, or that
    cannot take `image_size`."""
    if name not in NETWORKS:
        raise UserError(f"MODEL {name!r} is not one of {', '.join(NETWORKS)}.")
    described = f"MODEL {name} ({', '.join(f'{key} {value}' for key, value in kwargs.items())})"
    # shapes only: counts the parameters without memory, never fetches weights, and leaves the random state as it is
    with torch.device("meta"), torch.random.fork_rng(devices=[]):
        shape = NETWORKS[name](**{key: value for key, value in kwargs.items() if key not in STARTING_WEIGHTS})
    parameters = sum(p.numel() for p in shape.parameters())
    if parameters > MAX_PARAMETERS:
        raise UserError(
            f"{described} has {parameters / 1e6:,.0f} M parameters, more than the {MAX_PARAMETERS / 1e6:,.0f} M this"
            f" repository trains; lower {', '.join(key.upper() for key in kwargs)}."
        )
    if image_size is not None and (image_size < shape.smallest_input or image_size % shape.size_multiple):
        multiple = f", a multiple of {shape.size_multiple}" if shape.size_multiple > 1 else ""
        raise UserError(f"IMAGE_SIZE must be at least {shape.smallest_input}{multiple} for {described}.")
