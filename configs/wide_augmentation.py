"""Lever: stronger augmentation. DUCK-Net's ranges (rotation +-180 deg, scale 0.5-1.5, shift 12.5%, shear
+-22.5 deg, colour jitter, flips), with which a from-scratch U-Net reached 0.866 Dice on Kvasir-SEG."""

AUGMENTATION = "wide"
