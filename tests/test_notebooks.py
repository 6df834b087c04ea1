"""The lab's notebooks: their layout, and expected copies for nbval that cannot drift from them."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from labkit.params import NOTEBOOKS, load_experiment
from labkit.runner import notebook_parameters

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "notebooks"
EXPECTED = ROOT / "tests" / "notebooks"


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def tagged(notebook: nbformat.NotebookNode, tag: str) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if tag in cell.metadata.get("tags", [])]


def parameter_names(cell: nbformat.NotebookNode) -> list[str]:
    """Return the names the parameters cell assigns, checking that each is an annotated literal."""
    names = []
    for statement in ast.parse(cell.source).body:
        assert isinstance(statement, ast.AnnAssign), f"not an annotated assignment: {ast.unparse(statement)}"
        ast.literal_eval(statement.value)
        names.append(statement.target.id)
    return names


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_source_notebook_has_no_outputs(name: str):
    for cell in read(SOURCES / f"{name}.ipynb").cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], cell.source
            assert cell.execution_count is None, cell.source


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_source_notebook_layout(name: str):
    notebook = read(SOURCES / f"{name}.ipynb")
    cells = notebook.cells
    assert cells[0].cell_type == "markdown"
    assert cells[0].source.startswith(f"# {name[:2]} ")
    (parameters,) = tagged(notebook, "parameters")
    for line in parameters.source.splitlines():
        assert "  # " in line, f"parameter without a comment: {line}"
    declared = parameter_names(parameters)
    experiment = load_experiment(ROOT / "params" / "vgg38.yaml")
    assert set(notebook_parameters(experiment)) <= set(declared)
    # Only the optional install cell and the imports may come before the parameters cell.
    code = [cell for cell in cells if cell.cell_type == "code"]
    assert code.index(parameters) == 2
    assert "import" in code[1].source
    for before, cell in zip(cells, cells[1:]):
        if cell.cell_type == "code":
            assert before.cell_type == "markdown", f"code cell without a markdown cell before it: {cell.source}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_expected_copy_matches_source(name: str):
    source, expected = read(SOURCES / f"{name}.ipynb"), read(EXPECTED / f"{name}.ipynb")
    injected = tagged(expected, "injected-parameters")
    assert len(injected) == 1, "regenerate the expected notebooks with make expected-notebooks"
    copied = [cell for cell in expected.cells if cell is not injected[0]]
    assert [cell.cell_type for cell in copied] == [cell.cell_type for cell in source.cells]
    for ours, theirs in zip(source.cells, copied):
        assert ours.source == theirs.source, "notebooks/ changed: run make expected-notebooks"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_expected_copy_uses_smoke_profile(name: str):
    (injected,) = tagged(read(EXPECTED / f"{name}.ipynb"), "injected-parameters")
    assert 'profile = "smoke"' in injected.source
    assert 'out = "$LABKIT_NBVAL_RESULTS"' in injected.source
    executed = [cell for cell in read(EXPECTED / f"{name}.ipynb").cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in executed)
    assert not any(output.output_type == "error" for cell in executed for output in cell.outputs)
