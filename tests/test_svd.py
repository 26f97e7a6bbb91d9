"""The SVD-started control: factors from a trained dense model's SVD, kept checkpoints, and the
language-model study's ``svd`` phase (smoke sizes, CPU)."""
import json

import pandas as pd
import pytest
import torch

import lowrank_helpers as lh
from lowrank_helpers.core.checkpoints import checkpoint_path, load_checkpoint, save_checkpoint
from lowrank_helpers.core.protocol import RunConfig
from lowrank_helpers.methods.svd_start import dense_source, svd_factors
from lowrank_helpers.models.layers import LowRankLinear

SHAPE = lh.LMShape(1, 2, 16, 16, 65)
DENSE = lh.LMRun("tinyshakespeare", SHAPE, protocol=lh.LMProtocol(steps=5, lr=1e-3,
                                                                  min_lr=1e-4))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def svd_of(rank, dense=DENSE):
    return RunConfig(dense.task, "svd_start", rank, shape=dense.shape, protocol=dense.protocol,
                     seed=dense.seed, options={"dense_lr": dense.lr})


def test_svd_factors_are_the_best_rank_r_approximation_split_evenly():
    W = torch.randn(24, 40, generator=torch.Generator().manual_seed(0))
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    for r in (1, 5, 24):
        B, A = svd_factors(W, r)
        assert B.shape == (24, r) and A.shape == (r, 40)
        best = (U[:, :r] * S[:r]) @ Vh[:r]
        torch.testing.assert_close((B @ A).double(), best, atol=1e-5, rtol=1e-5)
        # Eckart–Young: the error is the energy beyond rank r
        err = torch.linalg.norm(W.double() - (B @ A).double())
        assert abs(err - S[r:].pow(2).sum().sqrt()) < 1e-4
        assert abs(torch.linalg.norm(B) - torch.linalg.norm(A)) < 1e-4   # balanced


def test_an_svd_started_model_is_the_dense_one_cut_to_rank_r(cache):
    dense = DENSE.build()
    with torch.no_grad():                       # a "trained" model: not its own init
        for p in dense.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(DENSE, dense, {"val_loss": 1.0})
    assert dense_source(svd_of(4)).run_id == DENSE.run_id
    x = torch.randint(0, 65, (3, 16), generator=torch.Generator().manual_seed(1))
    full = svd_of(16).build()
    torch.testing.assert_close(full(x), dense(x), atol=1e-5, rtol=1e-5)  # full rank: the same
    cut = svd_of(4).build()
    state = dense.state_dict()
    for name, layer in cut.named_modules():
        if isinstance(layer, LowRankLinear):
            B, A = svd_factors(state[f"{name}.weight"], 4)
            torch.testing.assert_close(layer.B @ layer.A, B @ A)
    torch.testing.assert_close(cut.wte.weight, dense.wte.weight)   # every other tensor copied
    assert (cut(x) - dense(x)).abs().max() > 1e-3                  # and it is another model
    assert lh.METHODS["svd_start"].stackable


def test_a_missing_checkpoint_or_dense_rate_is_one_clear_error(cache):
    with pytest.raises(FileNotFoundError, match="no checkpoint of dense d=16.*retraining"):
        svd_of(4).build()
    with pytest.raises(ValueError, match="needs the option dense_lr"):
        RunConfig(DENSE.task, "svd_start", 4, shape=SHAPE, protocol=DENSE.protocol).build()
    with pytest.raises(ValueError, match="dense_lr must be"):
        RunConfig(DENSE.task, "svd_start", 4, shape=SHAPE, options={"dense_lr": -1})
    with pytest.raises(ValueError, match="takes no option 'dense_lr'"):
        RunConfig(DENSE.task, "lora", 4, shape=SHAPE, options={"dense_lr": 1e-3})


