"""The tuned comparison: the learning-rate ladder, the search with its grid extended at the
edges, seeds, the controls' models, the intervals, and the command."""
import math
import os

import pandas as pd
import pytest
import torch
from scipy import stats

from lowrank_helpers import MLP, RunConfig, build_model, count_parameters
from lowrank_helpers.batch.cli import main as cli_main
from lowrank_helpers.core.results import load_records
from lowrank_helpers.core.stats import welch
from lowrank_helpers.reports.tuned import budget_check, tuned_answer, versus_dense
from lowrank_helpers.studies.tuned import (GRIDS, TunedConfig, ladder_index, ladder_lr, model_key,
                                    run_tuning, split_budget, tuned_table)


def test_ladder_round_trip_and_refusal():
    assert [ladder_lr(k) for k in range(-6, -2)] == [1e-3, 3e-3, 1e-2, 3e-2]
    for lr in (*GRIDS["sgd"], *GRIDS["adamw"], 1.0, 3.0):
        assert ladder_lr(ladder_index(lr)) == lr
    with pytest.raises(ValueError, match="not on the grid's ladder"):
        ladder_index(2e-3)


def test_welch_matches_scipy():
    a, b = [0.88, 0.885, 0.879, 0.883], [0.874, 0.871, 0.879]
    d = welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert d.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert d.low < d.diff < d.high and d.real == (ref.pvalue < 0.05)
    assert "Welch p" in d.describe()
    with pytest.raises(ValueError, match="at least 2 values"):
        welch([0.9], [0.8, 0.7])


def test_rescale_keeps_the_function_and_changes_the_id():
    base = RunConfig(method="lora", rank=4, init="he")
    scaled = base.replace(rescale=4.0)
    assert scaled.run_id != base.run_id and "rescale" not in base.to_dict()
    assert RunConfig.from_dict(scaled.to_dict()) == scaled
    x = torch.randn(8, 784)
    with torch.no_grad():
        torch.testing.assert_close(build_model(scaled)(x), build_model(base)(x), rtol=1e-5,
                                   atol=1e-5)
    a0 = build_model(base).linear_layers()[0].A
    assert torch.allclose(build_model(scaled).linear_layers()[0].A, 4 * a0)
    with pytest.raises(ValueError, match="method 'full' has none"):
        RunConfig(method="full", rescale=2.0)
    with pytest.raises(ValueError, match="positive number"):
        RunConfig(method="lora", rank=2, rescale=0)


def test_dense_head_and_he_baselines():
    head = MLP("densehead", 3, "he")
    layers = head.linear_layers()
    assert isinstance(layers[-1], torch.nn.Linear) and not isinstance(layers[0], torch.nn.Linear)
    counted = sum(p.numel() for p in head.parameters())
    assert count_parameters("densehead", 3)["total"] == counted
    he = MLP("full_he")
    w = he.linear_layers()[0].weight
    assert w.std().item() == pytest.approx(math.sqrt(2 / 784), rel=0.02)
    assert torch.count_nonzero(he.linear_layers()[0].bias) == 0


def test_spectral_he_keeps_the_top_directions_of_a_he_matrix():
    torch.manual_seed(0)
    full = MLP("lora", 512, "spectral_he", widths=(784, 512, 10)).linear_layers()[0]
    # at r = min(d_in, d_out) the product is the He matrix itself
    assert full.dense_weight().var().item() == pytest.approx(2 / 784, rel=0.02)
    torch.manual_seed(0)
    low = MLP("lora", 8, "spectral_he", widths=(784, 512, 10)).linear_layers()[0]
    s_full = torch.linalg.svdvals(full.dense_weight().double())
    s_low = torch.linalg.svdvals(low.dense_weight().double())
    torch.testing.assert_close(s_low[:8], s_full[:8], rtol=1e-5, atol=1e-6)  # same draw
    assert s_low[8:].abs().max() < 1e-5


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    cfg = TunedConfig(ranks=(2,), inits=("lora", "he"), dense=("full",), controls=False,
                      seeds=2, close_seeds=3, max_extend=1, epochs=3, train_subset=1024,
                      test_subset=256, results_dir=str(tmp_path_factory.mktemp("tuned")),
                      data_root=os.environ["LOWRANK_DATA"], optimizers=("adamw",),
                      budget_epochs=4)
    return cfg, run_tuning(cfg, progress=False)


