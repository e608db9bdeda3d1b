"""Every benchmark and script starts: its imports resolve against today's package and ``--help``
answers. These run rarely (benchmarks once per change of a speed target, scripts once per campaign
session), so a renamed function would otherwise stay broken until someone needs them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*.py")])


def test_tools_are_found():
    assert len(TOOLS) >= 10


@pytest.mark.parametrize("tool", TOOLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_tool_answers_help(tool):
    done = subprocess.run([sys.executable, str(tool), "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()
