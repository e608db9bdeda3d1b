"""The self-supervised localiser: a U-Net trained on synthetic anomalies (DESIGN.md section 2b).

``unet``: the network; ``scoring``: its probabilities over a volume's slices, their smoothing across
slices and the sample statistic.
"""
from .scoring import probabilities, sample_statistic, smooth_across_slices
from .unet import UNet

__all__ = ["UNet", "probabilities", "sample_statistic", "smooth_across_slices"]
