"""The command-line boundary: every expected failure is one line on stderr and exit status 1 (no
traceback), usage errors exit 2, and nothing happens at import."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mood.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    """A folder with one small volume (enough to get past listing the data)."""
    folder = tmp_path_factory.mktemp("volumes")
    data = np.zeros((24, 20, 16), np.float32)
    data[6:18, 5:15, 4:12] = 0.5
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(folder / "v.nii.gz"))
    return folder


def _one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"mood {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


# (argv with MISSING/EMPTY/VOLUMES/OUT placeholders, what the line must say)
FAILURES = {
    "train-prior-missing-vqvae": (
        "train prior --region brain --data VOLUMES --vqvae MISSING --out OUT --tiny", "no weights card at MISSING"),
    "train-missing-data": ("train vqvae --region brain --data MISSING --out OUT --tiny", "MISSING: no such file"),
    "train-empty-data": ("train vqvae --region brain --data EMPTY --out OUT --tiny", "no volume files"),
    "train-unknown-holdout": ("train vqvae --region brain --data VOLUMES --holdout nope --out OUT --tiny",
                              "match no file"),
    "calibrate-missing-weights": ("calibrate --region brain --data VOLUMES --weights MISSING", "no weights card in"),
    "calibrate-missing-data": ("calibrate --region brain --data MISSING --weights MISSING", "no such file"),
    "validate-missing-data": ("validate MISSING", "does not exist"),
    "report-missing-file": ("report MISSING", "not a mood run report"),
    "convert-missing-input": ("convert -i MISSING -o OUT --region brain", "no such file"),
    "make-toy-missing-input": ("make-toy -i MISSING -o OUT --count 2", "no such file"),
    "show-missing-volume": ("show MISSING --png OUT", "no such file"),
    "demo-missing-weights": ("demo --weights MISSING -o OUT", "no usable brain weights in MISSING"),
    "init-weights-onto-a-file": ("init-weights --region brain --out VOLUMES/v.nii.gz --tiny", "File exists"),
}


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_expected_failures_are_one_line_and_exit_1(name, volumes, tmp_path, capsys):
    argv, says = FAILURES[name]
    (tmp_path / "empty").mkdir()
    where = {"MISSING": str(tmp_path / "missing"), "EMPTY": str(tmp_path / "empty"), "VOLUMES": str(volumes),
             "OUT": str(tmp_path / "out")}
    assert main([_fill(a, where) for a in argv.split()]) == 1
    captured = capsys.readouterr()
    line = _one_error_line(captured.err, argv.split()[0])
    assert _fill(says, where) in line
    assert not (tmp_path / "out").exists()  # refused before anything was written


def _fill(text: str, where: dict[str, str]) -> str:
    for key, value in where.items():
        text = text.replace(key, value)
    return text


def test_sample_with_missing_weights_fails_each_file_and_exits_1(volumes, tmp_path, capsys):
    """Scoring never stops at the first problem: each file gets its ERROR line, then the summary."""
    code = main(["sample", "-i", str(volumes), "-o", str(tmp_path / "out"), "--region", "brain",
                 "--weights", str(tmp_path / "missing"), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"ERROR {volumes / 'v.nii.gz'}: ") and "no weights card in" in lines[0]
    assert "scored 0 of 1 volume(s), 1 failed" in lines[-1] and len(lines) == 2


def test_a_real_process_prints_one_line_without_a_traceback(volumes, tmp_path):
    """The same through `python -m mood` (logging and all): missing weights for calibrate and for
    training the prior."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for argv in (["calibrate", "--region", "brain", "--data", str(volumes), "--weights", str(tmp_path / "w")],
                 ["train", "prior", "--region", "brain", "--data", str(volumes), "--vqvae", str(tmp_path / "w"),
                  "--out", str(tmp_path / "out")]):
        run = subprocess.run([sys.executable, "-m", "mood", *argv], capture_output=True, text=True, env=env,
                             timeout=300)
        assert run.returncode == 1, run.stderr
        _one_error_line(run.stderr, argv[0])
        assert str(tmp_path / "w") in run.stderr


