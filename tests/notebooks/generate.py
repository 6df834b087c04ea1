"""Regenerate the expected notebooks that nbval compares against: ``make expected-notebooks``.

``python generate.py --copy-markdown`` copies only the markdown cells from
``notebooks/`` into the expected copies, without executing anything, for a
change of wording: markdown cells have no outputs to compare.

Each notebook in ``notebooks/`` is executed with papermill and the smoke
profile, as nbval will execute it: from this folder, training into one fresh
temporary results folder shared by the four notebooks. PNG images are
dropped from the outputs, because nbval does not compare them and they
would make every regeneration a large diff. Each figure keeps its text
line, e.g. ``<Figure size 770x286 with 2 Axes>``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import nbformat
import papermill

HERE = Path(__file__).resolve().parent
NOTEBOOKS = HERE.parent.parent / "notebooks"
RESULTS_ENV = "LABKIT_NBVAL_RESULTS"
# Each notebook runs for one params file; these are the ones the regression tests use.
CASES = {"01_diagnose": "vgg38", "02_normalize": "vgg38_bn_lr1e-3", "03_residual": "vgg38_bn_rc_lr1e-3",
         "04_compare": "compare"}
# Cell and notebook metadata that papermill writes and that changes on every run.
VOLATILE = ("duration", "end_time", "start_time", "exception", "status")


def parameters(params: str) -> dict[str, str]:
    """Return the papermill parameters of an expected notebook, relative to this folder."""
    return {"params": f"../../params/{params}.yaml", "profile": "smoke", "out": f"${RESULTS_ENV}",
            "data_dir": f"${RESULTS_ENV}/data"}


def strip(notebook: nbformat.NotebookNode) -> None:
    """Drop PNG outputs and papermill's timings from an executed notebook."""
    for cell in notebook.cells:
        for key in VOLATILE:
            cell.metadata.get("papermill", {}).pop(key, None)
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            output.get("data", {}).pop("image/png", None)
    for key in (*VOLATILE, "input_path", "output_path", "environment_variables"):
        notebook.metadata.get("papermill", {}).pop(key, None)


def generate(names: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="labkit-nbval-") as results:
        os.environ[RESULTS_ENV] = results
        for name in names:
            target = HERE / f"{name}.ipynb"
            print(f"executing {name} with {CASES[name]}.yaml and the smoke profile", flush=True)
            papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(target), parameters=parameters(CASES[name]),
                                       cwd=str(HERE), kernel_name="python3", progress_bar=False)
            notebook = nbformat.read(target, as_version=4)
            strip(notebook)
            nbformat.write(notebook, target)


def copy_markdown(names: list[str]) -> None:
    """Copy the markdown cells of ``notebooks/`` into the expected copies, which must match it cell for cell."""
    for name in names:
        source = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        target = HERE / f"{name}.ipynb"
        expected = nbformat.read(target, as_version=4)
        cells = [cell for cell in expected.cells if "injected-parameters" not in cell.metadata.get("tags", [])]
        if [cell.cell_type for cell in cells] != [cell.cell_type for cell in source.cells]:
            sys.exit(f"{name}: the cells of notebooks/{name}.ipynb changed; regenerate without --copy-markdown")
        for ours, theirs in zip(source.cells, cells):
            if ours.cell_type == "markdown":
                theirs.source = ours.source
        nbformat.write(expected, target)


if __name__ == "__main__":
    markdown_only = "--copy-markdown" in sys.argv[1:]
    requested = [arg for arg in sys.argv[1:] if arg != "--copy-markdown"] or list(CASES)
    unknown = sorted(set(requested) - set(CASES))
    if unknown:
        sys.exit(f"unknown notebooks {unknown}; expected some of {', '.join(CASES)}")
    if markdown_only:
        copy_markdown(requested)
    else:
        generate(requested)
