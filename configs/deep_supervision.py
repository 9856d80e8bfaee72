"""Lever: deep supervision. The two decoder levels above the last get a 1x1 head each whose upsampled logits
add 0.4 x their mean loss; the heads are dropped at inference (the checkpoint stays a plain U-Net)."""

DEEP_SUPERVISION = 0.4