@pytest.mark.parametrize("argv, says", [
    (["train", "prior", "--region", "brain", "--data", "d", "--out", "o"], "needs --vqvae"),
    (["train", "prior", "--region", "brain", "--data", "d", "--out", "o", "--vqvae", "v", "--width", "0.5"],
     "--width, --cell and --codes apply to the VQ-VAE"),
    (["train", "prior", "--region", "brain", "--data", "d", "--out", "o", "--vqvae", "v", "--cell", "4"],
     "--width, --cell and --codes apply to the VQ-VAE"),
    (["train", "vqvae", "--region", "brain", "--data", "d", "--out", "o", "--prior-dropout", "0.3"],
     "--prior-dropout apply to the prior"),
    (["train", "prior", "--region", "brain", "--data", "d", "--out", "o", "--vqvae", "v", "--prior-dropout", "1"],
     "must be in [0, 1)"),
    (["sample", "-i", "in", "-o", "out", "--", "--seed", "1"], "only validate takes them"),
    (["sample", "-i", "in", "-o", "out", "--slices", "0"], "must be a positive integer"),
])
def test_usage_errors_exit_2(argv, says, capsys):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert says in capsys.readouterr().err


def test_shared_options_come_from_one_parent():
    """--device, --seed, --threads, --region are defined once and mean the same in every command."""
    parser = build_parser()
    train = parser.parse_args(["train", "vqvae", "--region", "brain", "--data", "d", "--out", "o"])
    calibrate = parser.parse_args(["calibrate", "--region", "abdom", "--data", "d", "--weights", "w"])
    sample = parser.parse_args(["sample", "-i", "in", "-o", "out"])
    assert (train.device, train.seed, train.threads) == ("auto", 0, None)
    assert (calibrate.device, calibrate.seed) == ("auto", 0) and calibrate.region == "abdom"
    assert (sample.device, sample.seed, sample.threads, sample.region) == ("auto", 0, None, "auto")


def test_training_defaults_are_defined_once():
    """`mood train` takes every default from TrainSettings, and builds its settings from the options."""
    from mood.cli import train_settings
    from mood.training import TrainSettings
    from mood.training.settings import with_overrides

    args = build_parser().parse_args(["train", "vqvae", "--region", "brain", "--data", "d", "--out", "o"])
    assert train_settings(args) == TrainSettings()
    args = build_parser().parse_args(["train", "prior", "--region", "brain", "--data", "d", "--out", "o",
                                      "--vqvae", "v", "--steps", "7", "--lr", "3e-4", "--compile"])
    assert train_settings(args) == TrainSettings(steps=7, lr=3e-4, compile=True)
    assert with_overrides(None, {"steps": 7}) == TrainSettings(steps=7)
    with pytest.raises(TypeError, match="unknown training setting"):
        with_overrides(None, {"stepz": 7})


