"""U-Net (Ronneberger et al., 2015) built from small named parts, with BatchNorm and padding-safe skips, and the
deep-supervision wrapper that trains its coarser decoder levels too."""

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BatchNorm -> ReLU) twice; padding keeps the spatial size."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """Encoder step: 2x2 max-pool halves the size, then a double conv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Up(nn.Module):
    """Decoder step: 2x2 transposed conv doubles the size, concatenate the skip, then a double conv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels // 2 + out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.upsample(x)
        # Odd sizes lose a row or column to pooling; pad back so the skip and upsampled maps align.
        dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Conv2d):
    """1x1 conv from feature channels to one logit map per class."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=1)


class UNet(nn.Module):
    """Encoder-decoder with skip connections; `forward` returns logits [N, out_channels, H, W].

    Channel widths are base_channels * 2**level for levels 0..depth; any input size of at least
    `smallest_input` pixels per side works.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base_channels: int = 64, depth: int = 4):
        super().__init__()
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.decoder_widths = widths[-2::-1]  # the channels of each decoder_maps level, coarsest first
        # every level keeps at least 2x2 pixels (BatchNorm needs more than one value per channel at the bottleneck)
        self.smallest_input = 2 ** (depth + 1)
        self.size_multiple = 1  # any side: odd sizes are padded back in each Up
        self.inc = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i]) for i in reversed(range(depth)))
        self.outc = OutConv(widths[0], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outc(self.decoder_maps(x)[-1])

    def decoder_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Down the contracting path to the bottleneck, then up the expanding path with the skips; the feature maps
        of each decoder level, coarsest first (the last one, at the input's size, is what `outc` reads)."""
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()  # the bottleneck
        maps = []
        for up in self.ups:
            x = up(x, skips.pop())
            maps.append(x)
        return maps


class DeepSupervision(nn.Module):
    """Training-time wrapper: the U-Net's logits plus auxiliary logits from its coarser decoder levels (a 1x1 conv
    each, upsampled to the input's size), so that every level is pushed towards the mask. Only the U-Net is kept
    for inference: evaluate, predict and the notebook never see the auxiliary heads."""

    def __init__(self, network: nn.Module, levels: int = 2):
        super().__init__()
        if not hasattr(network, "decoder_maps"):
            raise UserError(
                f"DEEP_SUPERVISION needs a network that shows its decoder levels (MODEL unet); {type(network).__name__}"
                " does not. Set --deep-supervision 0."
            )
        self.network = network
        widths = network.decoder_widths[-1 - levels : -1]  # up to `levels` levels above the last
        self.heads = nn.ModuleList(OutConv(width, network.outc.out_channels) for width in widths)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        maps = self.network.decoder_maps(x)
        size = x.shape[2:]
        auxiliary = [
            F.interpolate(head(level), size=size, mode="bilinear", align_corners=False)
            for head, level in zip(self.heads, maps[-1 - len(self.heads) : -1], strict=True)
        ]
        return self.network.outc(maps[-1]), auxiliary


def build_unet(base_channels: int = 64, depth: int = 4) -> UNet:
    """The U-Net of MODEL "unet": BASE_CHANNELS wide at its first level, DEPTH down-sampling steps."""
    if base_channels < 1 or depth < 1:
        raise UserError("BASE_CHANNELS and DEPTH must be at least 1.")
    return UNet(base_channels=base_channels, depth=depth)
