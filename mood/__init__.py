"""mood-vqvae: Latent Spatial Restoration for the MOOD challenge."""
