"""Widget panel: controls map to settings, training from the panel, live plot data, params files, headless mode."""

import json
import sys
from pathlib import Path
import threading
from types import SimpleNamespace

import nbformat
import pytest
import torch

from labkit.config import ConfigError, ExperimentConfig, load_yaml
from labkit.networks import build_network, count_parameters, network_depth
from labkit.params import load_experiment
from labkit.runner import plan
from labkit.widgets import (
    MODE_ENV,
    Panel,
    architecture_rows,
    check_panel_ranges,
    describe,
    interactive_frontend,
    notebook_name,
    params_stem,
    show_panel,
)

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"

# One stage of four-channel convolutions on 100 synthetic images (95 for training): an epoch is two steps.
TINY = dict(num_blocks_per_stage=0, num_stages=1, num_filters=4, epochs=2, batch_size=50, device="cpu",
            data="synthetic", synthetic_train_size=100, synthetic_test_size=20)
STEPS_PER_EPOCH = 2


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("panel-data"))


@pytest.fixture
def panel(data_dir):
    panel = Panel(ExperimentConfig(**TINY, data_dir=data_dir), notebook="notebooks/02_normalize.ipynb")
    panel.wait(timeout=120)
    yield panel
    panel.close()


@pytest.mark.parametrize("blocks", [0, 5, 8])
@pytest.mark.parametrize("bn, residual", [(False, False), (True, True)])
def test_architecture_rows_match_network(blocks, bn, residual):
    config = ExperimentConfig(num_blocks_per_stage=blocks, bn=bn, residual=residual)
    rows = architecture_rows(config)
    model = build_network(blocks, bn=bn, residual=residual)

    assert [row["part"] for row in rows] == ["entry", "stage1", "stage2", "stage3", "classifier"]
    assert sum(row["weight layers"] for row in rows) == network_depth(blocks)
    assert sum(row["parameters"] for row in rows) == count_parameters(model)
    assert rows[-2]["output"] == "32 x 4 x 4"
    assert rows[-1]["output"] == "100"


def test_describe_lists_settings_and_architecture():
    config = ExperimentConfig(num_blocks_per_stage=5, bn=True, lr=0.01, epochs=7, data="synthetic")
    text = describe(config, notebook="02_normalize")

    for line in ("BN: bn = True", "RC: residual = False", "blocks per stage: num_blocks_per_stage = 5",
                 "learning rate: lr = 0.01", "epochs: epochs = 7", "data: data = 'synthetic'"):
        assert line in text
    assert "synthetic stand-in, not CIFAR-100" in text
    assert "Notebook for labkit run: 02_normalize" in text
    parameters = count_parameters(build_network(5, bn=True))
    assert f"VGG_38 BN: 38 weight layers, {parameters:,} parameters" in text
    assert describe(config, notebook="02_normalize") == text
    assert "Notebook for labkit run" not in describe(config)


def test_panel_ranges_rejected():
    with pytest.raises(ConfigError, match="num_blocks_per_stage must be 0..8"):
        check_panel_ranges(ExperimentConfig(num_blocks_per_stage=9))
    with pytest.raises(ConfigError, match="lr must lie in"):
        check_panel_ranges(ExperimentConfig(lr=2.0))
    with pytest.raises(ConfigError, match="epochs must be at most"):
        check_panel_ranges(ExperimentConfig(epochs=5000))
    with pytest.raises(ConfigError, match="unknown key 'depth'"):
        show_panel(depth=3)


def test_controls_map_to_settings(panel):
    panel.bn.value = True
    panel.residual.value = True
    panel.depth.value = 3
    panel.lr.value = 0.01
    panel.epochs.value = 4
    panel.data.value = "cifar100"
    settings = panel.settings()

    assert (settings.bn, settings.residual, settings.num_blocks_per_stage) == (True, True, 3)
    assert settings.lr == pytest.approx(0.01)
    assert (settings.epochs, settings.data) == (4, "cifar100")
    assert settings.num_filters == 4
    assert panel.depth_label.value == f"{network_depth(3, 1)} layers"
    assert "VGG_10 BN+RC" in panel.architecture.value


