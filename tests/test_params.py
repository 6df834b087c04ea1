"""Params files and profiles: the lab's own files load, and every bad file fails naming the file, key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from labkit.config import ConfigError
from labkit.params import (
    NOTEBOOKS,
    available,
    default_set,
    find_params,
    find_profile,
    load_compared,
    load_experiment,
    load_profile,
)

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params"
EXPERIMENTS = ["vgg08", "vgg38", "vgg38_bn_lr1e-3", "vgg38_bn_lr1e-2", "vgg38_rc", "vgg38_bn_rc_lr1e-3",
               "vgg38_bn_rc_lr1e-2"]

GOOD = """\
notebook: 01_diagnose
depth: 38
bn: true
lr: 1e-3
epochs: 5
batch_size: 100
"""


@pytest.fixture
def params_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "project" / "params"
    folder.mkdir(parents=True)
    return folder


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_course_table_files_all_present():
    assert set(EXPERIMENTS) | {"compare"} == set(available(PARAMS))


@pytest.mark.parametrize("name", EXPERIMENTS)
@pytest.mark.parametrize("profile", [None, "smoke"])
def test_lab_params_files_load(name: str, profile: str | None):
    experiment = load_experiment(PARAMS / f"{name}.yaml", profile=profile)
    config = experiment.config
    assert experiment.notebook in NOTEBOOKS
    assert isinstance(config.lr, float)
    assert config.lr in (1e-3, 1e-2)
    assert experiment.run_dir.name == name
    assert config.num_blocks_per_stage == (0 if name == "vgg08" else 5)
    if profile == "smoke":
        assert config.data == "synthetic"
        assert experiment.out == ROOT / "results" / "smoke"
    else:
        assert config.data == "cifar100"
        assert config.epochs == 100
        assert experiment.out == ROOT / "results"
    assert len(load_compared(experiment)) == len(experiment.compare)


def test_lab_table_settings_match_course():
    expected = {
        "vgg08": (0, False, False, 1e-3), "vgg38": (5, False, False, 1e-3),
        "vgg38_bn_lr1e-3": (5, True, False, 1e-3), "vgg38_bn_lr1e-2": (5, True, False, 1e-2),
        "vgg38_rc": (5, False, True, 1e-3), "vgg38_bn_rc_lr1e-3": (5, True, True, 1e-3),
        "vgg38_bn_rc_lr1e-2": (5, True, True, 1e-2),
    }
    for name, (blocks, bn, residual, lr) in expected.items():
        config = load_experiment(PARAMS / f"{name}.yaml").config
        assert (config.num_blocks_per_stage, config.bn, config.residual, config.lr) == (blocks, bn, residual, lr), name


def test_compare_file_lists_every_experiment():
    experiment = load_experiment(PARAMS / "compare.yaml", profile="smoke")
    assert experiment.config is None
    assert experiment.settings == {}
    assert sorted(experiment.compare) == sorted(EXPERIMENTS)


def test_default_set_orders_by_notebook():
    names = [path.stem for path in default_set(PARAMS)]
    assert names == ["vgg08", "vgg38", "vgg38_bn_lr1e-2", "vgg38_bn_lr1e-3", "vgg38_bn_rc_lr1e-2",
                     "vgg38_bn_rc_lr1e-3", "vgg38_rc", "compare"]


def test_exponent_number_arrives_as_float(params_dir: Path):
    experiment = load_experiment(write(params_dir, "a.yaml", GOOD))
    assert experiment.config.lr == 0.001
    assert type(experiment.config.lr) is float


def test_relative_paths_use_project_folder(params_dir: Path):
    path = write(params_dir, "a.yaml", GOOD + "out: runs\ndata_dir: cache/cifar\n")
    experiment = load_experiment(path)
    assert experiment.out == params_dir.parent / "runs"
    assert experiment.config.data_dir == str(params_dir.parent / "cache" / "cifar")


def test_out_and_data_dir_overrides(params_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    path = write(params_dir, "a.yaml", GOOD)
    experiment = load_experiment(path, out="elsewhere", data_dir="archives")
    assert experiment.out == tmp_path / "elsewhere"
    assert experiment.config.data_dir == str(tmp_path / "archives")


def test_profile_overrides_file(params_dir: Path):
    write(params_dir, "profiles/tiny.yaml", "epochs: 1\ndata: synthetic\nout: tiny-results\n")
    experiment = load_experiment(write(params_dir, "a.yaml", GOOD), profile="tiny")
    assert experiment.config.epochs == 1
    assert experiment.config.data == "synthetic"
    assert experiment.config.bn is True
    assert experiment.out == params_dir.parent / "tiny-results"


@pytest.mark.parametrize("text, key, expected", [
    ("lrr: 1e-3\n", "lrr", "did you mean 'lr'"),
    ("bn: yes please\n", "bn", "boolean"),
    ("epochs: '5'\n", "epochs", "whole number"),
    ("lr: fast\n", "lr", "number"),
    ("lr: 0\n", "lr", "> 0"),
    ("lr: -1e-3\n", "lr", "> 0"),
    ("epochs: 0\n", "epochs", "> 0"),
    ("epochs: -3\n", "epochs", "> 0"),
    ("batch_size: 0\n", "batch_size", "> 0"),
    ("batch_size: -100\n", "batch_size", "> 0"),
    ("num_blocks_per_stage: 2.5\n", "num_blocks_per_stage", "whole number"),
    ("compare: vgg08\n", "compare", "list of string"),
    ("compare: [missing]\n", "compare", "no params file missing.yaml"),
    ("compare: [a]\n", "compare", "this file itself"),
    ("data: imagenet\n", "data", "cifar100, synthetic"),
])
def test_bad_value_names_file_and_key(params_dir: Path, text: str, key: str, expected: str):
    path = write(params_dir, "a.yaml", "notebook: 01_diagnose\nbn: true\n" + text)
    with pytest.raises(ConfigError) as caught:
        load_experiment(path)
    message = str(caught.value)
    assert str(path) in message
    assert key in message
    assert expected in message


@pytest.mark.parametrize("depth, expected", [
    ("37.5", "depth must be a whole number"),
    ("'38'", "depth must be a whole number"),
    ("10", r"depth must be 8 \+ 6k"),
    ("2", r"depth must be 8 \+ 6k"),
])
def test_bad_depth_rejected(params_dir: Path, depth: str, expected: str):
    path = write(params_dir, "a.yaml", f"notebook: 01_diagnose\ndepth: {depth}\n")
    with pytest.raises(ConfigError, match=expected) as caught:
        load_experiment(path)
    assert str(path) in str(caught.value)


def test_depth_sets_blocks(params_dir: Path):
    for depth, blocks in ((8, 0), (14, 1), (38, 5)):
        path = write(params_dir, "a.yaml", f"notebook: 01_diagnose\ndepth: {depth}\n")
        assert load_experiment(path).config.num_blocks_per_stage == blocks


def test_depth_and_blocks_together_rejected(params_dir: Path):
    path = write(params_dir, "a.yaml", "notebook: 01_diagnose\ndepth: 38\nnum_blocks_per_stage: 5\n")
    with pytest.raises(ConfigError, match="set depth or num_blocks_per_stage, not both"):
        load_experiment(path)


@pytest.mark.parametrize("notebook, expected", [
    ("05_extra", "unknown notebook '05_extra'"),
    ("01_diagnos", "did you mean '01_diagnose'"),
    ("[01_diagnose]", "notebook must be a string"),
])
def test_unknown_notebook_rejected(params_dir: Path, notebook: str, expected: str):
    path = write(params_dir, "a.yaml", f"notebook: {notebook}\n")
    with pytest.raises(ConfigError, match=expected) as caught:
        load_experiment(path)
    assert str(path) in str(caught.value)
    assert "notebook" in str(caught.value)


def test_notebook_suffix_accepted(params_dir: Path):
    path = write(params_dir, "a.yaml", "notebook: 02_normalize.ipynb\n")
    assert load_experiment(path).notebook == "02_normalize"


def test_missing_notebook_rejected(params_dir: Path):
    path = write(params_dir, "a.yaml", "lr: 1e-3\n")
    with pytest.raises(ConfigError, match="missing key 'notebook'; expected one of 01_diagnose"):
        load_experiment(path)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file_rejected(params_dir: Path, text: str):
    path = write(params_dir, "a.yaml", text)
    with pytest.raises(ConfigError, match="the file is empty; expected a mapping") as caught:
        load_experiment(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("text, kind", [
    ("- notebook: 01_diagnose\n- lr: 1e-3\n", "list"),
    ("just words\n", "string"),
    ("42\n", "whole number"),
])
def test_top_level_non_mapping_rejected(params_dir: Path, text: str, kind: str):
    path = write(params_dir, "a.yaml", text)
    with pytest.raises(ConfigError, match=f"the top level is a {kind}; expected a mapping") as caught:
        load_experiment(path)
    assert str(path) in str(caught.value)


def test_non_string_key_rejected(params_dir: Path):
    path = write(params_dir, "a.yaml", "notebook: 01_diagnose\n1: 2\n")
    with pytest.raises(ConfigError, match="key 1 is a whole number; expected a setting name"):
        load_experiment(path)


def test_invalid_yaml_rejected(params_dir: Path):
    path = write(params_dir, "a.yaml", "notebook: [01_diagnose\n")
    with pytest.raises(ConfigError, match="invalid YAML") as caught:
        load_experiment(path)
    assert str(path) in str(caught.value)


def test_missing_file_rejected(params_dir: Path):
    with pytest.raises(ConfigError, match="file not found"):
        load_experiment(params_dir / "absent.yaml")


def test_compare_notebook_takes_no_settings(params_dir: Path):
    path = write(params_dir, "summary.yaml", "notebook: 04_compare\nlr: 1e-3\n")
    with pytest.raises(ConfigError, match="04_compare trains nothing of its own.*'lr'"):
        load_experiment(path)


def test_profile_bad_value_names_profile(params_dir: Path):
    profile = write(params_dir, "profiles/broken.yaml", "epochs: 0\n")
    path = write(params_dir, "a.yaml", GOOD)
    with pytest.raises(ConfigError, match="epochs must be > 0") as caught:
        load_experiment(path, profile="broken")
    assert str(profile) in str(caught.value)


@pytest.mark.parametrize("text, expected", [
    ("notebook: 01_diagnose\n", "unknown key 'notebook'"),
    ("compare: [a]\n", "unknown key 'compare'"),
    ("", "the file is empty"),
    ("- epochs: 1\n", "the top level is a list"),
])
def test_bad_profile_rejected(params_dir: Path, text: str, expected: str):
    profile = write(params_dir, "profiles/broken.yaml", text)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_profile(profile)
    assert str(profile) in str(caught.value)


def test_unknown_profile_lists_available(params_dir: Path):
    write(params_dir, "profiles/smoke.yaml", "epochs: 1\n")
    with pytest.raises(ConfigError, match="unknown profile 'smok'.*one of smoke"):
        find_profile("smok", params_dir)


def test_unknown_experiment_lists_available(params_dir: Path):
    write(params_dir, "a.yaml", GOOD)
    with pytest.raises(ConfigError, match="unknown experiment 'b'.*one of a"):
        find_params("b", params_dir)


def test_missing_params_path_rejected(tmp_path: Path):
    with pytest.raises(ConfigError, match="params file not found"):
        find_params(tmp_path / "nope.yaml", tmp_path)


def test_default_set_empty_folder(params_dir: Path):
    with pytest.raises(ConfigError, match="no params files"):
        default_set(params_dir)


def test_resolved_settings_round_trip(params_dir: Path):
    experiment = load_experiment(write(params_dir, "a.yaml", GOOD), profile=PARAMS / "profiles" / "smoke.yaml")
    copy = write(params_dir, "copy.yaml", yaml.safe_dump(experiment.to_dict()))
    assert load_experiment(copy).config == experiment.config
