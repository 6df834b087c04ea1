"""``labkit run``: options and params files are validated before any notebook starts, and a failed
notebook is kept with its error while the other experiments still run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from labkit.cli import main
from labkit.runner import PARAMS_RECORD, run_experiments

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"

GOOD = "notebook: 01_diagnose\ndepth: 8\nlr: 1e-3\n"
# A run that finishes in seconds on a CPU: VGG_08 with 8 filters, one epoch on 200 synthetic images.
TINY = """\
notebook: 01_diagnose
depth: 8
num_filters: 8
epochs: 1
batch_size: 50
data: synthetic
synthetic_train_size: 200
synthetic_test_size: 100
progress: false
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "a.yaml").write_text(GOOD)
    return tmp_path


def run_main(project: Path, *args: str) -> int:
    return main(["run", *args, "--params-dir", str(project / "params"), "--notebooks-dir", str(NOTEBOOKS),
                 "--out", str(project / "results"), "--no-progress"])


@pytest.mark.parametrize("text, key, expected", [
    ("notebook: 01_diagnose\nlearning_rate: 1e-3\n", "learning_rate", "unknown key"),
    ("notebook: 01_diagnose\nbn: maybe\n", "bn", "boolean"),
    ("notebook: 01_diagnose\nlr: 0\n", "lr", "> 0"),
    ("notebook: 01_diagnose\nlr: -0.01\n", "lr", "> 0"),
    ("notebook: 01_diagnose\nepochs: 0\n", "epochs", "> 0"),
    ("notebook: 01_diagnose\nepochs: -1\n", "epochs", "> 0"),
    ("notebook: 01_diagnose\nbatch_size: 0\n", "batch_size", "> 0"),
    ("notebook: 01_diagnose\nbatch_size: -25\n", "batch_size", "> 0"),
    ("notebook: 01_diagnose\ndepth: 38.5\n", "depth", "whole number"),
    ("notebook: 01_diagnose\nnum_blocks_per_stage: 1.5\n", "num_blocks_per_stage", "whole number"),
    ("notebook: 07_extra\n", "notebook", "expected one of 01_diagnose"),
    ("", "", "the file is empty"),
    ("- notebook: 01_diagnose\n", "", "the top level is a list"),
])
def test_bad_params_file_stops_before_running(project: Path, capsys: pytest.CaptureFixture, text: str, key: str,
                                              expected: str):
    bad = project / "params" / "b.yaml"
    bad.write_text(text)
    status = run_main(project, "a", "b")
    error = capsys.readouterr().err
    assert status == 2
    assert str(bad) in error
    assert key in error
    assert expected in error
    assert not (project / "results").exists(), "a notebook ran before validation finished"


def test_bad_compared_file_stops_before_running(project: Path, capsys: pytest.CaptureFixture):
    (project / "params" / "b.yaml").write_text("notebook: 01_diagnose\nepochs: 0\n")
    (project / "params" / "a.yaml").write_text(GOOD + "compare: [b]\n")
    assert run_main(project, "a") == 2
    assert "b.yaml: epochs must be > 0" in capsys.readouterr().err
    assert not (project / "results").exists()


@pytest.mark.parametrize("args, expected", [
    (["--profile", "tiny"], "unknown profile 'tiny'"),
    (["missing"], "unknown experiment 'missing'"),
    (["nowhere/a.yaml"], "params file not found"),
])
def test_bad_option_stops_before_running(project: Path, capsys: pytest.CaptureFixture, args: list[str], expected: str):
    assert run_main(project, *args) == 2
    assert expected in capsys.readouterr().err
    assert not (project / "results").exists()


def test_out_that_is_a_file_rejected(project: Path, capsys: pytest.CaptureFixture):
    (project / "results").write_text("not a folder")
    assert run_main(project, "a") == 2
    assert "is a file; expected a folder" in capsys.readouterr().err


