"""Course framework compatibility: checkpoint keys, checkpoint import, result folders."""

import numpy as np
import pytest
import torch

from labkit import build_network
from labkit.course import (
    CheckpointFormatError,
    course_state_dict,
    course_to_labkit_key,
    labkit_to_course_key,
    load_course_checkpoint,
    save_course_checkpoint,
)
from labkit.runs import RunNotFoundError, find_runs, load_run, parameters_from_name, reference_root


@pytest.mark.parametrize(
    ("course", "labkit"),
    [
        ("model.layer_dict.block_0_0.layer_dict.conv_0.weight", "features.stage1.block1.conv1.weight"),
        ("model.layer_dict.input_conv.layer_dict.bn_0.running_mean", "features.entry.bn.running_mean"),
        ("model.layer_dict.input_conv.layer_dict.conv_0.weight", "features.entry.conv.weight"),
        ("model.layer_dict.reduction_block_2.layer_dict.conv_1.bias", "features.stage3.reduce.conv2.bias"),
        ("model.layer_dict.block_2_4.layer_dict.bn_1.weight", "features.stage3.block5.bn2.weight"),
        ("model.logit_linear_layer.weight", "classifier.weight"),
    ],
)
def test_key_translation_both_ways(course, labkit):
    assert course_to_labkit_key(course) == labkit
    assert labkit_to_course_key(labkit) == course


def test_unknown_course_key_rejected():
    with pytest.raises(CheckpointFormatError, match="unrecognized"):
        course_to_labkit_key("model.layer_dict.mystery.weight")


@pytest.mark.parametrize(("blocks", "bn", "residual"), [(0, False, False), (5, False, False), (5, True, True)])
def test_course_checkpoint_round_trip(tmp_path, blocks, bn, residual):
    torch.manual_seed(0)
    source = build_network(blocks, bn=bn, residual=residual)
    path = tmp_path / "train_model_7"
    # The course stores its best accuracy as a NumPy float; weights_only loading must accept it.
    save_course_checkpoint(path, source, epoch=7, best_epoch=5, best_val_acc=np.float64(0.4848))
    target = build_network(blocks, bn=bn, residual=residual)
    extra = load_course_checkpoint(path, target)
    assert extra == {"model_epoch": 7, "best_val_model_idx": 5, "best_val_model_acc": pytest.approx(0.4848)}
    for (name, expected), actual in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(expected, actual), name
    images = torch.randn(4, 3, 32, 32)
    source.eval(), target.eval()
    assert torch.equal(source(images), target(images))


def test_course_checkpoint_file_layout(tmp_path):
    model = build_network(0)
    save_course_checkpoint(tmp_path / "ckpt", model, epoch=1, best_epoch=1, best_val_acc=0.1)
    saved = torch.load(tmp_path / "ckpt", weights_only=True)
    assert set(saved) == {"network", "model_epoch", "best_val_model_idx", "best_val_model_acc"}
    assert "model.layer_dict.reduction_block_2.layer_dict.conv_1.bias" in saved["network"]
    assert set(saved["network"]) == set(course_state_dict(model))


def test_checkpoint_for_other_architecture_rejected(tmp_path):
    save_course_checkpoint(tmp_path / "ckpt", build_network(5), epoch=1, best_epoch=1, best_val_acc=0.1)
    with pytest.raises(CheckpointFormatError, match="does not match"):
        load_course_checkpoint(tmp_path / "ckpt", build_network(0))


def test_reference_runs_read_as_runs():
    runs = {run.name: run for run in find_runs(reference_root())}
    assert set(runs) == {"VGG_08", "VGG_38"}
    vgg38 = runs["VGG_38"]
    assert vgg38.kind == "course"
    assert vgg38.data_source == "CIFAR-100"
    assert not vgg38.synthetic
    assert len(vgg38.summary) == 100
    assert vgg38.test["test_acc"] == pytest.approx(0.01)
    assert vgg38.summary["val_loss"].iloc[-1] == pytest.approx(np.log(100), abs=0.01)
    assert runs["VGG_08"].test["test_acc"] == pytest.approx(0.4995)
    assert vgg38.num_parameters == 336_196


def test_course_folder_accepted_at_either_level():
    top = load_run(reference_root() / "VGG_08")
    inner = load_run(reference_root() / "VGG_08" / "result_outputs")
    assert top.name == inner.name == "VGG_08"
    assert top.summary.equals(inner.summary)


def test_folder_without_run_rejected(tmp_path):
    with pytest.raises(RunNotFoundError, match="summary.csv"):
        load_run(tmp_path)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("VGG_08", 59_716), ("VGG_38", 336_196), ("VGG_38_BN", 338_500), ("VGG_38 BN+RC", 338_500), ("VGG_11", None), ("other", None)],
)
def test_parameters_from_course_names(name, expected):
    assert parameters_from_name(name) == expected