def test_search_seeds_and_resume(tuned, capsys):
    cfg, table = tuned
    runs = load_records(cfg.results_dir)
    study, long = split_budget(table)
    assert len(study) == 3 and (study.epochs == 3).all()  # full, lora r=2, he r=2
    # the convergence check: the dense model retuned at 4 epochs around its 3-epoch choice
    assert list(long.method) == ["full"] and (long.epochs == 4).all()
    k = ladder_index(study[study.method == "full"].lr.iloc[0])
    assert {ladder_lr(k - 1), ladder_lr(k), ladder_lr(k + 1)} <= \
        {float(x) for x in long.tried.iloc[0].split()}
    assert len(budget_check(table)) == 1
    for row in study.itertuples():
        part = runs[[model_key(RunConfig.from_dict(_cfg(p))) == row.key for p in runs.path]]
        tried = sorted(part[part.seed == 0].lr)
        assert tried == [float(x) for x in row.tried.split()]
        grid = GRIDS["adamw"]
        assert set(grid) <= set(tried) and len(tried) <= len(grid) + 2
        failed = {float(x) for x in row.unstable.split()}  # a seed diverged or sat at chance
        search = part[(part.seed == 0) & ~part.lr.isin(failed)]
        if len(search):  # the best validation accuracy (ties: see the test of _score)
            chosen = search[search.lr == row.lr].final_val_accuracy.iloc[0]
            assert chosen == search.final_val_accuracy.max()
        else:  # every rate failed: the lowest, and the grid extended downwards
            assert row.lr == min(tried) and row.edge == "low"
        if pd.isna(row.edge):  # inside: the neighbours on both sides were searched
            assert tried[0] < row.lr < tried[-1]
        else:  # at an edge: the grid was extended there by max_extend = 1 rate
            assert (min(tried) < min(grid)) if row.edge == "low" else (max(tried) > max(grid))
        seeds = sorted(part[part.lr == row.lr].seed)
        assert seeds[:2] == [0, 1] and len(seeds) in (2, 3)
        assert all(lr in failed for lr in set(part.lr) if lr != row.lr and
                   (part[part.lr == lr].seed > 0).any())  # seeds moved on only from failures
        assert row.mean_test == pytest.approx(part[part.lr == row.lr].final_test_accuracy.mean())
    capsys.readouterr()
    again = run_tuning(cfg, progress=False)
    assert "to train" in capsys.readouterr().out
    assert (again.lr == table.lr).all() and len(load_records(cfg.results_dir)) == len(runs)


def test_prose_comes_with_intervals(tuned):
    _, table = tuned
    table = split_budget(table)[0]
    vs = versus_dense(table)
    dense = table[table["rank"].isna()].iloc[0]
    for row in vs.itertuples():
        fact = table[table.model == row.model].iloc[0]
        d = welch(fact.test_values, dense.test_values)
        assert (row.diff, row.low, row.high) == pytest.approx((d.diff, d.low, d.high))
    text = tuned_answer(table)
    assert "smallest rank that matches dense" in text and "Welch's 95 % interval" in text


def _cfg(path):
    import json
    return json.load(open(path))["config"]


def test_cli_tune_smoke_and_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["tune", "--optimizers", "rmsprop"])
    assert "unknown optimizer(s) ['rmsprop']; tuned protocols: sgd, adamw" in \
        capsys.readouterr().err
    rc = cli_main(["tune", "--smoke", "--no-notebook", "--no-controls", "--ranks", "2",
                   "--inits", "he", "--dense", "full", "--optimizers", "sgd",
                   "--results-dir", str(tmp_path / "tuned"),
                   "--data-root", os.environ["LOWRANK_DATA"]])
    assert rc == 0
    runs = load_records(tmp_path / "tuned" / "smoke")
    assert set(runs.method) == {"full", "lora"} and set(runs.epochs) == {1, 2}
    study, long = split_budget(tuned_table(runs))
    assert len(study) == 2 and (study.epochs == 1).all()
    assert list(long.method) == ["full"]  # smoke's convergence check: 2 epochs


def test_score_prefers_the_lower_rate_when_nothing_learns():
    """Where every rate diverges (or ties at chance), the lowest wins, so the grid extends
    downwards; otherwise the task's selection metrics decide: validation accuracy, then
    validation loss, for the MLP; the tuning-slice loss for the transformer."""
    from types import SimpleNamespace

    from lowrank_helpers.studies.search import standing

    def Row(task="fashion_mnist", **kw):
        return SimpleNamespace(task=task, diverged_step=None, **kw)
    diverged = [Row(lr=lr, final_val_accuracy=float("nan"), diverged_epoch=1, final_val_loss=None)
                for lr in (0.01, 0.003, 0.03)]
    assert max(diverged, key=standing).lr == 0.003
    chance = [Row(lr=lr, final_val_accuracy=0.1, diverged_epoch=None,
                  final_val_loss=float("nan")) for lr in (0.1, 0.03)]
    assert max(chance, key=standing).lr == 0.03
    good = [Row(lr=0.1, final_val_accuracy=0.85, diverged_epoch=None, final_val_loss=0.5),
            Row(lr=0.03, final_val_accuracy=0.85, diverged_epoch=None, final_val_loss=0.4),
            Row(lr=0.01, final_val_accuracy=0.80, diverged_epoch=None, final_val_loss=0.3)]
    assert max(good, key=standing).lr == 0.03
    lm = [Row("shakespeare_char", lr=lr, final_tune_loss=loss, diverged_epoch=None)
          for lr, loss in ((1e-3, 1.6), (3e-3, 1.5), (1e-2, 1.5))]
    assert max(lm, key=standing).lr == 3e-3
    lm[1].diverged_step = 750
    assert max(lm, key=standing).lr == 1e-2
