"""Checkpoints load with torch.load(weights_only=True); anything else is rejected with a reason."""

from __future__ import annotations

import io
import pickle
import types

import numpy as np
import pytest
import torch

from labkit.course import course_state_dict, load_course_checkpoint, save_course_checkpoint
from labkit.networks import build_network
from labkit.trainer import CheckpointError, load_checkpoint, save_checkpoint


class Unsafe:
    """A class whose instances only unpickle by importing this test module."""

    def __init__(self) -> None:
        self.value = 1


def small_network() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(0, 3, 8, 10, bn=True, residual=False)


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    return all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def save_as_numpy1(obj: object, path) -> None:
    """Save ``obj`` with torch.save, naming NumPy's scalar constructor as NumPy 1 pickles it."""

    class NumPy1Pickler(pickle.Pickler):
        def __init__(self, file, protocol=None) -> None:
            self.target = file
            self.buffer = io.BytesIO()
            super().__init__(self.buffer, protocol)

        def dump(self, obj) -> None:
            super().dump(obj)
            data = self.buffer.getvalue()
            new_name, old_name = b"numpy._core.multiarray\nscalar\n", b"numpy.core.multiarray\nscalar\n"
            assert new_name in data or old_name in data, "the pickle holds no NumPy scalar"
            self.target.write(data.replace(new_name, old_name))

    module = types.ModuleType("numpy1_pickle")
    module.Pickler = NumPy1Pickler
    torch.save(obj, path, pickle_module=module)


def test_labkit_checkpoint_round_trip(tmp_path):
    model = small_network()
    save_checkpoint(tmp_path / "latest.pt", {"model": model.state_dict(), "epoch": 3, "history": [{"val_acc": 0.5}]})
    checkpoint = load_checkpoint(tmp_path / "latest.pt")
    assert checkpoint["epoch"] == 3
    assert checkpoint["history"] == [{"val_acc": 0.5}]
    assert checkpoint["format"] == "labkit-checkpoint-1"
    restored = small_network()
    restored.load_state_dict(checkpoint["model"])
    assert same_weights(model, restored)


@pytest.mark.parametrize("accuracy", [np.float64(0.6125), np.float32(0.5), 0.75])
def test_course_checkpoint_with_numpy_float(tmp_path, accuracy):
    model = small_network()
    path = tmp_path / "train_model_7"
    save_course_checkpoint(path, model, epoch=7, best_epoch=5, best_val_acc=accuracy)
    restored = build_network(0, 3, 8, 10, bn=True, residual=False)
    extras = load_course_checkpoint(path, restored)
    assert same_weights(model, restored)
    assert extras == {"model_epoch": 7, "best_val_model_idx": 5, "best_val_model_acc": accuracy}
    assert type(extras["best_val_model_acc"]) is type(accuracy)
    if type(accuracy) is float:
        # Without a NumPy scalar the file needs nothing beyond torch's own allowlist.
        assert set(torch.load(path, weights_only=True)) == {"network", "model_epoch", "best_val_model_idx",
                                                            "best_val_model_acc"}


def test_numpy1_course_checkpoint_loads(tmp_path):
    model = small_network()
    save_as_numpy1({"network": course_state_dict(model), "model_epoch": 2, "best_val_model_idx": 2,
                    "best_val_model_acc": np.float64(0.25)}, tmp_path / "train_model_2")
    restored = build_network(0, 3, 8, 10, bn=True, residual=False)
    extras = load_course_checkpoint(tmp_path / "train_model_2", restored)
    assert same_weights(model, restored)
    assert extras["best_val_model_acc"] == np.float64(0.25)


def test_custom_class_rejected_with_reason(tmp_path):
    torch.save({"model": {"weight": torch.ones(2)}, "extra": Unsafe()}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "bad.pt")
    message = str(error.value)
    assert f"{tmp_path / 'bad.pt'} was rejected" in message
    assert "Unsafe" in message
    assert "arbitrary unpickling" in message
    assert "weights_only=False" in message


def test_course_loader_rejects_custom_class(tmp_path):
    model = small_network()
    torch.save({"network": course_state_dict(model), "model_epoch": 1, "helper": Unsafe()}, tmp_path / "train_model_1")
    with pytest.raises(CheckpointError, match="Unsafe"):
        load_course_checkpoint(tmp_path / "train_model_1", small_network())


def test_numpy_array_rejected(tmp_path):
    torch.save({"history": np.arange(3)}, tmp_path / "array.pt")
    with pytest.raises(CheckpointError, match="_reconstruct"):
        load_checkpoint(tmp_path / "array.pt")


@pytest.mark.parametrize("kept", [0.5, 0.0])
def test_truncated_checkpoint_named(tmp_path, kept):
    save_checkpoint(tmp_path / "latest.pt", {"model": small_network().state_dict(), "epoch": 1})
    data = (tmp_path / "latest.pt").read_bytes()
    (tmp_path / "latest.pt").write_bytes(data[: int(len(data) * kept)])
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "latest.pt")
    assert f"{tmp_path / 'latest.pt'} could not be loaded" in str(error.value)
    assert "truncated" in str(error.value)


def test_missing_checkpoint_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="latest.pt not found"):
        load_checkpoint(tmp_path / "latest.pt")


def test_data_parallel_course_checkpoint_loads(tmp_path):
    model = small_network()
    state = {key.replace("model.", "model.module.", 1): value for key, value in course_state_dict(model).items()}
    torch.save({"network": state, "model_epoch": 4, "best_val_model_idx": 4,
                "best_val_model_acc": np.float64(0.5)}, tmp_path / "train_model_4")
    restored = build_network(0, 3, 8, 10, bn=True, residual=False)
    load_course_checkpoint(tmp_path / "train_model_4", restored)
    assert same_weights(model, restored)
