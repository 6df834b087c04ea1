"""labkit: a lab for seeing why deep plain networks fail to train, and how BatchNorm and residual connections fix them."""

__version__ = "0.1.0"

from labkit.config import ConfigError, ExperimentConfig, load_yaml
from labkit.data import DataError, from_arrays, load_cifar100, load_synthetic, read_cifar100, write_synthetic_cifar100
from labkit.hooks import GradientRecorder, gradients_at
from labkit.networks import VGGNet, build_network, count_parameters, model_name, network_depth
from labkit.trainer import RunResult, TrainingDiverged, evaluate, fit, load_checkpoint, select_device

__all__ = [
    "ConfigError", "DataError", "ExperimentConfig", "GradientRecorder", "RunResult", "TrainingDiverged", "VGGNet",
    "__version__", "build_network", "count_parameters", "evaluate", "fit", "from_arrays", "gradients_at",
    "load_checkpoint", "load_cifar100", "load_synthetic", "load_yaml", "model_name", "network_depth",
    "read_cifar100", "select_device", "write_synthetic_cifar100",
]
