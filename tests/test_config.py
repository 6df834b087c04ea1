"""Experiment config: defaults, validation and YAML 1.2 numbers."""

import pytest

from labkit.config import ConfigError, ExperimentConfig, load_yaml


def test_defaults_are_course_recipe():
    config = ExperimentConfig()
    assert (config.lr, config.weight_decay, config.eta_min) == (1e-3, 0.0, 2e-5)
    assert (config.epochs, config.batch_size, config.num_filters, config.num_stages) == (100, 100, 32, 3)
    assert config.label == "VGG_38"


def test_yaml_reads_exponent_floats(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("lr: 1e-3\neta_min: 2E-5\nbatch_size: 100\nname: '1e-3'\n")
    values = load_yaml(path)
    assert values["lr"] == 0.001
    assert isinstance(values["eta_min"], float)
    assert values["batch_size"] == 100
    assert values["name"] == "1e-3"
    assert ExperimentConfig.from_dict({k: values[k] for k in ("lr", "eta_min", "batch_size")}).lr == 0.001


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr": "fast"}, "lr must be a number"),
        ({"epochs": 2.5}, "epochs must be a whole number"),
        ({"bn": "yes"}, "bn must be a boolean"),
        ({"num_blocks_per_stage": True}, "num_blocks_per_stage must be a whole number"),
        ({"batch_size": 0}, "batch_size must be > 0"),
        ({"lr": -1e-3}, "lr must be > 0"),
        ({"num_blocks_per_stage": -1}, "num_blocks_per_stage must be >= 0"),
        ({"data": "imagenet"}, "data must be one of"),
        ({"learning_rate": 1e-3}, "unknown key 'learning_rate'"),
        ({"lr": float("inf")}, "lr must be a finite number"),
        ({"device": "gpu"}, "device must be 'auto' or a torch device"),
    ],
)
def test_invalid_values_rejected_with_key(values, message):
    with pytest.raises(ConfigError, match=message) as error:
        ExperimentConfig.from_dict(values, source="exp.yaml")
    assert str(error.value).startswith("exp.yaml: ")


def test_integer_accepted_for_float():
    assert ExperimentConfig.from_dict({"lr": 1}).lr == 1.0


def test_replace_validates():
    config = ExperimentConfig()
    assert config.replace(bn=True).label == "VGG_38 BN"
    with pytest.raises(ConfigError):
        config.replace(epochs=0)


def test_invalid_yaml_names_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("lr: [1e-3\n")
    with pytest.raises(ConfigError, match="broken.yaml: invalid YAML"):
        load_yaml(path)
    with pytest.raises(ConfigError, match="file not found"):
        load_yaml(tmp_path / "absent.yaml")