def test_nothing_happens_at_import(tmp_path):
    """Importing the package reads no environment variable and changes no process state; the
    atomic writer still gives outputs the permissions the umask allows."""
    script = (
        "import os; os.umask(0o027)\n"
        "import sys, mood.cli, mood.volumes.volume_io as v, mood.training.settings\n"
        "assert 'torch' not in sys.modules  # the command line reads the training defaults without torch\n"
        "import mood.running.predict\n"
        "assert os.umask(0o027) == 0o027\n"
        f"v.write_json(__import__('pathlib').Path({str(tmp_path / 'a.json')!r}), {{'x': 1}})\n"
        f"print(oct(os.stat({str(tmp_path / 'a.json')!r}).st_mode & 0o777))\n")
    env = {**os.environ, "MOOD_MAX_VOXELS": "not a number",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "0o640"
    assert (tmp_path / "a.json").read_text() == '{\n  "x": 1\n}\n'


# -- the localiser's options ----------------------------------------------------------------------
TRAIN_LOCALISER = ["train", "localiser", "--region", "brain", "--data", "d", "--out", "o"]


@pytest.mark.parametrize("argv, says", [
    (TRAIN_LOCALISER + ["--crop", "16"], "apply to LSR's networks, not the localiser"),
    (TRAIN_LOCALISER + ["--vqvae", "v"], "apply to LSR's networks, not the localiser"),
    (TRAIN_LOCALISER + ["--width", "0.5"], "apply to LSR's networks, not the localiser"),
    (TRAIN_LOCALISER + ["--prior-channels", "8"], "apply to LSR's networks, not the localiser"),
    (TRAIN_LOCALISER + ["--codebook-update", "ema"], "apply to LSR's networks, not the localiser"),
    (["train", "vqvae", "--region", "brain", "--data", "d", "--out", "o", "--label-sigma", "0.2"],
     "--image-size apply to the localiser"),
    (["train", "vqvae", "--region", "brain", "--data", "d", "--out", "o", "--tasks", "intensity"],
     "--image-size apply to the localiser"),
    (["train", "prior", "--region", "brain", "--data", "d", "--out", "o", "--vqvae", "v", "--channels", "4,8"],
     "--image-size apply to the localiser"),
    (["train", "vqvae", "--region", "brain", "--data", "d", "--out", "o", "--image-size", "64"],
     "--image-size apply to the localiser"),
    (TRAIN_LOCALISER + ["--tasks", "intensity,blur"], "unknown task(s) ['blur']"),
    (TRAIN_LOCALISER + ["--tasks", ","], "unknown task"),
    (TRAIN_LOCALISER + ["--channels", "8"], "at least two"),
    (TRAIN_LOCALISER + ["--channels", "8,0"], "must be a positive integer"),
    (["sample", "-i", "in", "-o", "out", "--method", "vae"], "invalid choice: 'vae'"),
])
def test_localiser_usage_errors_exit_2(argv, says, capsys):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert says in capsys.readouterr().err


def test_train_localiser_passes_its_options_on(monkeypatch, capsys):
    """`mood train localiser`: --tasks, --label-sigma, --average and --resolution reach its settings, --channels
    and --image-size its architecture."""
    import mood.training
    from mood.training import TrainSettings

    calls = []
    monkeypatch.setattr(mood.training, "train_localiser", lambda *a, **kw: calls.append((a, kw)) or Path(a[2]))
    assert main(TRAIN_LOCALISER + ["--tasks", "intensity, deformation", "--label-sigma", "0.2", "--average", "0.9",
                                   "--channels", "4,8,8", "--image-size", "32", "--tiny", "--steps", "5",
                                   "--resolution", "2"]) == 0
    (args, kw), = calls
    assert args == ("brain", Path("d"), Path("o")) and kw["channels"] == (4, 8, 8) and kw["image_size"] == 32
    assert kw["tiny"] is True
    assert kw["settings"] == TrainSettings(tasks=("intensity", "deformation"), label_sigma=0.2, average=0.9, steps=5,
                                          resolution=2.0)
    assert "weights written to o" in capsys.readouterr().err
    calls.clear()
    assert main(TRAIN_LOCALISER) == 0
    (_, kw), = calls
    assert kw["settings"] == TrainSettings() and kw["channels"] is None and kw["image_size"] is None


@pytest.mark.parametrize("command", [["sample", "-i", "in", "-o", "out"], ["pixel", "-i", "in", "-o", "out"],
                                     ["demo"]])
def test_mood_method_sets_the_default_method(command, monkeypatch):
    monkeypatch.delenv("MOOD_METHOD", raising=False)
    assert build_parser().parse_args(command).method == "auto"
    monkeypatch.setenv("MOOD_METHOD", "lsr")
    assert build_parser().parse_args(command).method == "lsr"
    assert build_parser().parse_args(command + ["--method", "localiser"]).method == "localiser"  # the flag wins
    monkeypatch.setenv("MOOD_METHOD", "")
    assert build_parser().parse_args(command).method == "auto"


@pytest.mark.parametrize("command", [["sample", "-i", "in", "-o", "out"], ["demo"]])
def test_an_invalid_mood_method_is_a_usage_error(command, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MOOD_METHOD", "bogus")
    with pytest.raises(SystemExit) as caught:
        main(command)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "MOOD_METHOD='bogus' is not a method" in err and "localiser" in err
    # an explicit valid --method overrides the variable: the call is not refused
    from mood.cli import check_arguments

    parser = build_parser()
    args = parser.parse_args(command + ["--method", "lsr"])
    args._extra = []
    check_arguments(parser, args)
    assert args.method == "lsr"