def test_the_svd_phase_keeps_checkpoints_truncates_and_trains_on_with_resume(cache, tmp_path):
    from lowrank_helpers.studies.lm import LMStudyConfig, run_lm_study
    from lowrank_helpers.studies.svd import load_truncated
    cfg = LMStudyConfig(smoke=True, phases=("svd",), results_dir=str(tmp_path / "r"),
                        svd_ranks=(2, 4), seeds=2, refine=0)
    runs = run_lm_study(cfg, progress=False)
    svd = runs[runs.method == "svd_start"]
    assert set(svd["rank"]) == {2, 4} and (svd.groupby("rank").seed.nunique() == 2).all()
    dense = runs[runs.method == "full"]
    lr = dense[dense.seed == 1].lr.iloc[0]                        # the dense choice's seeds
    assert sorted(dense[dense.lr == lr].seed) == [0, 1]
    cut = load_truncated(cfg.results_dir)
    assert len(cut) == 4 and set(cut["rank"]) == {2, 4} and (cut.dense_lr == lr).all()
    rec = json.loads(next((tmp_path / "r" / "smoke").glob("*svd_start*r002*-s0-*")).read_text())
    assert rec["config"]["options"]["dense_lr"] == lr
    # the report reads the same numbers: the truncations, and the SVD-started seeds at the
    # choice, beside the from-scratch models of the rank (none were trained here)
    from lowrank_helpers.reports.lm_gap import svd_lines, svd_table
    from lowrank_helpers.studies.lm import load_lm_records
    table = svd_table(load_lm_records(cfg.results_dir), cut)
    assert list(table["rank"]) == [2, 4]
    for _, row in table.iterrows():
        assert row.truncated_losses == list(cut[cut["rank"] == row["rank"]].sort_values(
            "seed").val_loss)
        at = svd[(svd["rank"] == row["rank"]) & (svd.lr == row.svd_lr)].sort_values("seed")
        assert row.svd_losses == list(at.val_loss)
    text = "\n".join(svd_lines(table))
    assert "Holm's correction over these 2 tests" in text     # SVD-started − dense, per rank
    plain = load_lm_records(cfg.results_dir)
    plain = plain[plain.method != "svd_start"].drop(columns="options")   # a smoke run's records
    assert svd_table(plain, cut).empty and not svd_lines(svd_table(plain, cut))
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "r" / "smoke").rglob("*.json")}
    run_lm_study(cfg, progress=False)                              # resumed: nothing rewritten
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "r" / "smoke").rglob("*.json")}
    assert before == after
    # a checkpoint is rebuilt by retraining, and refused where it is not the recorded model
    from lowrank_helpers.core.results import record_path
    from lowrank_helpers.studies.svd import ensure_checkpoints
    from lowrank_helpers.tasks.text import read_corpus, split_text
    run = RunConfig.from_dict(json.loads(next((tmp_path / "r" / "smoke").glob(
        f"*-dense-*-lr{lr:g}-s0-*")).read_text())["config"])
    stored = load_checkpoint(run)["state_dict"]
    checkpoint_path(run).unlink()
    path = record_path(run, cfg.results_dir)
    rec = json.loads(path.read_text())
    rec["final"]["val_loss"] += 0.5                                # another model's record
    path.write_text(json.dumps(rec))
    splits = split_text(read_corpus(cfg.corpus, None), cfg.tune_chars, cfg.corpus)
    with pytest.warns(UserWarning, match="differs from the record's"):
        assert ensure_checkpoints([run], splits, cfg.results_dir) == [run.name]
    assert not checkpoint_path(run).exists()
    rec["final"]["val_loss"] -= 0.5
    path.write_text(json.dumps(rec))
    assert ensure_checkpoints([run], splits, cfg.results_dir) == []
    rebuilt = load_checkpoint(run)
    assert rebuilt["config"] == run.to_dict()
    for k, v in stored.items():
        torch.testing.assert_close(rebuilt["state_dict"][k], v, atol=1e-4, rtol=1e-4)


