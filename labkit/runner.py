"""Execute experiments' notebooks with papermill, each into its run folder.

``run_experiments`` validates every params file and the profile before it
starts any notebook, then executes each experiment's notebook into
``<out>/<params stem>/<notebook>.ipynb``. A notebook that fails is kept
there with its error, and the remaining experiments still run.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import yaml

from labkit import runfolder
from labkit.config import ConfigError
from labkit.params import COMPARE_NOTEBOOK, Experiment, default_set, find_params, find_profile, load_compared, load_experiment, load_profile

logger = logging.getLogger(__name__)

PARAMS_RECORD = "params.yaml"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CELL_FRAME = re.compile(r"Cell In\s*\[(?P<count>\d*)\],\s*line (?P<line>\d+)")


@dataclass
class Outcome:
    """The result of executing one experiment's notebook."""

    experiment: Experiment
    notebook: Path  # the executed notebook in the run folder
    ok: bool
    seconds: float
    error: str = ""  # the failing cell, its source line and the error; empty when ok

    def summary(self) -> str:
        """Format the outcome for the command line: status, experiment, notebook and time, then the error."""
        status = "ok" if self.ok else "FAILED"
        line = f"{status:6s} {self.experiment.name} ({self.experiment.notebook}) -> {self.notebook} in {self.seconds:.0f} s"
        return line if self.ok else f"{line}\n{self.error}"


def project_root() -> Path:
    """Return the folder holding ``labkit/``, ``notebooks/`` and ``params/`` of this checkout."""
    return Path(__file__).resolve().parent.parent


def default_params_dir() -> Path:
    """Return ``params/`` in the working folder when it exists, else the one of this checkout."""
    local = Path("params")
    return local if local.is_dir() else project_root() / "params"


def default_notebooks_dir() -> Path:
    """Return ``notebooks/`` in the working folder when it exists, else the one of this checkout."""
    local = Path("notebooks")
    return local if local.is_dir() else project_root() / "notebooks"


def plan(
    names: Sequence[str | Path] = (),
    profile: str | Path | None = None,
    out: str | Path | None = None,
    params_dir: str | Path | None = None,
    notebooks_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
) -> list[Experiment]:
    """Load and validate the experiments to run, and everything they compare with, before any runs.

    Args:
        names: params files or their stems in ``params_dir``; empty runs every params file there.
        profile: profile name or file applied to every experiment.
        out: folder of run folders, overriding the params files' ``out``.
        data_dir: data folder or CIFAR-100 archive, overriding the params files' ``data_dir``.

    Raises:
        ConfigError: an invalid params file, profile or option, naming the file, the key and what was expected.
    """
    params_dir = Path(params_dir) if params_dir is not None else default_params_dir()
    notebooks_dir = Path(notebooks_dir) if notebooks_dir is not None else default_notebooks_dir()
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out}: is a file; expected a folder for the run folders")
    paths = [find_params(name, params_dir) for name in names] if names else default_set(params_dir)
    loaded_profile = load_profile(find_profile(profile, params_dir)) if profile else None
    experiments = [load_experiment(path, profile=loaded_profile, out=out, data_dir=data_dir) for path in paths]
    for experiment in experiments:
        load_compared(experiment)
        source = notebooks_dir / f"{experiment.notebook}.ipynb"
        if not source.is_file():
            raise ConfigError(f"{experiment.source}: notebook {experiment.notebook}: {source} not found")
    return experiments


def failure_summary(error: Exception) -> str:
    """Describe a failed notebook cell: its number, the source line that raised, and the error."""
    count = getattr(error, "exec_count", None)
    source = getattr(error, "source", "") or ""
    ename, evalue = getattr(error, "ename", type(error).__name__), getattr(error, "evalue", str(error))
    traceback = _ANSI.sub("", "\n".join(getattr(error, "traceback", None) or []))
    lines = source.splitlines()
    number = None
    for match in _CELL_FRAME.finditer(traceback):
        if count is None or match["count"] in ("", str(count)):
            number = int(match["line"])
    if number and number <= len(lines):
        line = lines[number - 1].strip()
    else:
        line = lines[-1].strip() if lines else ""
    where = f"cell In [{count}]" if count is not None else "a cell"
    at_line = f", line {number}" if number else ""
    return f"  {where}{at_line}: {line}\n  {ename}: {evalue}"


