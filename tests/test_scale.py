"""Cohort scale: shards, torchrun, multi-GPU workers, resuming, run reports, overlapped I/O.

Every multi-process run is compared byte for byte with one plain single-process run of the same
folder and seed (``single``), which is what "the same results from many GPUs" means. Every process
uses one torch thread: on the CPU the thread count alone changes a few voxels by one float16 step
(reductions are split by thread), so runs are compared at equal thread counts.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from mood.cli import main
from mood.running.overlap import Overlap
from mood.running.predict import predict
from mood.running.report import merge, read_reports, report_path, table
from mood.running.shard import Placement, Shard, bucket, placement, under_torchrun
from mood.running.workers import worker_count, worker_environment

from conftest import head_phantom, write_nifti

ROOT = Path(__file__).resolve().parents[1]
NAMES = [f"case_{i:02d}.nii.gz" for i in range(8)]
#: LSR: its seeded restorations are what must not depend on the shard, worker or position
PIXEL = ["--region", "brain", "--method", "lsr", "--restorations", "2", "--slices", "4", "--seed", "7", "-q"]
LAUNCHER = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Eight small head phantoms of different shapes and one file that is not a NIfTI."""
    d = tmp_path_factory.mktemp("cohort")
    for i, name in enumerate(NAMES):
        write_nifti(d / name, head_phantom((28 + 2 * i, 24, 12 + i), seed=i))
    (d / "broken.nii.gz").write_bytes(b"this is not a volume")
    return d


@pytest.fixture(scope="module")
def single(cohort, tiny_weights, tmp_path_factory) -> dict[str, bytes]:
    """Pixel outputs of one plain process (no shard, one volume at a time): the reference."""
    out = tmp_path_factory.mktemp("single")
    summary = predict("pixel", cohort, out, region="brain", weights=tiny_weights, restorations=2,
                      slices=4, seed=7, progress=False, in_flight=1, method="lsr")
    assert sorted(summary.scored) == NAMES and [f for f, _ in summary.failed] == ["broken.nii.gz"]
    return _outputs(out)


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


# -- the partition ------------------------------------------------------------------------------
def test_shards_partition_names_and_stay_put_when_files_are_added():
    names = [f"sub-{i:05d}_T1w.nii.gz" for i in range(2000)]
    owners = [[s for s in range(7) if Shard(s, 7).owns(n)] for n in names]
    assert all(len(o) == 1 for o in owners)  # disjoint, and their union is everything
    sizes = [sum(o == [s] for o in owners) for s in range(7)]
    assert min(sizes) > 2000 / 7 * 0.8  # a hash, not one shard taking all
    paths = [Path(n) for n in names]
    before = Shard(3, 7).select(paths)
    more = sorted(paths + [Path(f"new-{i}.nii") for i in range(500)])
    assert set(before) <= set(Shard(3, 7).select(more))  # no old file moved to another shard
    assert bucket("a.nii") == bucket("a.nii") != bucket("b.nii")


def test_bucket_is_not_pythons_salted_hash():
    code = "from mood.running.shard import bucket; print(bucket('x.nii.gz'))"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env=_clean_env(PYTHONHASHSEED=str(seed))).stdout for seed in (1, 2)}
    assert len(runs) == 1


@pytest.mark.parametrize("index, count, parts", [(0, 1, 3), (2, 5, 2), (4, 5, 4)])
def test_split_partitions_its_shard_exactly(index, count, parts):
    names = [f"v{i}.nii" for i in range(3000)]
    shard = Shard(index, count)
    children = [shard.split(p, parts) for p in range(parts)]
    assert all(c.count == count * parts for c in children)
    for n in names:
        assert sum(c.owns(n) for c in children) == shard.owns(n)


