"""The ``diagnose`` and ``table`` commands: verdicts and results tables of run folders."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def collect_runs(paths: list[Path]) -> list:
    """Load each path as a run folder, or every run below it when it is a folder of runs.

    Raises:
        labkit.runs.RunNotFoundError: a path is missing or contains no run.
    """
    from labkit.runs import RunNotFoundError, find_runs, load_run

    runs = []
    for path in paths:
        if not path.is_dir():
            raise RunNotFoundError(f"{path}: no such folder; pass a run folder or a folder of runs")
        try:
            runs.append(load_run(path))
        except RunNotFoundError:
            found = find_runs(path)
            if not found:
                raise RunNotFoundError(
                    f"no run found in {path}: neither it nor any folder below it contains summary.csv "
                    "(labkit run folders and course folders with result_outputs/ both have one)"
                ) from None
            runs.extend(found)
    return runs


def _load_or_report(command: str, paths: list[Path]) -> list | None:
    """Return the runs, or print why they could not be read and return None."""
    try:
        return collect_runs(paths)
    except (ValueError, OSError) as error:
        # FileNotFoundError is an OSError; a malformed CSV raises ValueError (pandas' ParserError is one).
        print(f"labkit {command}: error: {error}", file=sys.stderr)
        return None


def add_diagnose(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "diagnose", help="state why each run trains or not, with the numbers behind the verdict",
        description="Print each run's verdict (vanishing gradients, stuck at chance, trains normally, ...) with "
                    "the gradient attenuation, the loss against chance level and the depth where activations "
                    "collapse. Works on labkit run folders and the course's result folders; a folder of runs "
                    "diagnoses every run below it.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="RUN_DIR", help="run folder or folder of runs")
    parser.add_argument("--json", action="store_true", help="print the diagnoses as a JSON list instead of text")
    parser.add_argument("--figures", type=Path, metavar="DIR",
                        help="also save each run's diagnostic figures here as PDF and PNG")
    parser.set_defaults(handler=_diagnose)


def _diagnose(args: argparse.Namespace) -> int:
    from labkit.diagnostics import diagnose_run

    runs = _load_or_report("diagnose", args.paths)
    if runs is None:
        return 1
    diagnoses = []
    for run in runs:
        try:
            diagnoses.append((run, diagnose_run(run)))
        except (ValueError, KeyError) as error:
            print(f"labkit diagnose: error: {run.path}: cannot diagnose: {error}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps([{"path": str(run.path), **diagnosis.to_dict()} for run, diagnosis in diagnoses], indent=2))
    else:
        print("\n\n".join(f"{run.path}\n{diagnosis.text()}" for run, diagnosis in diagnoses))
    if args.figures is not None:
        _write_figures(runs, args.figures)
    return 0


def _write_figures(runs: list, folder: Path) -> None:
    import logging

    import matplotlib.pyplot as plt

    from labkit.diagnostic_plots import plot_grad_heatmaps, write_run_figures
    from labkit.plots import save_figure

    # Matplotlib's PDF backend subsets fonts through fontTools, which logs every table at INFO.
    logging.getLogger("fontTools").setLevel(logging.WARNING)
    written = []
    for index, run in enumerate(runs, start=1):
        written.extend(write_run_figures(run, folder / f"{index:02d}-{run.path.name}"))
    with_grads = [run for run in runs if run.grads is not None and not run.grads.empty]
    if len(with_grads) > 1:
        fig = plot_grad_heatmaps(with_grads, title="Gradient flow on one colour scale")
        written.extend(save_figure(fig, folder / "grad-heatmaps"))
        plt.close(fig)
    print(f"\nwrote {len(written)} figure files to {folder}")


def add_table(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "table", help="print the results table of runs and export it as LaTeX or Markdown",
        description="Print the last-epoch train and validation metrics and the test accuracy of each run. "
                    "Accuracies are in percent. A folder of runs adds every run below it.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="RUN_DIR", help="run folder or folder of runs")
    parser.add_argument("--latex", type=Path, metavar="FILE", help="write a LaTeX booktabs table here")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="write a Markdown table here")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="write the unformatted numbers here")
    parser.add_argument("--seeds", action="store_true",
                        help="pool runs that differ only in seed into one row of mean ± standard deviation")
    parser.set_defaults(handler=_table)


def _table(args: argparse.Namespace) -> int:
    from labkit.report import results_table, seed_table, to_latex, to_markdown
    from labkit.runfolder import write_text

    runs = _load_or_report("table", args.paths)
    if runs is None:
        return 1
    table = seed_table(runs) if args.seeds else results_table(runs)
    print(to_markdown(table))
    exports = [(args.latex, lambda: to_latex(table)), (args.markdown, lambda: to_markdown(table) + "\n"),
               (args.csv, lambda: table.to_csv(index=False))]
    for path, render in exports:
        if path is None:
            continue
        try:
            write_text(path, render())
        except OSError as error:
            print(f"labkit table: error: cannot write {path}: {error}", file=sys.stderr)
            return 1
        print(f"wrote {path}")
    return 0
