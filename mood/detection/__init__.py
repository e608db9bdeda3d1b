"""Where both methods join: ``weights`` loads every network a region's weights folder holds (card +
safetensors shards of the VQ-VAE, the PixelSNAIL prior and the localiser), and ``detector`` scores a
volume by method (:data:`mood.config.METHODS`) into calibrated scores.
"""