def _write_params_record(experiment: Experiment) -> None:
    header = f"# Settings of this run, resolved from {experiment.source}"
    if experiment.profile is not None:
        header += f" with profile {experiment.profile}"
    text = header + "\n" + yaml.safe_dump(experiment.to_dict(), sort_keys=False)
    runfolder.write_text(experiment.run_dir / PARAMS_RECORD, text)


def notebook_parameters(experiment: Experiment, resume: bool = False) -> dict[str, str | bool]:
    """Return the values papermill injects into a notebook's parameters cell to run ``experiment``.

    ``overwrite`` stays False: ``run_experiments`` clears the run folders it
    should overwrite beforehand, so that a notebook retrains nothing that an
    earlier notebook of the same set has just trained.
    """
    return {"params": str(experiment.source), "profile": str(experiment.profile or ""), "out": str(experiment.out),
            "data_dir": str(experiment.data_dir or ""), "resume": resume, "overwrite": False}


def run_experiment(
    experiment: Experiment,
    notebooks_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    kernel_name: str | None = None,
) -> Outcome:
    """Execute the experiment's notebook with papermill into its run folder.

    The run folder gets the executed notebook, ``params.yaml`` with the
    resolved settings, and what the notebook writes: metrics, gradient
    records, checkpoints and ``figures/``. A failing notebook is kept there
    with its error and returned as a failed ``Outcome``; it does not raise.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebooks_dir = Path(notebooks_dir) if notebooks_dir is not None else default_notebooks_dir()
    source = (notebooks_dir / f"{experiment.notebook}.ipynb").resolve()
    target = experiment.run_dir / f"{experiment.notebook}.ipynb"
    experiment.run_dir.mkdir(parents=True, exist_ok=True)
    _write_params_record(experiment)
    parameters = notebook_parameters(experiment, resume)
    logger.info("running %s for %s into %s", experiment.notebook, experiment.name, target)
    started = time.perf_counter()
    try:
        papermill.execute_notebook(str(source), str(target), parameters=parameters, cwd=str(source.parent),
                                   kernel_name=kernel_name, progress_bar=progress, log_output=False)
    except PapermillExecutionError as error:
        return Outcome(experiment, target, ok=False, seconds=time.perf_counter() - started, error=failure_summary(error))
    return Outcome(experiment, target, ok=True, seconds=time.perf_counter() - started)


def clear_runs(experiments: Sequence[Experiment]) -> None:
    """Remove the training outputs of each experiment's run folder, so that its notebook trains it again."""
    for experiment in experiments:
        if experiment.config is None or not experiment.run_dir.is_dir():
            continue
        with runfolder.RunLock(experiment.run_dir):
            runfolder.prepare_folder(experiment.run_dir, experiment.config.to_dict(), resume=False, overwrite=True)


