#!/bin/sh
# mood-run COMMAND [ARGS]: run COMMAND (a `mood sample|pixel ... --output DIR` call) so that
# nothing is written outside its output folder DIR, as `docker run --read-only` requires: every
# temporary or cache folder a library might use (TMPDIR, HOME, XDG caches, matplotlib, torch,
# triton, CUDA) points into a private scratch folder DIR/.mood-scratch.XXXXXX, which is removed
# when COMMAND ends (its exit status is passed on; SIGTERM/SIGINT/SIGHUP are forwarded to it).
# DIR is the value of the last --output (-o) option; /output if there is none.
set -u

out=/output
prev=
for arg in "$@"; do
    case $prev in --output|-o) out=$arg ;; esac
    case $arg in
        --output=*) out=${arg#--output=} ;;
        -o?*) out=${arg#-o} ;;
    esac
    prev=$arg
done

scratch=
if mkdir -p -- "$out" 2>/dev/null && scratch=$(mktemp -d "$out/.mood-scratch.XXXXXX" 2>/dev/null); then
    export TMPDIR="$scratch" TMP="$scratch" TEMP="$scratch" HOME="$scratch" \
        XDG_CACHE_HOME="$scratch/cache" XDG_CONFIG_HOME="$scratch/config" \
        XDG_DATA_HOME="$scratch/data" MPLCONFIGDIR="$scratch/matplotlib" \
        TORCH_HOME="$scratch/torch" TORCHINDUCTOR_CACHE_DIR="$scratch/torchinductor" \
        TRITON_CACHE_DIR="$scratch/triton" PYTORCH_KERNEL_CACHE_PATH="$scratch/torch-kernels" \
        CUDA_CACHE_PATH="$scratch/nv"
else
    scratch=
    echo "mood-run: cannot write to the output folder $out as uid $(id -u) gid $(id -g)" \
        "(owner uid:gid $(stat -c %u:%g -- "$out" 2>/dev/null || echo '?'));" \
        "make it writable (chmod a+rwx) or run the container with --user UID:GID" >&2
fi

"$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM
trap 'kill -INT "$child" 2>/dev/null' INT
trap 'kill -HUP "$child" 2>/dev/null' HUP
status=0
wait "$child" || status=$?
# A trapped signal interrupts wait: wait again until the child has really ended.
while kill -0 "$child" 2>/dev/null; do
    status=0
    wait "$child" || status=$?
done
if [ -n "$scratch" ]; then
    rm -rf -- "$scratch"
fi
exit "$status"
