#!/bin/sh
# Build a local stand-in for the container's base image (python:3.11-slim-bookworm) when no
# container registry can be reached: Debian bookworm (whose python3 is 3.11) with python3-venv,
# made from this machine's Debian mirror with mmdebstrap (or debootstrap) and loaded with
# `docker import`.  The extra CA certificates of this host (/usr/local/share/ca-certificates) are
# copied in, so that pip inside `docker build` trusts a TLS-re-signing proxy.
#
#   scripts/build_standin_base.sh [--force] [--rootfs DIR] [TAG]
#
#   TAG          image tag (default mood-standin-base:bookworm-py311); skipped if it exists,
#                unless --force.
#   --rootfs DIR only make the root filesystem in DIR (no Docker needed; used by the CI's
#                chroot fallback when no Docker engine can start).
#
# Environment: MIRROR (a Debian mirror URI; default: the first Debian mirror configured in this
# host's apt sources, else http://deb.debian.org/debian), SECURITY_MIRROR (default: likewise for
# debian-security), SUITE (default bookworm), EXTRA_CA_DIR (default /usr/local/share/ca-certificates).
# Needs root.  Prints the tag (or the rootfs path) on its last line.
set -eu

TAG=mood-standin-base:bookworm-py311
FORCE=0
ROOTFS=
while [ $# -gt 0 ]; do
    case $1 in
        --force) FORCE=1 ;;
        --rootfs) ROOTFS=$2; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        -*) echo "build_standin_base.sh: unknown option $1" >&2; exit 2 ;;
        *) TAG=$1 ;;
    esac
    shift
done

SUITE=${SUITE:-bookworm}
EXTRA_CA_DIR=${EXTRA_CA_DIR:-/usr/local/share/ca-certificates}
PACKAGES=python3,python3-venv,ca-certificates

log() { echo "build_standin_base: $*" >&2; }

if [ -z "$ROOTFS" ] && [ "$FORCE" = 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    log "$TAG exists (use --force to rebuild)"
    echo "$TAG"
    exit 0
fi

# The first mirror URI of this host's apt sources (deb822 or one-line style) matching $1.
host_mirror() {
    # shellcheck disable=SC2016
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
        2>/dev/null | awk -v want="$1" '
        /^[[:space:]]*#/ { next }
        /^URIs:/ { for (i = 2; i <= NF; i++) print $i }
        /^deb[[:space:]]/ { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; break } }
        ' | grep -E "$1" | head -n 1 || true
}
MIRROR=${MIRROR:-$(host_mirror '/debian/?$')}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-$(host_mirror '/debian-security/?$')}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
log "suite $SUITE from $MIRROR (security: $SECURITY_MIRROR)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT INT TERM
cat > "$WORK/sources" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF

# The host's extra CA certificates, if any.
mkdir -p "$WORK/ca"
if [ -d "$EXTRA_CA_DIR" ]; then
    find "$EXTRA_CA_DIR" -maxdepth 1 -type f -name '*.crt' -exec cp {} "$WORK/ca/" \;
fi
log "extra CA certificates: $(find "$WORK/ca" -type f | wc -l)"

# Smaller image: no manuals, documentation (but copyright files) or translations.
DPKG_SLIM="path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright"

make_rootfs() {  # $1: target directory (must not exist or be empty)
    if command -v mmdebstrap >/dev/null 2>&1; then
        printf '%s\n' "$DPKG_SLIM" > "$WORK/dpkg-slim"
        # shellcheck disable=SC2016  # the hooks' $1 is mmdebstrap's (the chroot)
        mmdebstrap --quiet --variant=minbase --include="$PACKAGES" --dpkgopt="$WORK/dpkg-slim" \
            --customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"' \
            --customize-hook="sync-in $WORK/ca /usr/local/share/ca-certificates" \
            --customize-hook='chroot "$1" update-ca-certificates >/dev/null' \
            --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
            "$SUITE" "$1" - < "$WORK/sources"
    elif command -v debootstrap >/dev/null 2>&1; then
        mkdir -p "$1/etc/dpkg/dpkg.cfg.d"
        printf '%s\n' "$DPKG_SLIM" > "$1/etc/dpkg/dpkg.cfg.d/01-slim"
        debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$1" "$MIRROR" >&2
        cp "$WORK/sources" "$1/etc/apt/sources.list"
        mkdir -p "$1/usr/local/share/ca-certificates"
        cp -R "$WORK/ca/." "$1/usr/local/share/ca-certificates/"
        chroot "$1" update-ca-certificates >/dev/null
        rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*
    else
        log "neither mmdebstrap nor debootstrap found (apt-get install mmdebstrap)"
        exit 1
    fi
}

if [ -n "$ROOTFS" ]; then
    make_rootfs "$ROOTFS"
    echo "$ROOTFS"
    exit 0
fi

make_rootfs "$WORK/root"
# The environment of the official python images (LANG; PATH spelled out, as imports have none).
tar -C "$WORK/root" --numeric-owner -cf - . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "stand-in for python:3.11-slim-$SUITE, built by scripts/build_standin_base.sh" \
    - "$TAG" >&2
log "built $TAG"
echo "$TAG"
