import matplotlib

matplotlib.use("Agg")  # tests only: no display here

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from lowrank_helpers import (RunConfig, TrainResult, comparison_table, discussion, load_records,  # noqa: E402
                             make_record, plot_curves, plot_final_vs, save_record, study_figures)
from lowrank_helpers.reports.explorer import ALL_SEEDS, Explorer  # noqa: E402


@pytest.fixture
def runs(tmp_path):
    """Records of a tiny fake study under the reference protocol (the first 3 epochs of its
    histories): full-rank and both methods at ranks 4, 8; two seeds."""
    for seed in (0, 1):
        for method, rank in (("full", None), ("lora", 4), ("lora", 8), ("ae", 4), ("ae", 8)):
            run = RunConfig(method=method, rank=rank, seed=seed)
            level = {"full": 0.8, "lora": 0.7, "ae": 0.6}[method] + (rank or 0) / 100 + seed / 100
            history = [{"epoch": e, "test_accuracy": level * e / 3, "test_loss": 1 / e,
                        "train_loss": 1 / e, "seconds": 1.0} for e in (1, 2, 3)]
            save_record(make_record(run, TrainResult(history=history), {"total": 10 + (rank or 100)}),
                        tmp_path)
    return load_records(tmp_path)


def test_curves_one_line_per_model_with_bands(runs):
    fig = plot_curves(runs)
    ax = fig.axes[0]
    assert len(ax.lines) == 5  # full, lora 4, lora 8, ae 4, ae 8 (means over 2 seeds)
    assert len(ax.collections) == 5  # one band per model
    styles = {line.get_label().split(" (")[0]: line.get_linestyle() for line in ax.lines}
    assert styles["autoencoder layers r=4"] == "--" and styles["LoRA layers r=4"] == "-"
    full = next(l for l in ax.lines if l.get_label().startswith("full"))
    assert full.get_color() == "black"
    assert full.get_ydata()[-1] == pytest.approx(100 * (0.80 + 0.81) / 2)
    plt.close("all")


def test_single_seed_has_no_band(runs):
    fig = plot_curves(runs[runs.seed == 0])
    assert len(fig.axes[0].collections) == 0
    plt.close("all")


def test_final_vs_rank_and_params(runs):
    for x in ("rank", "params"):
        fig = plot_final_vs(runs, x)
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert any("full-rank" in t for t in labels) and "LoRA layers" in labels
        plt.close(fig)


def test_study_figures_names(runs):
    names = set(study_figures(runs, "fashion_mnist"))
    assert names == {f"fashion_mnist_{n}.png" for n in
                     ("ae_vs_full", "lora_vs_full", "all", "accuracy_vs_rank", "accuracy_vs_params")}
    plt.close("all")


def test_comparison_table_and_discussion(runs):
    table = comparison_table(runs)
    assert list(table.model) == ["full-rank MLP", "LoRA layers r=4", "LoRA layers r=8",
                                 "autoencoder layers r=4", "autoencoder layers r=8"]
    assert table.loc[0, "final"] == "80.5 ± 0.7" and table.loc[0, "seeds"] == 2
    assert table.loc[1, "epoch 100 (original)"] == "75.5"
    text = discussion(runs)
    assert "80.5%" in text and "2 seeds" in text


def test_explorer_redraws_on_every_change(runs):
    panel = Explorer(runs)
    assert panel.methods.value == ("full", "lora", "ae") and panel.ranks.value == (4, 8)
    assert panel.seed.value == ALL_SEEDS and len(panel.selection()) == 10
    first = panel.figure
    assert len(first.axes[0].lines) == 5
    panel.seed.value = 1
    assert len(panel.selection()) == 5 and set(panel.selection().seed) == {1}
    panel.ranks.value = (8,)
    assert set(panel.selection()["rank"].dropna()) == {8}
    panel.methods.value = ("full",)
    assert set(panel.selection().method) == {"full"}
    assert panel.figure is not first  # redrawn on every change
    assert [l.get_label() for l in panel.figure.axes[0].lines] == ["full-rank MLP"]
    with pytest.raises(ValueError, match="no records to explore"):
        Explorer(runs.iloc[0:0])
    plt.close("all")
