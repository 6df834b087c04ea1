"""Results tables: rows and numbers, LaTeX and Markdown exports, seed pooling and the table command."""

import math
from pathlib import Path

import pandas as pd
import pytest

from labkit import ExperimentConfig
from labkit.cli import main
from labkit.data import from_arrays
from labkit.diagnostic_plots import plot_seed_band
from labkit.diagnostics import fit_seeds
from labkit.plots import save_figure
from labkit.report import (
    TABLE_COLUMNS, group_seeds, results_table, seed_curves, seed_table, to_latex, to_markdown, write_table,
)
from labkit.runs import Run, find_runs, load_run, reference_root


@pytest.fixture(scope="module")
def reference_runs():
    return find_runs(reference_root())


def _course_folder(root, name, val_acc, test_acc):
    """Write a two-epoch course result folder whose last validation accuracy is ``val_acc``."""
    folder = root / name / "result_outputs"
    folder.mkdir(parents=True)
    pd.DataFrame({"train_acc": [0.1, 0.5], "train_loss": [4.0, 2.0], "val_acc": [0.1, val_acc],
                  "val_loss": [4.0, 2.5]}).to_csv(folder / "summary.csv", index=False)
    pd.DataFrame({"test_acc": [test_acc], "test_loss": [2.4]}).to_csv(folder / "test_summary.csv", index=False)
    return root / name


@pytest.fixture
def two_seeds(tmp_path):
    """Two course folders of one experiment with validation accuracies 40% and 50%."""
    return [load_run(_course_folder(tmp_path / "seed0", "VGG_08", 0.40, 0.41)),
            load_run(_course_folder(tmp_path / "seed1", "VGG_08", 0.50, 0.47))]


def test_results_table_of_course_runs(reference_runs):
    table = results_table(reference_runs)
    assert list(table.columns) == TABLE_COLUMNS
    assert table["Model"].tolist() == ["VGG_08", "VGG_38"]
    assert table["# Params"].tolist() == [59716, 336196]
    assert table["Test acc"].tolist() == pytest.approx([49.95, 1.00])
    assert table["Val loss"].tolist() == pytest.approx([1.9649359, 4.6068726], rel=1e-6)
    assert table["LR"].isna().all()  # course folders record no learning rate


def test_latex_rows_and_numbers(reference_runs):
    latex = to_latex(results_table(reference_runs), caption="Course runs", label="tab:course")
    lines = latex.splitlines()
    assert r"\toprule" in lines
    assert r"\midrule" in lines
    assert r"\bottomrule" in lines
    assert r"\begin{tabular}{lrrrrrrr}" in lines
    assert r"\caption{Course runs}" in lines
    assert r"Model & LR & \# Params & Train loss & Train acc & Val loss & Val acc & Test acc \\" in lines
    assert r"VGG\_08 &  & 59,716 & 1.604 & 55.24 & 1.965 & 48.48 & 49.95 \\" in lines
    assert r"VGG\_38 &  & 336,196 & 4.605 & 0.93 & 4.607 & 0.64 & 1.00 \\" in lines


def test_markdown_rows(reference_runs):
    lines = to_markdown(results_table(reference_runs)).splitlines()
    assert len(lines) == 4
    assert lines[0].split("|")[1].strip() == "Model"
    cells = [cell.strip() for cell in lines[2].split("|")[1:-1]]
    assert cells == ["VGG_08", "", "59,716", "1.604", "55.24", "1.965", "48.48", "49.95"]


def test_seed_table_mean_and_std(two_seeds):
    table = seed_table(two_seeds)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["Seeds"] == 2
    assert row["Val acc"] == pytest.approx(45.0)
    assert row["Val acc std"] == pytest.approx(math.sqrt(50.0))  # sample std of 40 and 50
    assert row["Test acc"] == pytest.approx(44.0)
    assert row["Train loss std"] == pytest.approx(0.0)

    latex = to_latex(table)
    assert r"45.00 $\pm$ 7.07" in latex
    assert r"44.00 $\pm$ 4.24" in latex
    assert "std" not in latex
    assert "45.00 ± 7.07" in to_markdown(table)


