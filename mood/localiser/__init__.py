"""The self-supervised localiser: a U-Net trained on synthetic anomalies (DESIGN.md section 2b)."""
from .unet import UNet

__all__ = ["UNet"]
