#!/usr/bin/env python3
"""Build and run the mood-vqvae image without a Docker engine: a stand-in for CI machines where
``dockerd`` cannot start.  Needs root (chroot, mount namespaces) and util-linux's ``unshare``.

    chroot_image.py build --rootfs DIR [--context .] [--file Dockerfile] [--build-arg K=V ...]
        Executes the Dockerfile's instructions on the root filesystem DIR (made by
        ``scripts/build_standin_base.sh --rootfs DIR``): RUN in a chroot of DIR, COPY from the
        context, ARG/ENV/SHELL/USER/WORKDIR/ENTRYPOINT/CMD recorded in DIR.config.json.  FROM and
        LABEL are ignored (DIR is the base).  Only the Dockerfile features this repository uses.

    chroot_image.py run --rootfs DIR [docker run options] -- [ARGS...]
        Runs the image like ``docker run`` would: the configured entrypoint, environment, user and
        working folder, in a chroot of DIR inside new mount and PID namespaces.  Options:
        -v SRC:DST[:ro], -e K=V, --read-only (root bind-mounted read-only: every write outside
        the volumes fails), --network none (a new network namespace), --user UID[:GID],
        --entrypoint PROG, -i (keep stdin); --rm, --name and --gpus are accepted and ignored.
"""
from __future__ import annotations

import argparse
import fnmatch
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

# The image configuration of the stand-in base (scripts/build_standin_base.sh, docker import).
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def config_path(rootfs: Path) -> Path:
    return rootfs.with_name(rootfs.name + ".config.json")


def instructions(dockerfile: Path):
    """(KEYWORD, text) per instruction: comments dropped, continuation lines joined."""
    lines, current = [], ""
    for raw in dockerfile.read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            lines.append(current.strip())
        current = ""
    for line in lines:
        keyword, _, rest = line.partition(" ")
        yield keyword.upper(), rest.strip()


def expand(text: str, env: dict[str, str]) -> str:
    """Docker's $VAR and ${VAR} substitution (unset: empty)."""
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: env.get(m.group(1) or m.group(2), ""), text)


def pairs(text: str, env: dict[str, str]) -> dict[str, str]:
    """ENV/ARG arguments: K=V pairs (shell-quoted), or the legacy ``K V`` form."""
    words = shlex.split(text)
    if words and "=" not in words[0]:
        return {words[0]: expand(" ".join(words[1:]), env)}
    out = {}
    for word in words:
        key, _, value = word.partition("=")
        out[key] = expand(value, env)
    return out


def ignored(rel: str) -> bool:
    """The parts of .dockerignore that matter for a copy: no bytecode, egg-info or checkpoints."""
    parts = rel.split("/")
    return ("__pycache__" in parts or any(p.endswith(".egg-info") for p in parts)
            or any(fnmatch.fnmatch(parts[-1], pat) for pat in ("*.py[cod]", "*.pt", "*.pth", "*.ckpt")))


def copy(context: Path, sources: list[str], dest: str, rootfs: Path, workdir: str) -> None:
    dest_path = dest if dest.startswith("/") else os.path.join(workdir, dest)
    target = rootfs / dest_path.lstrip("/")
    matches = [Path(m) for s in sources for m in sorted(glob.glob(str(context / s)))]
    if not matches:
        raise SystemExit(f"COPY {' '.join(sources)}: no source files")
    into_dir = dest.endswith("/") or len(sources) > 1 or any(m.is_dir() for m in matches)
    for src in matches:
        if src.is_dir():
            for dirpath, dirnames, filenames in os.walk(src):
                rel_dir = os.path.relpath(dirpath, src)
                dirnames[:] = [d for d in dirnames if not ignored(os.path.join(rel_dir, d))]
                (target / rel_dir).mkdir(parents=True, exist_ok=True)
                for name in filenames:
                    if not ignored(name):
                        shutil.copy2(os.path.join(dirpath, name), target / rel_dir / name)
        else:
            out = target / src.name if into_dir else target
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out)


def chroot_command(rootfs: Path, argv: list[str], env: dict[str, str], *, user: str = "0:0",
                   workdir: str = "/", volumes: list[tuple[str, str, bool]] = (),
                   read_only: bool = False, network: bool = True, resolv: bool = True) -> list[str]:
    """An ``unshare ... sh -c SCRIPT`` command that runs argv in a chroot of rootfs."""
    # The root is bind-mounted onto itself, so that it can be remounted read-only; every mount is
    # private to the new mount namespace and vanishes with it.
    script = ['set -eu', f'R={shlex.quote(str(rootfs))}', 'mount --make-rprivate /',
              'mount --bind "$R" "$R"',
              'mount -t proc proc "$R/proc"',
              'mount --rbind /sys "$R/sys" && mount -o remount,bind,ro "$R/sys"',
              'mount -t tmpfs -o mode=0755,nosuid tmpfs "$R/dev"',
              'mkdir -p "$R/dev/shm" && mount -t tmpfs -o mode=1777,nosuid,nodev shm "$R/dev/shm"',
              'ln -s /proc/self/fd "$R/dev/fd"']
    for dev in DEVICES:
        script.append(f'touch "$R/dev/{dev}" && mount --bind /dev/{dev} "$R/dev/{dev}"')
    if resolv and network:
        script.append('[ -e "$R/etc/resolv.conf" ] || touch "$R/etc/resolv.conf"')
        script.append('mount --bind /etc/resolv.conf "$R/etc/resolv.conf"')
    for src, dst, ro in volumes:
        q_src, q_dst = shlex.quote(src), shlex.quote(dst)
        script.append(f'mkdir -p "$R"{q_dst} && mount --bind {q_src} "$R"{q_dst}')
        if ro:
            script.append(f'mount -o remount,bind,ro "$R"{q_dst}')
    if read_only:
        script.append('mount -o remount,bind,ro "$R"')
    env_args = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    script.append(f'exec chroot --userspec={shlex.quote(user)} "$R" /usr/bin/env -i '
                  f'-C {shlex.quote(workdir)} {env_args} "$@"')
    unshare = ["unshare", "--mount", "--pid", "--fork"] + ([] if network else ["--net"])
    return unshare + ["sh", "-c", "\n".join(script), "chroot-image"] + list(argv)


