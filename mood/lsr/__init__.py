"""Latent spatial restoration (LSR), the reference method: slices -> VQ-VAE codes -> restorations
drawn from a PixelSNAIL prior -> raw scores.

``networks``: the slice VQ-VAE and the PixelSNAIL prior over its codes (and the row-by-row prior);
``restoration``: restorations of unlikely codes; ``scoring``: LSR's raw scores (code NLL above a
threshold, restoration distance, smoothing).
"""
