"""Run reports: one JSON file per shard (counts, failures, time), merged into one table.

A report is written atomically when its shard's run ends, beside the output folder and never
inside it (the challenge folder holds predictions only). A shard whose report is missing did not
finish: rerun it with ``--skip-existing``. ``mood report FILE...`` merges the reports of a run.
"""
from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from .predict import RunSummary, printable
from .shard import Shard
from ..volumes.volume_io import write_json

VERSION = 1


def report_path(path: str | Path, shard: Shard, output: str | Path) -> Path:
    """Where ``shard``'s report goes: ``path`` itself for an unsharded run, else ``path`` with
    ``.shardI-of-N`` before its suffix (``run.json`` -> ``run.shard3-of-8.json``), so that the
    processes of one launch, all given the same ``--report``, write one file each.

    Refuses a place inside ``output`` (ValueError), checked before any volume is scored."""
    path = Path(path)
    if shard.count > 1:
        path = path.with_name(f"{path.stem}.shard{shard.index}-of-{shard.count}{path.suffix}")
    folder, inside = Path(output).resolve(), path.resolve()
    if inside == folder or folder in inside.parents:
        raise ValueError(f"--report {path} is inside the output folder {output}, which must hold "
                         f"predictions only; write it beside it")
    if path.is_dir():
        raise ValueError(f"--report {path} is a folder; give a file name")
    return path


def write_report(path: Path, summary: RunSummary, *, task: str, method: str, input: str | Path,
                 output: str | Path) -> dict:
    """Write ``summary`` of one shard's run to ``path`` (JSON, atomically); returns what was written."""
    finished = time.time()
    report = {
        "version": VERSION, "task": task, "method": method, "shard": str(summary.shard),
        "host": socket.gethostname(), "pid": os.getpid(), "device": summary.device or "-",
        "input": str(Path(input).resolve()), "output": str(Path(output).resolve()),
        "listed": summary.listed, "volumes": summary.total, "scored": len(summary.scored),
        "skipped": len(summary.skipped),
        "failed": [{"file": printable(name), "reason": reason} for name, reason in summary.failed],
        "seconds": round(summary.seconds, 3),
        "started": _iso(finished - summary.seconds), "finished": _iso(finished),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report, indent=1)
    return report


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="milliseconds")


def read_reports(paths: list[Path]) -> list[dict]:
    """Parse shard reports; a ValueError names the file that is not one."""
    reports = []
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
            Shard.parse(report["shard"])
            report["_file"] = str(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a mood run report ({type(exc).__name__}: {exc})") from None
        reports.append(report)
    return reports


def merge(reports: list[dict]) -> dict:
    """One run from its shards' reports: per-shard rows, totals, failures and the shards missing.

    A shard reported twice (a rerun) counts once, with its latest report. Throughput is the
    volumes scored over the span from the first start to the last finish."""
    latest: dict[str, dict] = {}
    for r in sorted(reports, key=lambda r: r["finished"]):
        latest[r["shard"]] = r
    rows = sorted(latest.values(), key=lambda r: (Shard.parse(r["shard"]).count, Shard.parse(r["shard"]).index))
    present: dict[int, set[int]] = {}
    for r in rows:
        shard = Shard.parse(r["shard"])
        present.setdefault(shard.count, set()).add(shard.index)
    missing = [f"{i}/{n}" for n, seen in sorted(present.items()) for i in range(n) if i not in seen]
    span = 0.0
    if rows:
        span = (datetime.fromisoformat(max(r["finished"] for r in rows))
                - datetime.fromisoformat(min(r["started"] for r in rows))).total_seconds()
    totals = {key: sum(r[key] for r in rows) for key in ("volumes", "scored", "skipped")}
    failed = [dict(f, shard=r["shard"]) for r in rows for f in r["failed"]]
    return {"shards": rows, "missing": missing, "replaced": len(reports) - len(rows),
            "listed": max((r["listed"] for r in rows), default=0), **totals, "failed": failed,
            "span_seconds": span, "volumes_per_minute": 60 * totals["scored"] / span if span > 0 else None}


def table(merged: dict) -> str:
    """The merged run as a plain-text table, then the failures and the missing shards."""
    header = ("shard", "host", "device", "volumes", "scored", "skipped", "failed", "seconds", "vol/min")
    lines = [header]
    for r in merged["shards"]:
        rate = f"{60 * r['scored'] / r['seconds']:.1f}" if r["seconds"] > 0 else "-"
        lines.append((r["shard"], r["host"], r["device"], str(r["volumes"]), str(r["scored"]),
                      str(r["skipped"]), str(len(r["failed"])), f"{r['seconds']:.1f}", rate))
    rate = merged["volumes_per_minute"]
    lines.append(("all", "", "", str(merged["volumes"]), str(merged["scored"]), str(merged["skipped"]),
                  str(len(merged["failed"])), f"{merged['span_seconds']:.1f}",
                  f"{rate:.1f}" if rate is not None else "-"))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = ["  ".join(cell.rjust(w) if i >= 3 else cell.ljust(w) for i, (cell, w) in
                      enumerate(zip(row, widths))).rstrip() for row in lines]
    text.append(f"inputs listed: {merged['listed']}; shards' volumes: {merged['volumes']}")
    if merged["replaced"]:
        text.append(f"{merged['replaced']} older report(s) of a rerun shard ignored")
    text += [f"FAILED {f['file']} (shard {f['shard']}): {f['reason']}" for f in merged["failed"]]
    if merged["missing"]:
        text.append(f"MISSING shard(s) {', '.join(merged['missing'])}: not finished; rerun them "
                    f"with --skip-existing")
    return "\n".join(text)