def build(args: argparse.Namespace) -> int:
    rootfs, context = Path(args.rootfs).resolve(), Path(args.context).resolve()
    dockerfile = Path(args.file) if args.file else context / "Dockerfile"
    build_args = dict(kv.split("=", 1) for kv in args.build_arg)
    env, arg_env = dict(BASE_ENV), {}
    shell, user, workdir, entrypoint, cmd = ["/bin/sh", "-c"], "0:0", "/", [], []
    for keyword, text in instructions(dockerfile):
        if keyword == "ARG":
            name, _, default = text.partition("=")
            if name in build_args:
                arg_env[name] = build_args[name]
            elif _:
                arg_env[name] = expand(default, {**arg_env, **env})
        elif keyword in ("FROM", "LABEL"):
            continue
        elif keyword == "ENV":
            env.update(pairs(text, env))
        elif keyword == "SHELL":
            shell = json.loads(text)
        elif keyword == "COPY":
            words = [expand(w, env) for w in shlex.split(text)]
            copy(context, words[:-1], words[-1], rootfs, workdir)
        elif keyword == "RUN":
            print(f"chroot-image: RUN {text[:100]}", file=sys.stderr, flush=True)
            run_env = {**arg_env, **env}
            subprocess.run(chroot_command(rootfs, shell + [text], run_env, workdir=workdir),
                           check=True, stdin=subprocess.DEVNULL)
        elif keyword == "USER":
            user = expand(text, env)
        elif keyword == "WORKDIR":
            workdir = os.path.join(workdir, expand(text, env))
            (rootfs / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif keyword == "ENTRYPOINT":
            entrypoint = json.loads(text)
        elif keyword == "CMD":
            cmd = json.loads(text)
        else:
            raise SystemExit(f"chroot-image: unsupported instruction {keyword}")
    config = {"env": env, "user": user, "workdir": workdir, "entrypoint": entrypoint, "cmd": cmd}
    config_path(rootfs).write_text(json.dumps(config, indent=1) + "\n")
    print(f"chroot-image: built {rootfs} ({config_path(rootfs).name})", file=sys.stderr)
    return 0


def home_of(rootfs: Path, uid: str) -> str:
    try:
        for line in (rootfs / "etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 5 and (fields[2] == uid or fields[0] == uid):
                return fields[5]
    except OSError:
        pass
    return "/"


def run(args: argparse.Namespace, argv: list[str]) -> int:
    rootfs = Path(args.rootfs).resolve()
    config = json.loads(config_path(rootfs).read_text())
    env = dict(config["env"])
    user = args.user or config["user"]
    uid, _, gid = user.partition(":")
    env.setdefault("HOME", home_of(rootfs, uid))
    for kv in args.env:
        key, _, value = kv.partition("=")
        env[key] = value
    volumes = []
    for spec in args.volume:
        parts = spec.split(":")
        volumes.append((os.path.abspath(parts[0]), parts[1], len(parts) > 2 and parts[2] == "ro"))
    entrypoint = [args.entrypoint] if args.entrypoint else config["entrypoint"]
    command = entrypoint + (argv or ([] if args.entrypoint else config["cmd"]))
    full = chroot_command(rootfs, command, env, user=f"{uid}:{gid or uid}", workdir=config["workdir"],
                          volumes=volumes, read_only=args.read_only, network=args.network != "none")
    return subprocess.run(full, stdin=None if args.interactive else subprocess.DEVNULL).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--rootfs", required=True)
    b.add_argument("--context", default=".")
    b.add_argument("--file", "-f")
    b.add_argument("--build-arg", action="append", default=[])
    r = sub.add_parser("run")
    r.add_argument("--rootfs", required=True)
    r.add_argument("-v", "--volume", action="append", default=[])
    r.add_argument("-e", "--env", action="append", default=[])
    r.add_argument("--read-only", action="store_true")
    r.add_argument("--network", default="host")
    r.add_argument("--user", "-u")
    r.add_argument("--entrypoint")
    r.add_argument("-i", "--interactive", action="store_true")
    r.add_argument("--rm", action="store_true")
    r.add_argument("--name")
    r.add_argument("--gpus")
    argv = sys.argv[1:]
    rest: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, rest = argv[:at], argv[at + 1:]
    args = parser.parse_args(argv)
    return build(args) if args.command == "build" else run(args, rest)


if __name__ == "__main__":
    sys.exit(main())