def test_init_view_before_training(panel):
    assert panel.init_label == "VGG_04"
    assert [row["layer"] for row in panel.init_grads] == ["entry.conv", "stage1.reduce.conv1",
                                                          "stage1.reduce.conv2", "classifier"]
    assert all(row["epoch"] == 0 and row["mean_abs_grad"] > 0 for row in panel.init_grads)
    assert [line["gid"] for line in panel.plot_data["grad_flow"]] == ["lk-grad-init"]
    assert 'id="lk-grad-init"' in panel.grad_flow.value
    assert panel.plot_data["curves"] == []

    panel.depth.value = 2
    panel.wait(timeout=60)
    assert panel.init_label == "VGG_08"
    assert len(panel.init_grads) == network_depth(2, 1)


def test_init_view_without_cifar(tmp_path):
    config = ExperimentConfig(**{**TINY, "data": "cifar100"}, data_dir=str(tmp_path / "empty"))
    panel = Panel(config)
    try:
        panel.wait(timeout=60)
        assert panel.init_grads == []
        assert "needs the cifar100 data" in panel.status.value
        assert "VGG_04" in panel.architecture.value
    finally:
        panel.close()


def test_train_records_runs_and_plots(panel):
    """Train from the panel, then train again with other settings: both runs stay on the plots."""
    panel.bn.value = True
    panel.train_button.click()
    panel.wait(timeout=300)

    (run,) = panel.runs
    assert run.status == "finished"
    assert run.config.bn is True
    assert run.config.num_blocks_per_stage == 0
    assert [row["epoch"] for row in run.history] == [1, 2]
    assert panel.epoch_label.value == "epoch 2/2"
    assert panel.progress.value == panel.progress.max == 2 * STEPS_PER_EPOCH
    assert not panel.train_button.disabled
    assert panel.stop_button.disabled
    assert "finished after 2 of 2 epochs" in panel.status.value

    curves = {line["gid"]: line for line in panel.plot_data["curves"]}
    assert set(curves) == {f"lk-curve-1-{split}-{metric}" for split in ("train", "val") for metric in ("loss", "acc")}
    assert curves["lk-curve-1-val-loss"]["values"] == [row["val_loss"] for row in run.history]
    assert curves["lk-curve-1-train-acc"]["values"] == [100 * row["train_acc"] for row in run.history]
    assert curves["lk-curve-1-val-loss"]["label"] == "#1 VGG_04 BN, lr 0.001, synthetic data"
    assert 'id="lk-curve-1-val-loss"' in panel.curves.value

    grad_lines = {line["gid"]: line for line in panel.plot_data["grad_flow"]}
    assert grad_lines["lk-grad-1"]["epoch"] == 2
    assert grad_lines["lk-grad-1"]["values"] == [row["mean_abs_grad"] for row in run.grads if row["epoch"] == 2]
    # The panel's initialization view seeds and batches as fit does, so on the CPU they agree exactly.
    assert [row for row in run.grads if row["epoch"] == 0] == panel.init_grads

    # A second run with other settings joins the first on the same plots.
    panel.bn.value = False
    panel.epochs.value = 1
    panel.train().result(timeout=300)
    panel.wait(timeout=60)
    assert [run.label for run in panel.runs] == ["#1 VGG_04 BN, lr 0.001, synthetic data",
                                                 "#2 VGG_04, lr 0.001, synthetic data"]
    val_losses = [line for line in panel.plot_data["curves"] if line["split"] == "val" and line["metric"] == "loss"]
    assert [(line["run"], len(line["values"])) for line in val_losses] == [(1, 2), (2, 1)]
    assert {line["gid"] for line in panel.plot_data["grad_flow"]} == {"lk-grad-init", "lk-grad-1", "lk-grad-2"}
    assert "#1 VGG_04 BN, lr 0.001" in panel.curves.value
    assert "#2 VGG_04, lr 0.001" in panel.curves.value

    panel.clear()
    panel.wait(timeout=60)
    assert panel.runs == []
    assert panel.plot_data["curves"] == []


