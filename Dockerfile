# mood-vqvae: the MICCAI MOOD challenge submission image.
#
#   docker build -t mood-vqvae .
#   docker run --gpus all -v "$PWD/in:/input" -v "$PWD/out:/output" mood-vqvae sample|pixel [FLAGS]
#   docker run --gpus all --read-only --network none -v DATA:/mnt/data -v PRED:/mnt/pred \
#       mood-vqvae sh /workspace/run_{sample,pixel}_{brain,abdom}.sh /mnt/data /mnt/pred
#
# Build arguments:
#   BASE_IMAGE   any Debian-like image with python3 (3.10+) and its venv module; CI uses a local
#                stand-in (scripts/build_standin_base.sh) as registries are out of its reach.
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_TRUSTED_HOST
#                pip's own settings, for the build only; unset, pip takes everything from PyPI,
#                where torch==2.13.0 is the CUDA build.  CI points PIP_FIND_LINKS at a local
#                CPU build of torch for a small image (see docs/container.md).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST

LABEL org.opencontainers.image.title="mood-vqvae" \
      org.opencontainers.image.description="Latent Spatial Restoration (VQ-VAE + PixelSNAIL) for the MICCAI MOOD challenge" \
      org.opencontainers.image.licenses="Apache-2.0"

SHELL ["/bin/sh", "-eu", "-c"]

ENV VIRTUAL_ENV=/opt/mood/venv \
    PATH=/opt/mood/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies first (exactly requirements.txt), so that code changes reuse this layer.
COPY requirements.txt /opt/mood/requirements.txt
RUN python3 -m venv "$VIRTUAL_ENV" \
 && pip install --no-cache-dir -r /opt/mood/requirements.txt

# The package itself.  Then byte-compile everything at build time (the base image's standard
# library too: the official python images ship without .pyc), so that Python never needs to write
# bytecode at run time.  (torch/testing/_internal holds a file of Python 3.12 syntax; it is never
# imported here and compileall would fail on it.)
COPY pyproject.toml README* /tmp/mood-src/
COPY mood/ /tmp/mood-src/mood/
RUN pip install --no-cache-dir --no-deps /tmp/mood-src \
 && rm -rf /tmp/mood-src \
 && python -m compileall -q -j 0 -x '/torch/testing/_internal/' "$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')" "$VIRTUAL_ENV" >/dev/null \
 && mood --help >/dev/null

# Weights baked into the image: weights/<region>/card.json plus safetensors shards, if the
# repository has them (docker/WEIGHTS.txt keeps this step valid when it has none).
COPY docker/WEIGHTS.txt weight[s] /opt/mood/weights/

# Entry scripts: the entrypoint, the wrapper that runs scoring as the output folder's owner inside
# a scratch folder, and the challenge's four scripts; and the mount points (made here so that the
# engine need not add them to the container).  No USER: the container starts as root (or as
# `docker run --user U:G`) and mood-run drops to the owner of the output folder before anything
# is read or scored (docs/container.md).
COPY docker/entrypoint.sh /opt/mood/bin/entrypoint
COPY docker/mood-run.sh /opt/mood/bin/mood-run
COPY docker/workspace/ /workspace/
RUN chmod 0755 /opt/mood/bin/entrypoint /opt/mood/bin/mood-run /workspace/*.sh \
 && mkdir -p /input /output /mnt/data /mnt/pred /weights

# Run time: no bytecode writes, unbuffered logs, no CUDA JIT cache; mood-run points every
# temporary and cache folder into the output folder for `sample`/`pixel` runs.
ENV MOOD_WEIGHTS=/opt/mood/weights \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CUDA_CACHE_DISABLE=1 \
    MPLBACKEND=Agg

WORKDIR /workspace
ENTRYPOINT ["/opt/mood/bin/entrypoint"]
CMD ["--help"]
