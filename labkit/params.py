"""Params files: one YAML file per experiment, naming its notebook and its settings.

A params file is a flat mapping. ``notebook`` names the notebook that runs
the experiment; ``compare`` lists other params files (by stem) whose runs
the notebook shows next to this one; ``out`` is the folder that contains
the run folders. Every other key is an ``ExperimentConfig`` field, or ``depth``
(8 for VGG_08, 38 for VGG_38) in place of ``num_blocks_per_stage``. A
profile (``params/profiles/<name>.yaml``) overrides settings of every
experiment, e.g. to run the whole lab on synthetic data.

Relative paths in a file (``out``, ``data_dir``) are relative to the project
folder, the parent of the ``params/`` folder that holds the file, so a run
started from the command line and one started from ``notebooks/`` in
JupyterLab use the same folders.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.config import ConfigError, ExperimentConfig, coerce, load_yaml

logger = logging.getLogger(__name__)

NOTEBOOKS = ("01_diagnose", "02_normalize", "03_residual", "04_compare")
COMPARE_NOTEBOOK = "04_compare"  # trains nothing of its own; reads every run folder
PROFILES = "profiles"
SUFFIX = ".yaml"
DEFAULT_OUT = "results"
# Keys a params file may hold besides ExperimentConfig fields, with their types.
NOTEBOOK_KEYS: dict[str, Any] = {"notebook": str, "compare": list[str], "out": str}
# Keys a profile may hold besides ExperimentConfig fields.
PROFILE_KEYS: dict[str, Any] = {"out": str}
DEPTH = "depth"
_PATH_FIELDS = ("data_dir",)


@dataclass(frozen=True)
class Experiment:
    """One params file, validated and resolved: what its notebook runs and where the results go."""

    name: str  # the params file's stem; names the run folder
    notebook: str
    config: ExperimentConfig | None  # None for the compare notebook, which trains nothing
    compare: tuple[str, ...]
    out: Path  # folder of run folders
    source: Path  # the params file
    profile: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # the config keys set by the file and the profile
    data_dir: Path | None = None  # the data folder given in place of the file's, passed on to compared experiments

    @property
    def run_dir(self) -> Path:
        """This experiment's run folder, ``<out>/<name>``."""
        return self.out / self.name

    @property
    def params_dir(self) -> Path:
        return self.source.parent

    def to_dict(self) -> dict[str, Any]:
        """Return the resolved settings as a params mapping, as written to a run folder's ``params.yaml``."""
        values: dict[str, Any] = {"notebook": self.notebook}
        if self.compare:
            values["compare"] = list(self.compare)
        values["out"] = str(self.out)
        values.update(self.settings)
        return values


def project_dir(path: str | Path) -> Path:
    """Return the folder that relative paths in the params file at ``path`` are relative to.

    That is the parent of the nearest enclosing folder named ``params``, or
    the file's own folder when it lies outside any ``params`` folder.
    """
    path = Path(path).resolve()
    for folder in path.parents:
        if folder.name == "params":
            return folder.parent
    return path.parent


def read_mapping(path: str | Path, what: str = "params file") -> dict[str, Any]:
    """Read a YAML file that must hold a mapping of settings.

    Raises:
        ConfigError: the file is missing, empty or invalid YAML, or its top level is a list or scalar.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; expected a {what} (.yaml)")
    values = load_yaml(path)
    if values is None:
        raise ConfigError(f"{path}: the file is empty; expected a mapping of settings such as 'notebook: 01_diagnose'")
    if not isinstance(values, dict):
        raise ConfigError(
            f"{path}: the top level is a {_yaml_kind(values)}; expected a mapping of settings (key: value lines)"
        )
    for key in values:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: key {key!r} is a {_yaml_kind(key)}; expected a setting name")
    return values


def _yaml_kind(value: Any) -> str:
    return {list: "list", dict: "mapping", str: "string", bool: "boolean", int: "whole number",
            float: "number"}.get(type(value), type(value).__name__)


def _check_keys(path: Path, values: dict[str, Any], allowed: list[str]) -> None:
    for key in values:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{path}: unknown key {key!r}; {hint}valid keys are {', '.join(sorted(allowed))}")


def depth_to_blocks(path: Path, depth: Any, num_stages: int) -> int:
    """Return the processing blocks per stage of a network with ``depth`` weight layers.

    Raises:
        ConfigError: ``depth`` is not a whole number or no network of ``num_stages`` stages has it.
    """
    coerce(str(path), DEPTH, depth, int)
    blocks, remainder = divmod(depth - 2 - 2 * num_stages, 2 * num_stages)
    if blocks < 0 or remainder:
        smallest = 2 + 2 * num_stages
        raise ConfigError(
            f"{path}: depth must be {smallest} + {2 * num_stages}k weight layers for {num_stages} stages "
            f"({', '.join(str(smallest + 2 * num_stages * k) for k in range(6))}, ...), got {depth}"
        )
    return blocks


_CONFIG_FIELDS = [f.name for f in dataclasses.fields(ExperimentConfig)]
_SETTING_KEYS = [*_CONFIG_FIELDS, DEPTH]


def _resolve_paths(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Make relative path settings absolute against the file's project folder."""
    resolved = dict(settings)
    for key in _PATH_FIELDS:
        if key in resolved and isinstance(resolved[key], str) and resolved[key]:
            resolved[key] = str(project_dir(path) / Path(resolved[key]).expanduser())
    return resolved


