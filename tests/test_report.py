"""Tables, figures and prose never pool unlike runs: only the seed replicates."""
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # tests only: no display here

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from lowrank_helpers import (RunConfig, TrainResult, comparison_table, discussion,  # noqa: E402
                             load_records, make_record, plot_curves, save_record)
from lowrank_helpers.reports.answers import _per_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def fake(run: RunConfig, accuracies, results_dir) -> None:
    history = [{"epoch": e + 1, "test_accuracy": a, "test_loss": 1.0, "train_loss": 1.0,
                "seconds": 1.0} for e, a in enumerate(accuracies)]
    save_record(make_record(run, TrainResult(history=history)), results_dir)


@pytest.fixture
def mixed(tmp_path):
    """The three shipped 100-epoch LoRA r=4 records and a fresh 1-epoch run of that model."""
    for path in ROOT.glob("results/fashion_mnist-lora-r004-lora-s*.json"):
        shutil.copy(path, tmp_path)
    fake(RunConfig(method="lora", rank=4, epochs=1), [0.4], tmp_path)
    return tmp_path


def test_two_protocols_of_one_model_are_two_rows(mixed):
    table = comparison_table(load_records(mixed))
    assert list(table.model) == ["LoRA layers r=4"] * 2
    assert sorted(table.protocol) == ["epochs=1", "epochs=100"]
    rows = table.set_index("protocol")
    assert rows.loc["epochs=100", "seeds"] == 3 and rows.loc["epochs=1", "seeds"] == 1
    assert rows.loc["epochs=1", "final"] == "40.0"
    # the original's numbers stand beside the run of its own protocol only
    assert rows.loc["epochs=100", "epoch 100 (original)"] == "75.5"
    assert rows.loc["epochs=1", "epoch 100 (original)"] == "—"


def test_the_command_line_table_shows_both(mixed):
    out = subprocess.run([sys.executable, "-m", "lowrank_helpers", "table", "--results-dir",
                          str(mixed)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [l for l in out.stdout.splitlines() if "LoRA layers r=4" in l]
    assert len(lines) == 2 and any("epochs=1 " in l for l in lines)


def test_widths_and_tasks_are_part_of_the_protocol(tmp_path):
    fake(RunConfig(method="full", epochs=1), [0.5], tmp_path)
    fake(RunConfig(method="full", epochs=1, widths=(784, 64, 64, 10)), [0.6], tmp_path)
    table = comparison_table(load_records(tmp_path))
    assert sorted(table.protocol) == ["widths=784-512-512-10", "widths=784-64-64-10"]
    assert set(table.seeds) == {1}


def test_no_original_numbers_beside_another_task_or_protocol(tmp_path):
    fake(RunConfig(task="mnist", method="full", epochs=20), [0.9] * 20, tmp_path)
    table = comparison_table(load_records(tmp_path))
    assert "final − original" not in table and "epoch 100 (original)" not in table
    assert table.final.iloc[0] == "90.0"


def test_a_run_stored_twice_counts_once(tmp_path):
    for sub in ("a", "b"):
        for path in ROOT.glob("results/fashion_mnist-full-s*.json"):
            (tmp_path / sub).mkdir(exist_ok=True)
            shutil.copy(path, tmp_path / sub)
    runs = load_records([tmp_path / "a", tmp_path / "b"])
    assert len(runs) == 6
    table = comparison_table(runs)
    assert len(table) == 1 and table.seeds.iloc[0] == 3
    fig = plot_curves(runs)
    assert [l.get_label() for l in fig.axes[0].lines] == ["full-rank MLP (3 seeds)"]
    plt.close(fig)


def test_prose_that_compares_models_refuses_mixed_protocols(mixed):
    with pytest.raises(ValueError, match="differ in epochs; select one protocol"):
        discussion(load_records(mixed))


def test_curves_of_two_protocols_are_two_labelled_lines(mixed):
    fig = plot_curves(load_records(mixed))
    labels = sorted(l.get_label() for l in fig.axes[0].lines)
    assert labels == ["LoRA layers r=4 [epochs=100] (3 seeds)", "LoRA layers r=4 [epochs=1]"]
    plt.close(fig)


def test_passing_fifty_percent_says_never_where_a_seed_never_does(tmp_path):
    """Two of three seeds of rank 1 never reach 50 %: not "all pass" (pandas' max skips the
    missing epochs), but "never in 2 of 3 seeds"."""
    for seed, acc in ((0, [0.3, 0.6]), (1, [0.3, 0.4]), (2, [0.2, 0.3])):
        fake(RunConfig(method="ae", rank=1, seed=seed, epochs=2), acc, tmp_path)
        fake(RunConfig(method="ae", rank=2, seed=seed, epochs=2), [0.4, 0.7], tmp_path)
        fake(RunConfig(method="full", seed=seed, epochs=2), [0.6, 0.8], tmp_path)
    runs = load_records(tmp_path)
    m = _per_model(runs).set_index("rank")
    assert m.loc[1.0, "never50"] == 2 and m.loc[1.0, "to50_max"] != m.loc[1.0, "to50_max"]
    text = discussion(runs)
    assert ("the others pass 50% after 2–2 epochs in every seed; rank 1 never in 2 of 3 seeds "
            "(the other after 2 epochs)") in text


def test_a_subset_against_the_whole_set_is_two_protocols(tmp_path):
    """A missing value (train_subset None) differs from a number: not one protocol."""
    fake(RunConfig(method="full", epochs=1), [0.5], tmp_path)
    fake(RunConfig(method="full", epochs=1, train_subset=1024), [0.3], tmp_path)
    runs = load_records(tmp_path)
    table = comparison_table(runs)
    assert sorted(table.protocol) == ["train_subset=1024", "train_subset=None"]
    with pytest.raises(ValueError, match="differ in train_subset"):
        discussion(runs)


def test_no_records_give_empty_tables_and_figures(tmp_path):
    from lowrank_helpers import plot_final_vs, study_figures
    runs = load_records(tmp_path)
    assert runs.empty and comparison_table(runs).empty
    for fig in [plot_curves(runs), plot_final_vs(runs), *study_figures(runs, "mnist").values()]:
        assert fig.axes[0].texts[0].get_text() == "no records"
        plt.close(fig)
