"""The two networks of LSR: a slice VQ-VAE and a PixelSNAIL prior over its codes."""
from .pixelsnail import PixelSNAIL, code_nll
from .vqvae import VQVAE, Quantised, vq_losses

__all__ = ["VQVAE", "Quantised", "vq_losses", "PixelSNAIL", "code_nll"]