def read_settings(path: Path, values: dict[str, Any]) -> dict[str, Any]:
    """Return the ExperimentConfig settings a file sets, validated, with ``depth`` turned into blocks per stage.

    Raises:
        ConfigError: naming the file, the key and the expected type or range.
    """
    settings = {key: value for key, value in values.items() if key in _CONFIG_FIELDS}
    if DEPTH in values:
        if "num_blocks_per_stage" in values:
            raise ConfigError(f"{path}: set depth or num_blocks_per_stage, not both")
        num_stages = coerce(str(path), "num_stages", settings.get("num_stages", ExperimentConfig.num_stages), int)
        settings["num_blocks_per_stage"] = depth_to_blocks(path, values[DEPTH], num_stages)
    # Validating the file's own keys here names this file, not a merged source, in the error.
    ExperimentConfig.from_dict(settings, source=str(path))
    return _resolve_paths(path, settings)


def _notebook(path: Path, values: dict[str, Any]) -> str:
    if "notebook" not in values:
        raise ConfigError(f"{path}: missing key 'notebook'; expected one of {', '.join(NOTEBOOKS)}")
    notebook = coerce(str(path), "notebook", values["notebook"], str)
    if notebook.endswith(".ipynb"):
        notebook = notebook[: -len(".ipynb")]
    if notebook not in NOTEBOOKS:
        close = difflib.get_close_matches(notebook, NOTEBOOKS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"{path}: notebook: unknown notebook {notebook!r}; {hint}expected one of {', '.join(NOTEBOOKS)}")
    return notebook


def _compare(path: Path, values: dict[str, Any]) -> tuple[str, ...]:
    names = coerce(str(path), "compare", values.get("compare", []), list[str])
    for name in names:
        if name == path.stem:
            raise ConfigError(f"{path}: compare: {name!r} is this file itself; list other params files")
        if not (path.parent / f"{name}{SUFFIX}").is_file():
            raise ConfigError(
                f"{path}: compare: no params file {name}{SUFFIX} in {path.parent}; "
                f"expected one of {', '.join(available(path.parent)) or '(none)'}"
            )
    return tuple(names)


def available(params_dir: str | Path) -> list[str]:
    """Return the stems of the params files in ``params_dir``, sorted."""
    return sorted(p.stem for p in Path(params_dir).glob(f"*{SUFFIX}"))


def find_params(name: str | Path, params_dir: str | Path) -> Path:
    """Return the params file that ``name`` names: a path to a file, or a stem in ``params_dir``.

    Raises:
        ConfigError: no such file, listing the available stems.
    """
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") or candidate.parent != Path("."):
        if not candidate.is_file():
            raise ConfigError(f"{candidate}: params file not found")
        return candidate
    path = Path(params_dir) / f"{name}{SUFFIX}"
    if not path.is_file():
        raise ConfigError(
            f"unknown experiment {str(name)!r}: no {path}; expected a params file path or one of "
            f"{', '.join(available(params_dir)) or '(none)'}"
        )
    return path


def find_profile(profile: str | Path, params_dir: str | Path) -> Path:
    """Return the profile file that ``profile`` names: a path to a file, or a name in ``<params_dir>/profiles``.

    Raises:
        ConfigError: no such profile, listing the available names.
    """
    candidate = Path(profile)
    if candidate.suffix in (".yaml", ".yml") or candidate.parent != Path("."):
        if not candidate.is_file():
            raise ConfigError(f"{candidate}: profile file not found")
        return candidate
    folder = Path(params_dir) / PROFILES
    path = folder / f"{profile}{SUFFIX}"
    if not path.is_file():
        raise ConfigError(
            f"unknown profile {str(profile)!r}: no {path}; expected a profile file path or one of "
            f"{', '.join(available(folder)) or '(none)'}"
        )
    return path