def test_stop_ends_run_at_next_batch(panel, tmp_path):
    panel.run_root = tmp_path / "runs"
    panel.epochs.value = 50

    def press_stop(change):
        # Runs inside the epoch-1 callback, so fit finds the stop request before the next batch.
        if change["new"] == "epoch 1/50":
            panel.stop_button.click()

    panel.epoch_label.observe(press_stop, names="value")
    panel.train_button.click()
    panel.wait(timeout=300)

    (run,) = panel.runs
    assert run.status == "stopped"
    assert len(run.history) == 1
    assert "stopped after 1 of 50 epochs" in panel.status.value
    assert not panel.bn.disabled
    assert not panel.train_button.disabled

    (folder,) = (tmp_path / "runs").iterdir()
    assert folder == run.run_dir
    assert folder.name.endswith("-01-vgg-04")
    assert json.loads((folder / "run.json").read_text())["status"] == "stopped"
    assert len((folder / "summary.csv").read_text().splitlines()) == 1 + 1


def test_train_while_running_rejected(panel):
    release = threading.Event()
    panel._submit(release.wait)  # blocks the worker, so the run below stays queued
    panel.train()
    with pytest.raises(RuntimeError, match="a run is in progress"):
        panel.train()
    panel.stop()
    release.set()
    panel.wait(timeout=300)
    assert panel.runs[0].status == "stopped"
    assert panel.runs[0].history == []


def test_failed_run_reported(panel, tmp_path):
    panel.data.value = "cifar100"
    panel.base_config = panel.base_config.replace(download=False, data_dir=str(tmp_path / "no-cifar"))
    panel.train_button.click()
    panel.wait(timeout=60)

    assert panel.runs[0].status == "failed"
    assert "DataError" in panel.runs[0].error
    assert "failed" in panel.status.value
    assert not panel.train_button.disabled


def test_save_params_accepted_by_run(panel, tmp_path):
    panel.bn.value = True
    panel.depth.value = 4
    panel.lr.value = 0.003
    path = panel.save_params(tmp_path / "params" / "panel.yaml")
    values = load_yaml(path)

    assert list(values)[0] == "notebook"
    assert values.pop("notebook") == "02_normalize"
    saved = ExperimentConfig.from_dict(values, source=str(path))
    assert saved == panel.settings()
    assert (saved.bn, saved.num_blocks_per_stage, saved.data) == (True, 4, "synthetic")
    assert saved.lr == pytest.approx(0.003)
    assert path.read_text().startswith("# Saved from the labkit panel: VGG_12 BN, lr 0.003, 2 epochs, synthetic data.\n")

    # labkit run validates every params file this way before it starts a notebook.
    (experiment,) = plan([path], notebooks_dir=NOTEBOOKS_DIR)
    assert experiment.notebook == "02_normalize"
    assert experiment.config == panel.settings()


def test_save_params_default_path(panel, tmp_path, monkeypatch):
    (tmp_path / "params").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    panel.base_config = panel.base_config.replace(data_dir=str(tmp_path / "data"))
    panel.bn.value = True
    path = panel.save_params()

    assert path == Path("..") / "params" / "panel_vgg04_bn_lr1e-3_synthetic.yaml"
    # A data folder inside the project is written relative to it, as labkit run reads it.
    assert load_yaml(path)["data_dir"] == "data"
    assert load_experiment(path).config.data_dir == str(tmp_path / "data")


def test_params_stem_and_notebook_name():
    assert params_stem(ExperimentConfig(bn=True, residual=True, lr=1e-2)) == "panel_vgg38_bn_rc_lr1e-2"
    assert params_stem(ExperimentConfig(num_blocks_per_stage=0, data="synthetic")) == "panel_vgg08_lr1e-3_synthetic"
    assert notebook_name("/home/user/lab/notebooks/03_residual.ipynb") == "03_residual"
    assert notebook_name("01_diagnose") == "01_diagnose"
    with pytest.raises(ConfigError, match="can name only 01_diagnose, 02_normalize, 03_residual"):
        notebook_name("04_compare.ipynb")
    with pytest.raises(ConfigError, match="'Untitled.ipynb'"):
        Panel(ExperimentConfig(**TINY), notebook="Untitled.ipynb")