def test_resume_and_overwrite_exclusive(project: Path, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as caught:
        run_main(project, "--resume", "--overwrite")
    assert caught.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_missing_notebook_file_rejected(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    status = main(["run", "a", "--params-dir", str(project / "params"), "--notebooks-dir", str(tmp_path / "none"),
                   "--out", str(project / "results")])
    assert status == 2
    assert "01_diagnose.ipynb not found" in capsys.readouterr().err


def test_invalid_file_exit_status_from_process(project: Path):
    (project / "params" / "b.yaml").write_text("notebook: 01_diagnose\nlr: -1\n")
    finished = subprocess.run(
        [sys.executable, "-m", "labkit.cli", "run", "--params-dir", str(project / "params"), "--out",
         str(project / "results")], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2
    assert f"labkit run: error: {project / 'params' / 'b.yaml'}: lr must be > 0, got -1.0" in finished.stderr
    assert not (project / "results").exists()


@pytest.mark.slow
def test_failed_notebook_kept_and_others_run(tmp_path: Path):
    """One experiment cannot find its data; the other trains. Both notebooks stay in their run folders."""
    params = tmp_path / "params"
    params.mkdir()
    (tmp_path / "no-data").mkdir()
    (params / "a_broken.yaml").write_text(
        f"notebook: 01_diagnose\ndepth: 8\ndata: cifar100\ndata_dir: {tmp_path / 'no-data'}\ndownload: false\n")
    (params / "b_tiny.yaml").write_text(TINY)
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    finished = subprocess.run(
        [sys.executable, "-m", "labkit.cli", "run", "--params-dir", str(params), "--notebooks-dir", str(NOTEBOOKS),
         "--out", str(results), "--data-dir", str(tmp_path / "data"), "--no-progress"],
        capture_output=True, text=True, timeout=600, env=env)
    assert finished.returncode == 1, finished.stderr
    assert "FAILED a_broken (01_diagnose)" in finished.stderr
    assert "runs = lab.train_or_load(experiment, resume=resume, overwrite=overwrite)" in finished.stderr
    assert "DataError" in finished.stderr
    assert "1 of 2 notebooks failed" in finished.stderr
    assert "ok     b_tiny (01_diagnose)" in finished.stdout

    broken = nbformat.read(results / "a_broken" / "01_diagnose.ipynb", as_version=4)
    errors = [output for cell in broken.cells if cell.cell_type == "code" for output in cell.outputs
              if output.output_type == "error"]
    assert [error.ename for error in errors] == ["DataError"]
    assert (results / "b_tiny" / "summary.csv").is_file()
    assert (results / "b_tiny" / "figures" / "curves.pdf").is_file()
    assert (results / "b_tiny" / "figures" / "curves.png").is_file()


@pytest.mark.slow
def test_run_from_python_trains_once(tmp_path: Path):
    params = tmp_path / "params"
    params.mkdir()
    (params / "tiny.yaml").write_text(TINY)
    results = tmp_path / "results"
    options = {"params_dir": params, "notebooks_dir": NOTEBOOKS, "out": results, "data_dir": tmp_path / "data"}

    (first,) = run_experiments(["tiny"], **options)
    assert first.ok, first.error
    folder = results / "tiny"
    assert first.notebook == folder / "01_diagnose.ipynb"
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "finished"
    assert record["synthetic"] is True
    assert "notebook: 01_diagnose" in (folder / PARAMS_RECORD).read_text()
    trained = (folder / "summary.csv").stat().st_mtime_ns

    (again,) = run_experiments(["tiny"], **options)
    assert again.ok, again.error
    assert (folder / "summary.csv").stat().st_mtime_ns == trained, "a finished matching run was trained again"

    (overwritten,) = run_experiments(["tiny"], overwrite=True, **options)
    assert overwritten.ok, overwritten.error
    assert (folder / "summary.csv").stat().st_mtime_ns != trained
