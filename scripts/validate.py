#!/usr/bin/env python3
"""Run the package or a container image on a MOOD toy layout and score it as the challenge does.

Usage: python scripts/validate.py DATA [--docker IMAGE] [--json OUT.json] [--pictures DIR]
       [--tasks sample pixel] [--regions brain abdom] [--workdir DIR] [-- ARGS for python -m mood]

The same as ``mood validate`` (its parser is :mod:`mood.cli`'s), for a checkout without installing.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mood.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["validate", *sys.argv[1:]]))