def run_experiments(
    names: Sequence[str | Path] = (),
    profile: str | Path | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    params_dir: str | Path | None = None,
    notebooks_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    progress: bool = False,
    kernel_name: str | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Validate the experiments, then execute each one's notebook in order; return one ``Outcome`` each.

    Args:
        names: params files or their stems; empty runs every params file in
            ``params_dir``, the comparison notebook last.
        resume: continue interrupted runs from their latest checkpoints.
        overwrite: retrain the named experiments even where finished runs exist.
        on_outcome: called with each experiment's outcome as soon as its notebook ends.

    Raises:
        ConfigError: before anything runs, for any invalid params file, profile or option.
    """
    experiments = plan(names, profile=profile, out=out, params_dir=params_dir, notebooks_dir=notebooks_dir,
                       data_dir=data_dir)
    if overwrite:
        clear_runs(experiments)
    outcomes = []
    for experiment in experiments:
        outcome = run_experiment(experiment, notebooks_dir, resume=resume, progress=progress, kernel_name=kernel_name)
        if on_outcome is not None:
            on_outcome(outcome)
        outcomes.append(outcome)
    return outcomes


def add_run_command(subparsers) -> None:
    """Register ``labkit run`` on an argparse subparsers object."""
    import argparse

    parser = subparsers.add_parser(
        "run", help="execute experiments' notebooks into run folders",
        description="Execute each experiment's notebook with papermill into <out>/<params stem>/. With no "
                    "PARAMS, run every params file in the params folder, the comparison notebook last. Every "
                    "params file and option is validated before the first notebook starts.")
    parser.add_argument("params", nargs="*", metavar="PARAMS",
                        help="params file, or its stem in the params folder (e.g. vgg38)")
    parser.add_argument("--profile", help="profile applied to every experiment: a name in <params>/profiles "
                                          "(e.g. smoke) or a YAML file")
    parser.add_argument("--out", type=Path, help="folder of run folders (default: each params file's out, "
                                                 "results/ unless set)")
    parser.add_argument("--data-dir", type=Path, help="data folder or cifar-100-python.tar.gz archive (default: "
                                                      "each params file's data_dir, data/ unless set)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue interrupted runs from their latest checkpoints")
    group.add_argument("--overwrite", action="store_true",
                       help="retrain the named experiments even where their run folders hold finished runs")
    parser.add_argument("--params-dir", type=Path, help="folder of params files (default: ./params, else the checkout's)")
    parser.add_argument("--notebooks-dir", type=Path, help="folder of the notebooks (default: ./notebooks, else the checkout's)")
    parser.add_argument("--kernel", help="Jupyter kernel name (default: the notebook's, python3)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show papermill's per-cell progress bar (default: when stderr is a terminal)")
    parser.set_defaults(handler=_run_command)


def _print_outcome(outcome: Outcome) -> None:
    import sys

    print(outcome.summary(), file=sys.stdout if outcome.ok else sys.stderr, flush=True)


def _print_results(experiment: Experiment) -> None:
    """Print the comparison notebook's results table and list the figures it saved."""
    from labkit.lab import FIGURES, TABLE_STEM

    table = experiment.run_dir / f"{TABLE_STEM}.md"
    if table.is_file():
        print(f"\nResults ({table.with_suffix('.csv')}, LaTeX in {table.with_suffix('.tex')}):\n")
        print(table.read_text())
    figures = sorted((experiment.run_dir / FIGURES).glob("*.pdf"))
    if figures:
        print(f"Figures (PDF and PNG) in {experiment.run_dir / FIGURES}: " + ", ".join(path.stem for path in figures))


def _run_command(args) -> int:
    import sys

    if not args.verbose:
        # papermill logs every notebook's paths and kernel at INFO, which the outcome line repeats.
        logging.getLogger("papermill").setLevel(logging.WARNING)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    outcomes = run_experiments(args.params, profile=args.profile, out=args.out, resume=args.resume,
                               overwrite=args.overwrite, params_dir=args.params_dir, notebooks_dir=args.notebooks_dir,
                               data_dir=args.data_dir, progress=progress, kernel_name=args.kernel,
                               on_outcome=_print_outcome)
    for outcome in outcomes:
        if outcome.ok and outcome.experiment.notebook == COMPARE_NOTEBOOK:
            _print_results(outcome.experiment)
    failed = [outcome for outcome in outcomes if not outcome.ok]
    if failed:
        print(f"labkit run: {len(failed)} of {len(outcomes)} notebooks failed; each is kept with its error in its "
              "run folder", file=sys.stderr)
        return 1
    return 0