def test_save_button_reports_errors(panel, tmp_path):
    panel.params_path.value = str(tmp_path)  # a folder, not a file
    panel.save_button.click()
    assert "Error" in panel.status.value

    panel.params_path.value = str(tmp_path / "params" / "x.yaml")
    panel.save_button.click()
    assert (tmp_path / "params" / "x.yaml").is_file()
    assert f"labkit run {tmp_path / 'params' / 'x.yaml'}" in panel.status.value


def test_rejected_params_file_removed(panel, tmp_path, monkeypatch):
    def reject(path):
        raise ConfigError(f"{path}: rejected")

    monkeypatch.setattr("labkit.widgets.load_experiment", reject)
    with pytest.raises(ConfigError, match="rejected"):
        panel.save_params(tmp_path / "params" / "x.yaml")
    assert not (tmp_path / "params" / "x.yaml").exists()


def test_show_panel_static_outside_kernel(capsys):
    assert show_panel(num_blocks_per_stage=5, data="synthetic", notebook="notebooks/01_diagnose.ipynb") is None
    out = capsys.readouterr().out
    assert out.startswith("labkit panel: static description")
    assert "VGG_38: 38 weight layers" in out
    assert "Notebook for labkit run: 01_diagnose" in out


def _fake_ipython(monkeypatch, metadata):
    request = {"header": {"msg_type": "execute_request"}, "metadata": metadata}
    kernel = SimpleNamespace(get_parent=lambda channel=None: request)
    monkeypatch.setattr("IPython.get_ipython", lambda: SimpleNamespace(kernel=kernel))


def test_frontend_detected_by_cell_id(monkeypatch):
    monkeypatch.delenv(MODE_ENV, raising=False)
    assert interactive_frontend() is False
    _fake_ipython(monkeypatch, {"cellId": "a1b2", "deletedCells": [], "recordTiming": False})
    assert interactive_frontend() is True
    _fake_ipython(monkeypatch, {})
    assert interactive_frontend() is False


def test_frontend_environment_override(monkeypatch):
    _fake_ipython(monkeypatch, {"cellId": "a1b2"})
    monkeypatch.setenv(MODE_ENV, "static")
    assert interactive_frontend() is False
    monkeypatch.setenv(MODE_ENV, "interactive")
    _fake_ipython(monkeypatch, {})
    assert interactive_frontend() is True
    monkeypatch.setenv(MODE_ENV, "sometimes")
    assert interactive_frontend() is False


def _panel_notebook(tmp_path):
    code = (
        "from labkit.widgets import show_panel\n"
        "panel = show_panel(num_blocks_per_stage=2, bn=True, data='synthetic')\n"
        "print('returned', panel)"
    )
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "panel.ipynb"
    nbformat.write(notebook, path)
    return path


@pytest.mark.slow
def test_papermill_and_nbval_get_static_text(tmp_path, monkeypatch):
    import subprocess

    import papermill

    monkeypatch.delenv(MODE_ENV, raising=False)
    executed = tmp_path / "executed.ipynb"
    papermill.execute_notebook(str(_panel_notebook(tmp_path)), str(executed), kernel_name="python3",
                               progress_bar=False, cwd=str(tmp_path))
    outputs = nbformat.read(executed, as_version=4).cells[0].outputs
    text = "".join(output.get("text", "") for output in outputs)

    assert text.startswith("labkit panel: static description")
    assert "VGG_20 BN: 20 weight layers" in text
    assert "returned None" in text
    assert all("application/vnd.jupyter.widget-view+json" not in output.get("data", {}) for output in outputs)

    # nbval compares the stored output with a fresh execution, so the description must repeat exactly.
    check = subprocess.run([sys.executable, "-m", "pytest", "--nbval", "-p", "no:cacheprovider", "-q", str(executed)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "1 passed" in check.stdout


def test_job_error_shown_in_status(panel, monkeypatch):
    def broken(config, arrays):
        raise RuntimeError("probe failed")

    monkeypatch.setattr("labkit.widgets.init_gradients", broken)
    panel.depth.value = 1
    with pytest.raises(RuntimeError, match="probe failed"):
        panel.wait(timeout=60)
    assert "RuntimeError: probe failed" in panel.status.value
