"""mood-vqvae: Latent Spatial Restoration for the MOOD challenge.

Data flows one way, files -> volume -> slices -> codes -> scores -> files, and so do the
subpackages, each importing only those listed above it (and :mod:`mood.config`):

==================  ==========================================================================
``config``          the shared vocabulary: model and region configurations (imports nothing)
``volumes``         reading and converting volumes: files -> a validated volume, and back
``method``          the method: slices, networks, restoration, scores, weights, the detector
``running``         running at scale: a folder -> predictions, shards, workers, run reports
``training``        training the models and calibrating their scores
``validation``      toy sets, synthetic anomalies, the challenge's metric, pictures, the demo
``cli``             the command line (``mood ...``, ``python -m mood``)
==================  ==========================================================================
"""