def test_the_gap_at_a_longer_budget_and_at_another_width_is_compared_seed_for_seed(cache,
                                                                                    tmp_path):
    """The budget and scale sentences read the study at another budget and another width
    (tiny models, a few steps): each gap is Welch's over the records, its change the
    difference of two gaps."""
    from lowrank_helpers.core.stats import change
    from lowrank_helpers.reports.lm_scale import budget_lines, gaps, scale_lines, scale_table
    from lowrank_helpers.studies.lm import LMStudyConfig, load_lm_records, run_lm_study
    tiny = dict(corpus="python_stdlib", n_layer=1, block_size=16, batch_size=4,
                tune_chars=4000, eval_every=6, eval_windows=8, inits=("default",),
                lrs=(1e-3, 1e-2), max_extend=0, refine=0, seeds=2, sample_chars=10,
                phases=("search", "seeds"))
    dirs = {}
    for name, d, iters in (("short", 32, 6), ("long", 32, 12), ("wide", 64, 6)):
        dirs[name] = str(tmp_path / name)
        run_lm_study(LMStudyConfig(d_model=d, n_head=d // 32, iters=iters, ranks=(d // 8,),
                                   results_dir=dirs[name], **tiny), progress=False)
    short, long = load_lm_records(dirs["short"]), load_lm_records(dirs["long"])
    a, b = gaps(short)[(4, "default")][1], gaps(long)[(4, "default")][1]
    text = "\n".join(budget_lines(short, long))
    assert "6 against 12 steps" in text and f"gap {a.diff:+.3f} → {b.diff:+.3f}" in text
    assert "- **So** (budget): with 2× the steps, the gap to dense" in text
    assert f"change {change(a, b).diff:+.3f}" in text
    table = scale_table(pd.concat([short, load_lm_records(dirs["wide"])], ignore_index=True))
    assert sorted(table.d_model) == [32, 64] and set(table.fraction) == {1 / 8}
    text = "\n".join(scale_lines(table))
    assert "r = d/8 (default init): d=32 (r=4)" in text and "d=32→64" in text
    assert "- **So** (scale): at a fixed fraction of d" in text


def test_the_sections_cost_sums_each_part_and_the_whole_over_stacks():
    """Each part's minutes are its stacks' wall time (a stack's shared among its models),
    the series' own widths only, and the line gives the total."""
    import pandas as pd
    from lowrank_helpers.reports.lm_gap import cost_line
    runs = pd.DataFrame({"method": ["svd_start", "svd_start", "lora"], "d_model": [128] * 3,
                         "n_head": [4] * 3, "wall_time": [600.0, 600.0, 9999.0],
                         "stack_size": [2, 2, 1], "torch_threads": [1, 1, 1]})
    scale = pd.DataFrame({"method": ["lora", "full", "full"], "d_model": [64, 128, 256],
                          "n_head": [2, 4, 8], "wall_time": [120.0, 5000.0, 1800.0],
                          "stack_size": [1, 1, 3], "torch_threads": [1, 1, 1]})
    budget = pd.DataFrame({"wall_time": [2400.0], "stack_size": [1], "torch_threads": [1]})
    line = cost_line({"runs": runs, "scale_runs": scale, "students_runs": None,
                      "budget": budget})
    assert "SVD-started 2 runs, 10 min" in line          # one stack of two: 600 s
    assert "longer budget 1 run, 40 min" in line
    assert "other widths 2 runs, 12 min" in line         # d 64 and 256, not the study's 128
    assert "in all 5 runs, 62 min (1.0 h)" in line and "students" not in line


def test_the_so_lines_say_which_gaps_shrink_grow_or_cannot_be_told_apart():
    """The budget's and the scale's conclusions read the corrected decisions: each change
    counted where it goes, and which way none goes."""
    from lowrank_helpers.core.stats import Difference
    from lowrank_helpers.reports.lm_scale import _verdicts
    d = lambda diff, p: Difference(diff, diff - 0.01, diff + 0.01, p, 3, 3, p_holm=p, family=3)
    text = _verdicts(["a", "b", "c"], [d(-0.1, 0.01), d(-0.05, 0.2), d(0.02, 0.5)])
    assert text == ("shrinks detectably at 1 of 3 (a); is not distinguishable from unchanged "
                    "with these seeds at 2 of 3 (b, c); it grows detectably at none")
    assert _verdicts(["a"], [d(0.01, 0.9)]).endswith(": it neither shrinks nor grows "
                                                    "detectably at any")
    assert _verdicts(["a", "b"], [d(0.1, 0.001), d(-0.1, 0.001)]) == (
        "shrinks detectably at 1 of 2 (b); grows detectably at 1 of 2 (a)")
