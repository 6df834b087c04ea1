"""Import and export the course framework's checkpoints.

The course's networks keep their layers in ``layer_dict`` module dicts, so
its state-dict keys read ``model.layer_dict.block_0_0.layer_dict.conv_0.weight``.
labkit's networks name the same layer ``features.stage1.block1.conv1.weight``.
This module converts between the two; the course's result folders are read
by ``labkit.runs``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labkit import runfolder

_LAYER = r"(?P<kind>conv|bn)_(?P<index>\d+)\.(?P<tensor>\w+)"
_COURSE_PATTERNS = [
    (re.compile(rf"^input_conv\.layer_dict\.{_LAYER}$"), "features.entry"),
    (re.compile(rf"^block_(?P<stage>\d+)_(?P<block>\d+)\.layer_dict\.{_LAYER}$"), "features.stage{stage}.block{block}"),
    (re.compile(rf"^reduction_block_(?P<stage>\d+)\.layer_dict\.{_LAYER}$"), "features.stage{stage}.reduce"),
]


class CheckpointFormatError(ValueError):
    """A state-dict key or shape that does not fit the target network."""


def course_to_labkit_key(key: str) -> str:
    """Translate one course state-dict key to labkit's name for the same tensor."""
    # A network wrapped in nn.DataParallel saves its keys under an extra "module." prefix.
    key = key.removeprefix("model.").removeprefix("module.").removeprefix("layer_dict.")
    if key.startswith("logit_linear_layer."):
        return "classifier." + key.removeprefix("logit_linear_layer.")
    for pattern, template in _COURSE_PATTERNS:
        match = pattern.match(key)
        if match is None:
            continue
        parts = match.groupdict()
        prefix = template.format(stage=int(parts.get("stage") or 0) + 1, block=int(parts.get("block") or 0) + 1)
        if prefix == "features.entry":
            # The entry block has a single conv and BN, which labkit names without a number.
            return f"{prefix}.{parts['kind']}.{parts['tensor']}"
        return f"{prefix}.{parts['kind']}{int(parts['index']) + 1}.{parts['tensor']}"
    raise CheckpointFormatError(f"unrecognized course state-dict key {key!r}")


def labkit_to_course_key(key: str) -> str:
    """Translate one labkit state-dict key to the course framework's name for it."""
    if key.startswith("classifier."):
        return "model.logit_linear_layer." + key.removeprefix("classifier.")
    match = re.match(r"^features\.entry\.(?P<kind>conv|bn)\.(?P<tensor>\w+)$", key)
    if match:
        return f"model.layer_dict.input_conv.layer_dict.{match['kind']}_0.{match['tensor']}"
    match = re.match(r"^features\.stage(?P<stage>\d+)\.(?P<block>block\d+|reduce)\.(?P<kind>conv|bn)(?P<index>\d+)\.(?P<tensor>\w+)$", key)
    if match is None:
        raise CheckpointFormatError(f"labkit key {key!r} has no course equivalent")
    stage = int(match["stage"]) - 1
    if match["block"] == "reduce":
        block = f"reduction_block_{stage}"
    else:
        block = f"block_{stage}_{int(match['block'].removeprefix('block')) - 1}"
    return f"model.layer_dict.{block}.layer_dict.{match['kind']}_{int(match['index']) - 1}.{match['tensor']}"


def course_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return ``model``'s state dict under the course framework's keys."""
    return {labkit_to_course_key(key): value for key, value in model.state_dict().items()}


def load_course_checkpoint(path: str | Path, model: nn.Module) -> dict[str, Any]:
    """Load a checkpoint saved by the course framework into ``model``.

    The file is read with ``torch.load(weights_only=True)``. Returns the
    checkpoint's other entries (``model_epoch``, ``best_val_model_idx``,
    ``best_val_model_acc``).

    Raises:
        CheckpointFormatError: the checkpoint's layers do not match ``model``.
    """
    from labkit.trainer import load_checkpoint

    checkpoint = load_checkpoint(path)
    if "network" not in checkpoint:
        raise CheckpointFormatError(f"{path} is not a course checkpoint: it has no 'network' entry")
    state = {course_to_labkit_key(key): value for key, value in checkpoint["network"].items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointFormatError(
            f"{path} does not match this network: missing {missing[:3]}, unexpected {unexpected[:3]}; "
            "build the network with the checkpoint's depth, bn and residual settings"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise CheckpointFormatError(f"{path}: {key} has shape {tuple(value.shape)}, the network expects {tuple(expected[key].shape)}")
    model.load_state_dict(state)
    return {key: value for key, value in checkpoint.items() if key != "network"}


def save_course_checkpoint(path: str | Path, model: nn.Module, epoch: int, best_epoch: int, best_val_acc: float) -> None:
    """Save ``model`` as the course framework saves its checkpoints, so its code can load it."""
    runfolder.save_torch(path, {
        "network": course_state_dict(model),
        "model_epoch": epoch,
        "best_val_model_idx": best_epoch,
        "best_val_model_acc": best_val_acc,
    })