@pytest.mark.parametrize("text", ["3/3", "-1/2", "1", "a/b", "1/0", "1/2/3"])
def test_bad_shard_is_a_usage_error(text, tmp_path, capsys):
    with pytest.raises(ValueError, match="I/N"):
        Shard.parse(text)
    with pytest.raises(SystemExit):
        main(["sample", "-i", str(tmp_path), "-o", str(tmp_path / "o"), f"--shard={text}"])
    assert "0 <= I < N" in capsys.readouterr().err


def test_placement_from_torchrun_environment(monkeypatch):
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert placement(None, "auto", {}) == Placement(Shard(0, 1), "auto", launched=False)
    assert placement(None, "auto", env) == Placement(Shard(5, 8), "auto", launched=True)
    assert placement(Shard(1, 3), "cpu", env).shard == Shard(1, 3).split(5, 8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert placement(None, "auto", env).device == "cuda:1"
    assert placement(None, "cuda", dict(env, LOCAL_RANK="6")).device == "cuda:2"  # more processes than GPUs
    assert placement(None, "cpu", env).device == "cpu"
    assert placement(None, "cuda:3", env).device == "cuda:3"  # an explicit GPU stays
    with pytest.raises(ValueError, match="RANK"):
        placement(None, "auto", dict(env, RANK="8"))
    with pytest.raises(ValueError, match="integers"):
        placement(None, "auto", dict(env, WORLD_SIZE="eight"))
    assert under_torchrun({"TORCHELASTIC_RUN_ID": "x"}) and not under_torchrun({})


# -- one worker per GPU -------------------------------------------------------------------------
def test_worker_count(monkeypatch):
    alone, launched = Placement(Shard(), "auto", False), Placement(Shard(), "auto", True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert worker_count("auto", alone, "auto") == 1  # the CPU: one process
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert worker_count("auto", alone, "auto") == 4
    assert worker_count("auto", alone, "cuda") == 4
    assert worker_count("auto", alone, "cuda:2") == 1
    assert worker_count("auto", alone, "cpu") == 1
    assert worker_count("auto", launched, "auto") == 1  # torchrun already made one process per GPU
    assert worker_count("3", alone, "cpu") == 3
    with pytest.raises(ValueError, match="torchrun"):
        worker_count("2", launched, "auto")
    for bad in ("0", "all", "-1"):
        with pytest.raises(ValueError, match="--workers"):
            worker_count(bad, alone, "auto")


def test_worker_environment_is_torchruns():
    env = worker_environment(2, 4, {"PATH": "/bin"})
    assert placement(None, "cpu", env).shard == Shard(2, 4)
    assert env["LOCAL_RANK"] == "2" and int(env["OMP_NUM_THREADS"]) >= 1 and env["PATH"] == "/bin"
    assert worker_environment(0, 4, {"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"


def test_workers_on_the_cpu_equal_one_process(cohort, single, tiny_weights, tmp_path, capsys, monkeypatch):
    """--workers 2 starts two real worker processes (the path one GPU per worker takes)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out, report = tmp_path / "out", tmp_path / "reports" / "run.json"
    code = main(["pixel", "-i", str(cohort), "-o", str(out), "--weights", str(tiny_weights),
                 "--workers", "2", "--report", str(report), *PIXEL])
    assert code == 1  # the broken file
    assert _outputs(out) == single
    assert sorted(p.name for p in report.parent.iterdir()) == ["run.shard0-of-2.json", "run.shard1-of-2.json"]
    err = capsys.readouterr().err
    assert "FAILED broken.nii.gz" in err and "MISSING" not in err


# -- torchrun ----------------------------------------------------------------------------------
def test_torchrun_two_processes_equal_one_process(cohort, single, tiny_weights, tmp_path):
    """Two CPU processes under torchrun, no flags for shard or device: the union of their outputs
    is the single-process run, byte for byte; the bad file fails alone, in its own shard."""
    out, reports = tmp_path / "out", tmp_path / "reports"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "-m", "mood", "pixel", "-i", str(cohort), "-o", str(out),
                           "--weights", str(tiny_weights), "--report", str(reports / "pixel.json"), *PIXEL],
                          cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]  # one bad volume does not fail the launch
    assert _outputs(out) == single
    runs = read_reports(sorted(reports.iterdir()))
    assert sorted(r["shard"] for r in runs) == ["0/2", "1/2"]
    assert sum(r["volumes"] for r in runs) == len(NAMES) + 1 and all(r["listed"] == len(NAMES) + 1 for r in runs)
    bad = Shard(0, 2) if Shard(0, 2).owns("broken.nii.gz") else Shard(1, 2)
    for r in runs:
        failed = [f["file"] for f in r["failed"]]
        assert failed == (["broken.nii.gz"] if r["shard"] == str(bad) else [])
        assert r["scored"] == r["volumes"] - len(failed) > 0
    assert proc.stderr.count("ERROR ") == 1 and "failed volume(s): under torchrun" in proc.stderr


# -- resuming ----------------------------------------------------------------------------------
def test_killed_shard_resumes_and_loses_nothing(cohort, single, tiny_weights, tmp_path):
    out = tmp_path / "out"
    shard = ["--shard", "1/2", "--weights", str(tiny_weights), "-i", str(cohort), "-o", str(out)]
    mine = {n for n in NAMES if Shard(1, 2).owns(n)}
    assert len(mine) >= 2
    proc = subprocess.Popen([sys.executable, "-m", "mood", "pixel", *shard, *PIXEL, "--in-flight", "1"], cwd=ROOT,
                            env=_clean_env(), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(p.name in mine for p in out.glob("case_*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if not p.name.startswith(".")}
    assert before and set(before) < mine  # killed part-way

    report = tmp_path / "r.json"
    broken = Shard(1, 2).owns("broken.nii.gz")
    assert main(["pixel", *shard, *PIXEL, "--skip-existing", "--report", str(report)]) == int(broken)
    after = _outputs(out)
    assert after == {n: single[n] for n in mine}  # nothing lost, no temporary file left
    assert all(out.joinpath(n).stat().st_mtime_ns == t for n, t in before.items())  # not redone
    run = read_reports([report.with_name("r.shard1-of-2.json")])[0]
    assert (run["skipped"], run["scored"], len(run["failed"])) == (len(before), len(mine) - len(before), broken)


# -- reports -----------------------------------------------------------------------------------
def test_report_never_inside_the_output_folder(tmp_path, cohort, tiny_weights, capsys):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="inside the output folder"):
        report_path(out / "r.json", Shard(), out)
    with pytest.raises(ValueError, match="inside the output folder"):
        report_path(out / "sub" / "r.json", Shard(1, 4), out)
    assert report_path(tmp_path / "r.json", Shard(1, 4), out) == tmp_path / "r.shard1-of-4.json"
    assert report_path(tmp_path / "r.json", Shard(), out) == tmp_path / "r.json"
    code = main(["sample", "-i", str(cohort), "-o", str(out), "--region", "brain", "--weights",
                 str(tiny_weights), "--report", str(out / "r.json"), "-q"])
    assert code == 1 and not out.exists()  # refused before anything was scored or written
    assert "inside the output folder" in capsys.readouterr().err


def _report(shard: str, scored: int, failed=(), started="2026-12-02T10:00:00.000+00:00",
            finished="2026-12-02T10:01:00.000+00:00", listed: int = 10) -> dict:
    return {"version": 1, "task": "sample", "method": "lsr", "shard": shard, "host": "h", "pid": 1,
            "device": "cpu", "input": "/in", "output": "/out", "listed": listed,
            "volumes": scored + len(failed), "scored": scored, "skipped": 0,
            "failed": [{"file": f, "reason": "bad"} for f in failed], "seconds": 60.0,
            "started": started, "finished": finished}


def test_merge_reports_counts_failures_and_missing_shards(tmp_path, capsys):
    files = []
    for i, rep in enumerate([_report("0/3", 3), _report("2/3", 2, ["x.nii"], finished="2026-12-02T10:02:00.000+00:00"),
                             _report("2/3", 1, ["x.nii", "y.nii"])]):  # an older report of shard 2
        files.append(tmp_path / f"r{i}.json")
        files[-1].write_text(json.dumps(rep))
    merged = merge(read_reports(files))
    assert merged["missing"] == ["1/3"] and merged["replaced"] == 1
    assert (merged["volumes"], merged["scored"]) == (6, 5)
    assert [f["file"] for f in merged["failed"]] == ["x.nii"]
    assert merged["span_seconds"] == 120 and merged["volumes_per_minute"] == pytest.approx(2.5)
    text = table(merged)
    assert "MISSING shard(s) 1/3" in text and "FAILED x.nii (shard 2/3)" in text
    assert main(["report", *map(str, files), "--json", str(tmp_path / "all.json")]) == 1
    assert json.loads((tmp_path / "all.json").read_text())["missing"] == ["1/3"]
    assert "MISSING" in capsys.readouterr().out
    complete = tmp_path / "complete.json"
    complete.write_text(json.dumps(_report("0/1", 10)))
    assert main(["report", str(complete)]) == 0
    (tmp_path / "junk.json").write_text("{}")
    assert main(["report", str(tmp_path / "junk.json")]) == 1


# -- overlapped reading and writing ----------------------------------------------------------------
@pytest.mark.parametrize("limit", [1, 2, 4])
def test_overlap_keeps_order_and_at_most_limit_in_flight(limit):
    lock, state = threading.Lock(), {"now": 0, "most": 0}

    def read(i: int) -> int:
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.002)
        if i == 5:
            raise OSError("unreadable")
        return i * i

    def written():
        time.sleep(0.003)
        with lock:
            state["now"] -= 1

    seen, errors = [], []
    with Overlap(range(20), read, limit) as overlap:
        for item, value, error in overlap:
            if error is not None:
                errors.append((item, str(error)))
                with lock:
                    state["now"] -= 1
                overlap.release()
                continue
            assert value == item * item
            seen.append(item)
            overlap.write(written)
    assert seen == [i for i in range(20) if i != 5] and errors == [(5, "unreadable")]
    assert state["now"] == 0
    assert 1 <= state["most"] <= limit and (limit == 1 or state["most"] > 1)


def test_overlap_write_errors_reach_the_caller():
    with Overlap([1], lambda i: i, 2) as overlap:
        for _item, _value, _error in overlap:
            future = overlap.write(lambda: (_ for _ in ()).throw(OSError("disk full")))
    assert isinstance(future.exception(), OSError)
    with pytest.raises(ValueError, match="at least one"):
        Overlap([], lambda i: i, 0)


def test_in_flight_does_not_change_bytes_and_write_failures_are_counted(cohort, single, tiny_weights,
                                                                        tmp_path, monkeypatch):
    out = tmp_path / "out"
    summary = predict("pixel", cohort, out, region="brain", weights=tiny_weights, restorations=2,
                      slices=4, seed=7, progress=False, in_flight=4, method="lsr")
    assert _outputs(out) == single and summary.total == len(NAMES) + 1

    import mood.running.predict

    real = mood.running.predict.write_text

    def full_disk(path, text):
        if path.name.startswith("case_03"):
            raise OSError(28, "No space left on device")
        real(path, text)
    monkeypatch.setattr(mood.running.predict, "write_text", full_disk)
    summary = predict("sample", cohort, tmp_path / "s", region="brain", weights=tiny_weights, progress=False)
    assert sorted(f for f, _ in summary.failed) == ["broken.nii.gz", "case_03.nii.gz"]
    assert len(summary.scored) == len(NAMES) - 1
    assert not (tmp_path / "s" / "case_03.nii.gz.txt").exists()