@dataclass(frozen=True)
class Profile:
    """Settings that override those of every params file, e.g. the smoke profile's tiny synthetic run."""

    source: Path
    settings: dict[str, Any]
    out: Path | None = None


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file.

    Raises:
        ConfigError: naming the file, the key and what was expected.
    """
    path = Path(path)
    values = read_mapping(path, what="profile file")
    _check_keys(path, values, [*PROFILE_KEYS, *_SETTING_KEYS])
    out = None
    if "out" in values:
        out = project_dir(path) / coerce(str(path), "out", values["out"], str)
    return Profile(source=path, settings=read_settings(path, values), out=out)


def _out_dir(path: Path, values: dict[str, Any], profile: Profile | None, out: str | Path | None) -> Path:
    """Pick the folder of run folders: ``out`` (relative to the working folder), the profile's, the file's."""
    if out:
        return Path(out).expanduser().resolve()
    if profile is not None and profile.out is not None:
        return profile.out
    return project_dir(path) / coerce(str(path), "out", values.get("out", DEFAULT_OUT), str)


def load_experiment(
    path: str | Path,
    profile: str | Path | Profile | None = None,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
) -> Experiment:
    """Read and validate a params file, apply a profile and resolve the output folder.

    Args:
        path: the params file.
        profile: a profile name (``smoke``), a profile file, or a loaded ``Profile``.
        out: folder of run folders that overrides the file's and the profile's ``out``.
        data_dir: data folder or archive that overrides the file's and the profile's ``data_dir``.

    Raises:
        ConfigError: naming the file, the key and what was expected, for an
            unknown key, a wrong type, an out-of-range value, an unknown
            notebook or compared experiment, an empty file or a top-level list.
    """
    path = Path(path)
    values = read_mapping(path)
    _check_keys(path, values, [*NOTEBOOK_KEYS, *_SETTING_KEYS])
    notebook = _notebook(path, values)
    compare = _compare(path, values)
    settings = read_settings(path, values)
    if notebook == COMPARE_NOTEBOOK and settings:
        raise ConfigError(
            f"{path}: {COMPARE_NOTEBOOK} trains nothing of its own, so it takes no experiment settings; "
            f"found {sorted(set(values) & set(_SETTING_KEYS))[0]!r}; move it to the params file of an experiment"
        )
    if profile is not None and not isinstance(profile, Profile):
        profile = load_profile(find_profile(profile, path.parent))
    config = None
    if notebook != COMPARE_NOTEBOOK:
        if profile is not None:
            settings = {**settings, **profile.settings}
        if data_dir:
            settings["data_dir"] = str(Path(data_dir).expanduser().resolve())
        source = f"{path} with profile {profile.source}" if profile is not None else str(path)
        config = ExperimentConfig.from_dict(settings, source=source)
    return Experiment(name=path.stem, notebook=notebook, config=config, compare=compare,
                      out=_out_dir(path, values, profile, out), source=path.resolve(),
                      profile=profile.source.resolve() if profile is not None else None, settings=settings,
                      data_dir=Path(data_dir).expanduser().resolve() if data_dir else None)


def load_compared(experiment: Experiment, data_dir: str | Path | None = None) -> list[Experiment]:
    """Load the experiments that ``experiment`` compares with, with its profile and output folder.

    ``data_dir`` defaults to the one ``experiment`` was loaded with, when that overrode its file's.
    """
    profile = load_profile(experiment.profile) if experiment.profile is not None else None
    return [load_experiment(experiment.params_dir / f"{name}{SUFFIX}", profile=profile, out=experiment.out,
                            data_dir=data_dir or experiment.data_dir)
            for name in experiment.compare]


def default_set(params_dir: str | Path) -> list[Path]:
    """Return every params file in ``params_dir`` in run order: by notebook, then name, comparisons last.

    Raises:
        ConfigError: the folder contains no params file, or one of them is invalid.
    """
    paths = sorted(Path(params_dir).glob(f"*{SUFFIX}"))
    if not paths:
        raise ConfigError(f"{params_dir}: no params files (*{SUFFIX}) found")
    order = {path: NOTEBOOKS.index(_notebook(path, read_mapping(path))) for path in paths}
    return sorted(paths, key=lambda path: (order[path], path.stem))