def test_seed_table_single_run_has_no_spread(reference_runs):
    table = seed_table(reference_runs)
    assert table["Seeds"].tolist() == [1, 1]
    assert table["Val acc std"].isna().all()
    assert "±" not in to_markdown(table)


def test_seed_curves(two_seeds):
    curves = seed_curves(two_seeds, "val_acc")
    assert curves["epoch"].tolist() == [1, 2]
    assert curves["mean"].tolist() == pytest.approx([0.1, 0.45])
    assert curves["std"].tolist() == pytest.approx([0.0, math.sqrt(0.005)])
    assert curves["seeds"].tolist() == [2, 2]
    with pytest.raises(ValueError, match="unknown metric"):
        seed_curves(two_seeds, "accuracy")


def test_group_seeds_keeps_experiments_apart(two_seeds, reference_runs):
    # Course folders record no settings, so their name alone identifies the experiment.
    groups = group_seeds([*two_seeds, *reference_runs])
    assert [len(group) for group in groups] == [3, 1]

    summary = two_seeds[0].summary
    labkit_run = lambda seed, lr, device: Run(path=Path(f"run{seed}"), name="VGG_08", kind="labkit", summary=summary,
                                              record={"config": {"seed": seed, "lr": lr, "device": device}})
    groups = group_seeds([labkit_run(0, 1e-3, "cuda"), labkit_run(1, 1e-3, "cpu"), labkit_run(2, 1e-2, "cpu")])
    assert [[run.config["seed"] for run in group] for group in groups] == [[0, 1], [2]]


def test_write_table(reference_runs, tmp_path):
    paths = write_table(results_table(reference_runs), tmp_path / "results")
    assert [path.name for path in paths] == ["results.csv", "results.tex", "results.md"]
    assert pd.read_csv(paths[0])["Model"].tolist() == ["VGG_08", "VGG_38"]
    assert r"\bottomrule" in paths[1].read_text()


def test_fit_seeds_pool_into_table_and_band(synthetic_arrays, tmp_path):
    arrays = from_arrays(synthetic_arrays.train_images[:200], synthetic_arrays.train_labels[:200],
                         synthetic_arrays.test_images[:50], synthetic_arrays.test_labels[:50],
                         synthetic_arrays.class_names, source="synthetic")
    config = ExperimentConfig(num_blocks_per_stage=0, num_stages=1, num_filters=8, epochs=2, batch_size=50,
                              progress=False, data="synthetic")
    results = fit_seeds(config, [0, 1], tmp_path, data=arrays)
    assert [result.config.seed for result in results] == [0, 1]
    assert results[0].history != results[1].history

    runs = find_runs(tmp_path)
    table = seed_table(runs)
    assert table["Model"].tolist() == ["VGG_04 (synthetic data)"]
    assert table["Seeds"].tolist() == [2]
    assert table["Val acc std"].notna().all()
    paths = save_figure(plot_seed_band(runs, "val_loss"), tmp_path / "band")
    assert all(path.stat().st_size > 0 for path in paths)
    with pytest.raises(ValueError, match="distinct"):
        fit_seeds(config, [0, 0], tmp_path / "again", data=arrays)


# The table command.

def test_table_command_writes_exports(tmp_path, capsys):
    latex, markdown = tmp_path / "out" / "table.tex", tmp_path / "table.md"
    status = main(["table", str(reference_root()), "--latex", str(latex), "--markdown", str(markdown)])
    out = capsys.readouterr().out
    assert status == 0
    assert "| VGG_38" in out
    assert r"VGG\_38 &  & 336,196" in latex.read_text()
    assert markdown.read_text().splitlines()[2].startswith("| VGG_08")


def test_table_command_pools_seeds(two_seeds, capsys):
    assert main(["table", str(two_seeds[0].path), str(two_seeds[1].path), "--seeds"]) == 0
    assert "45.00 ± 7.07" in capsys.readouterr().out


def test_table_command_bad_paths(tmp_path, capsys):
    assert main(["table", str(tmp_path / "missing")]) == 1
    assert "no such folder" in capsys.readouterr().err
    assert main(["table", str(reference_root()), "--latex", str(tmp_path)]) == 1
    assert "cannot write" in capsys.readouterr().err
