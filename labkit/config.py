"""Typed experiment configuration, validated once where it enters labkit."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml


@dataclass
class ExperimentConfig:
    """Settings of one training run. The defaults are the course's recipe for VGG_38."""

    # Network.
    num_blocks_per_stage: int = 5  # processing blocks per stage; 0 gives VGG_08, 5 gives VGG_38
    num_stages: int = 3
    num_filters: int = 32  # channels of every convolution
    num_classes: int = 100
    bn: bool = False  # BatchNorm after every convolution
    residual: bool = False  # identity shortcut around each processing block

    # Optimisation: Adam with cosine annealing from lr to eta_min over all epochs.
    lr: float = 1e-3
    weight_decay: float = 0.0
    eta_min: float = 2e-5
    epochs: int = 100
    batch_size: int = 100  # images per training step
    eval_batch_size: int = 1000  # images per evaluation step; does not change results
    seed: int = 0

    # Data.
    data: str = "cifar100"  # "cifar100" or "synthetic"
    data_dir: str = "data"  # folder or archive path of cifar-100-python.tar.gz
    download: bool = True  # download CIFAR-100 when the archive is missing
    synthetic_train_size: int = 50000  # images in the synthetic archive's train file
    synthetic_test_size: int = 10000  # images in the synthetic archive's test file

    # Execution.
    device: str = "auto"  # "auto" (CUDA, then MPS, then CPU), or a torch device string
    grad_every: int = 1  # record gradient statistics every this many steps
    log_every: int = 50  # steps between progress-bar updates (each one syncs the device)
    bf16: bool | None = None  # bfloat16 autocast; None turns it on for CUDA only
    channels_last: bool | None = None  # NHWC memory format; None turns it on for CUDA only
    compile: bool = False  # wrap the model in torch.compile
    progress: bool = True  # show tqdm progress bars
    name: str = ""  # label for tables and plots; empty derives it, e.g. "VGG_38 BN"

    def __post_init__(self) -> None:
        validate(self, source="ExperimentConfig")

    @property
    def label(self) -> str:
        """Display name, e.g. ``VGG_38 BN``; the ``name`` field when set."""
        from labkit.networks import model_name

        return self.name or model_name(self.num_blocks_per_stage, self.num_stages, self.bn, self.residual)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "ExperimentConfig":
        """Build a config from plain values, rejecting unknown keys and wrong types.

        Raises:
            ConfigError: naming ``source``, the key and the expected type.
        """
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown key {unknown[0]!r}; valid keys are {', '.join(sorted(known))}"
            )
        converted = {key: coerce(source, key, value, _field_types(cls)[key]) for key, value in values.items()}
        config = cls.__new__(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            setattr(config, f.name, converted.get(f.name, default))
        validate(config, source)
        return config

    def replace(self, **changes: Any) -> "ExperimentConfig":
        """Return a copy with ``changes`` applied and validated."""
        return type(self).from_dict({**self.to_dict(), **changes}, source="replace()")


class ConfigError(ValueError):
    """An invalid setting, with the place it came from."""


_POSITIVE = ("lr", "epochs", "batch_size", "eval_batch_size", "grad_every", "log_every", "num_filters",
             "num_classes", "synthetic_train_size", "synthetic_test_size")
_NON_NEGATIVE = ("weight_decay", "eta_min", "num_blocks_per_stage", "num_stages", "seed")
DATA_SOURCES = ("cifar100", "synthetic")


def validate(config: Any, source: str) -> None:
    """Check types and ranges of every field of a config dataclass."""
    types_ = _field_types(type(config))
    for name, expected in types_.items():
        coerce(source, name, getattr(config, name), expected)
    for name, value in vars(config).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{source}: {name} must be a finite number, got {value!r}")
    for name in _POSITIVE:
        if hasattr(config, name) and not getattr(config, name) > 0:
            raise ConfigError(f"{source}: {name} must be > 0, got {getattr(config, name)!r}")
    for name in _NON_NEGATIVE:
        if hasattr(config, name) and getattr(config, name) < 0:
            raise ConfigError(f"{source}: {name} must be >= 0, got {getattr(config, name)!r}")
    if getattr(config, "data", DATA_SOURCES[0]) not in DATA_SOURCES:
        raise ConfigError(f"{source}: data must be one of {', '.join(DATA_SOURCES)}, got {config.data!r}")
    device = getattr(config, "device", "auto")
    if device != "auto":
        try:
            torch.device(device)
        except RuntimeError:
            raise ConfigError(
                f"{source}: device must be 'auto' or a torch device such as 'cpu', 'cuda' or 'cuda:1', got {device!r}"
            ) from None


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _type_name(expected: Any) -> str:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(expected))
    if expected is type(None):
        return "null"
    if typing.get_origin(expected) is list:
        return f"list of {_type_name(typing.get_args(expected)[0])}"
    return {int: "whole number", float: "number", bool: "boolean (true or false)", str: "string"}.get(expected, str(expected))


def coerce(source: str, key: str, value: Any, expected: Any) -> Any:
    """Return ``value`` as type ``expected``, or raise ConfigError naming the key.

    Whole numbers are accepted where a float is expected; booleans are never
    accepted as numbers, and floats are never truncated to whole numbers.
    """
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        for option in typing.get_args(expected):
            try:
                return coerce(source, key, value, option)
            except ConfigError:
                continue
    elif expected is type(None):
        if value is None:
            return None
    elif typing.get_origin(expected) is list:
        if isinstance(value, (list, tuple)):
            (item_type,) = typing.get_args(expected)
            return [coerce(source, f"{key}[{i}]", item, item_type) for i, item in enumerate(value)]
    elif expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif expected is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, expected):
        return value
    raise ConfigError(f"{source}: {key} must be a {_type_name(expected)}, got {value!r} ({type(value).__name__})")


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float, as YAML 1.2 does.

    PyYAML implements YAML 1.1, whose float pattern needs a dot and a signed
    exponent, so ``lr: 1e-3`` would otherwise arrive as the string "1e-3".
    """


_FLOAT_12 = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Yaml12Loader.yaml_implicit_resolvers = {
    key: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file with YAML 1.2 number rules.

    Raises:
        ConfigError: when the file is missing or is not valid YAML.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    try:
        return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None

