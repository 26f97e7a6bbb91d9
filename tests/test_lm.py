"""The character LM: corpus loading and splitting, the model, training many at once against
one at a time, the study's phases and resume, the teacher–student control."""
import dataclasses
import hashlib
import io
import math
import urllib.error

import pytest
import torch
import torch.nn.functional as F

import lowrank_helpers as lh
from lowrank_helpers.tasks import text
from lowrank_helpers.models.charlm import FACTORIZE, lm_parameters, lm_training_flops
from lowrank_helpers.tasks.images_data import DataNotFoundError
from lowrank_helpers.models.layers import LowRankLinear
from lowrank_helpers.studies.lm import narrow_width
from lowrank_helpers.training.lm import StackedAdamW, get_batch, windows
from lowrank_helpers.tasks.linear import floor, teacher

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40


@pytest.fixture
def fake_corpus(tmp_path, monkeypatch):
    """A corpus 'fake' with a canonical URL and md5, for the loader's paths."""
    data = TEXT.encode()
    source = text.CorpusSource("fake", "input.txt", "https://example.invalid/input.txt",
                               hashlib.md5(data).hexdigest(), "fake text")
    monkeypatch.setitem(text.CORPORA, "fake", source)
    return tmp_path, data


def test_split_is_nanogpts(fake_corpus):
    splits = text.split_text(TEXT, tune_chars=100)
    n = int(len(TEXT) * 0.9)
    assert splits.chars == "".join(sorted(set(TEXT)))
    assert splits.decode(splits.train) + splits.decode(splits.tune) == TEXT[:n]
    assert splits.decode(splits.val) == TEXT[n:] and len(splits.tune) == 100
    assert splits.decode(splits.encode("hear me")) == "hear me"
    with pytest.raises(ValueError, match="not in the corpus's vocabulary"):
        splits.encode("Z")
    with pytest.raises(ValueError, match="tune_chars must be in"):
        text.split_text(TEXT, tune_chars=len(TEXT))


def test_corpus_found_in_the_data_root(fake_corpus):
    root, data = fake_corpus
    (root / "fake").mkdir()
    (root / "fake" / "input.txt").write_bytes(data)
    assert text.load_corpus("fake", root).vocab_size == len(set(TEXT))


def test_corpus_with_the_wrong_md5_is_refused_and_kept(fake_corpus):
    root, data = fake_corpus
    (root / "fake").mkdir()
    path = root / "fake" / "input.txt"
    path.write_bytes(data + b"x")
    with pytest.raises(ValueError, match="has md5 .* expected"):
        text.corpus_path("fake", root)
    assert path.exists()


def test_corpus_downloaded_and_checked(fake_corpus, monkeypatch):
    root, data = fake_corpus
    monkeypatch.setattr(text.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(data))
    assert text.corpus_path("fake", root).read_bytes() == data
    (root / "fake" / "input.txt").unlink()
    monkeypatch.setattr(text.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"bad"))
    with pytest.raises(ValueError, match="nothing was saved"):
        text.corpus_path("fake", root)
    assert not (root / "fake" / "input.txt").exists()


def test_corpus_without_network_says_where_to_put_it(fake_corpus, monkeypatch):
    root, _ = fake_corpus

    def offline(url, timeout):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(text.urllib.request, "urlopen", offline)
    with pytest.raises(DataNotFoundError, match="copy input.txt .* there by hand"):
        text.corpus_path("fake", root)
    with pytest.raises(DataNotFoundError, match="put input.txt"):
        text.corpus_path("fake", root, download=False)
    with pytest.raises(ValueError, match="unknown corpus 'nope'; valid corpora"):
        text.corpus_path("nope", root)


def test_smoke_corpus_is_python_source(tmp_path):
    splits = text.load_corpus("python_stdlib", tmp_path)
    assert "def " in splits.decode(splits.train[:5000])


def test_nanogpt_cpu_model_has_its_parameter_count():
    model = lh.CharTransformer(lh.LMShape())
    counts = lm_parameters(lh.LMShape())
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert round(counts["nanogpt"] / 1e6, 2) == 0.80        # nanoGPT prints "0.80M"


@pytest.mark.parametrize("factorize", list(FACTORIZE))
def test_factorized_projections_and_counts(factorize):
    shape = lh.LMShape(2, 2, 16, 8, 11)
    model = lh.CharTransformer(shape, factorize, 3, "he")
    for block in model.blocks:
        for name in shape.projections():
            layer = getattr(block, name)
            assert isinstance(layer, LowRankLinear) == (name in FACTORIZE[factorize])
            assert layer.bias is None
    assert lm_parameters(shape, factorize, 3)["total"] == \
        sum(p.numel() for p in model.parameters())
    assert lm_training_flops(shape, factorize, 3) > 0


def test_attention_is_causal_and_both_kernels_agree():
    torch.manual_seed(0)
    shape = lh.LMShape(2, 2, 16, 8, 11)
    model = lh.CharTransformer(shape).double()
    x = torch.randint(0, 11, (3, 8))
    y = x.clone()
    y[:, 5:] = (y[:, 5:] + 1) % 11
    with torch.no_grad():
        a, b = model(x), model(y)
        assert torch.allclose(a[:, :5], b[:, :5]) and not torch.allclose(a[:, 5:], b[:, 5:])
        for block in model.blocks:
            block.fused_attention = False
        assert torch.allclose(model(x), a, atol=1e-12)
    with pytest.raises(ValueError, match="longer than the context"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_bad_shapes_and_runs_are_refused():
    with pytest.raises(ValueError, match="multiple of n_head"):
        lh.LMShape(n_head=3, d_model=128)
    with pytest.raises(ValueError, match="unknown factorize"):
        lh.LMRun(factorize="all", rank=4)
    with pytest.raises(ValueError, match="takes no rank"):
        lh.LMRun(rank=4)
    with pytest.raises(ValueError, match="rank must be an integer"):
        lh.LMRun(factorize="both", rank=0)
    with pytest.raises(ValueError, match="min_lr"):
        lh.LMProtocol(lr=1e-4, min_lr=1e-3)


def test_run_ids():
    from lowrank_helpers.training.lm import stack_key
    run = lh.LMRun(factorize="mlp", rank=8, init="he")
    assert isinstance(run, lh.RunConfig) and run.task == "shakespeare_char"
    assert lh.RunConfig.from_dict(run.to_dict()) == run
    assert run.replace(seed=1).run_id != run.run_id
    assert run.replace(seed=1).group_id == run.group_id
    assert run.replace(lr=3e-3, min_lr=3e-4).model_key == run.model_key
    assert stack_key(run.replace(lr=3e-3)) == stack_key(run)
    assert stack_key(run.replace(rank=4)) != stack_key(run)
    assert run.to_dict()["n_layer"] == 4 and run.to_dict()["block_size"] == 64


def test_lr_schedule_is_nanogpts():
    p = lh.LMProtocol(iters=2000, lr=1e-3, min_lr=1e-4, warmup_steps=100)
    assert p.lr_at(0, 2000) == pytest.approx(1e-3 / 101)
    assert p.lr_at(100, 2000) == pytest.approx(1e-3)
    assert p.lr_at(1050, 2000) == pytest.approx(1e-4 + 0.5 * 9e-4)   # half-way down
    assert p.lr_at(2000, 2000) == pytest.approx(1e-4)


def _tiny(seed=0, lr=1e-2, **kw):
    shape = lh.LMShape(2, 2, 16, 8, len(set(TEXT)))
    proto = lh.LMProtocol(iters=6, batch_size=3, lr=lr, min_lr=lr / 10, warmup_steps=2,
                          grad_clip=0.05, tune_chars=200, eval_every=3, eval_windows=4)
    return lh.LMRun("python_stdlib", shape, seed=seed, protocol=proto, **kw)


@pytest.mark.parametrize("kw", [{}, {"factorize": "both", "rank": 3, "init": "lora"}])
def test_training_together_is_training_alone(kw):
    """Models of one stack, with their own seeds, inits and rates, end where each would end
    trained alone with torch.optim.AdamW and clip_grad_norm_ (float64; clipping binds)."""
    splits = text.split_text(TEXT, tune_chars=200)
    runs = [_tiny(0, 1e-2, **kw), _tiny(1, 3e-3, **kw)]
    if kw:
        runs[1] = runs[1].replace(init="default")
    results = lh.train_lms(runs, splits, dtype=torch.float64, sample_chars=5)
    for run, res in zip(runs, results):
        model, losses = lh.train_lm_eager(run, splits, dtype=torch.float64)
        for (name, p), q in zip(model.named_parameters(), res.model.parameters()):
            assert torch.allclose(p, q, atol=1e-10), name
        assert [h["iter"] for h in res.history] == [3, 6]
        assert res.final["val_bits"] == pytest.approx(res.final["val_loss"] / math.log(2))
        assert len(res.final["sample"]) == 5
        x, y = windows(splits.val, 8)
        with torch.no_grad():
            direct = F.cross_entropy(model(x).reshape(-1, splits.vocab_size), y.reshape(-1))
        assert res.final["val_loss"] == pytest.approx(direct.item(), abs=1e-9)


def test_stacked_adamw_is_torchs():
    torch.manual_seed(0)
    w = torch.randn(2, 3, 4, dtype=torch.float64)
    proto = lh.LMProtocol(weight_decay=0.1)
    stacked = w.clone().requires_grad_()
    opt = StackedAdamW([stacked], [True], proto)
    refs = [w[i].clone().requires_grad_() for i in range(2)]
    lrs = [1e-2, 1e-3]
    torch_opts = [torch.optim.AdamW([r], lr=lr, betas=(0.9, 0.99), weight_decay=0.1)
                  for r, lr in zip(refs, lrs)]
    for _ in range(3):
        g = torch.randn(2, 3, 4, dtype=torch.float64)
        stacked.grad = g.clone()
        opt.step(torch.tensor(lrs, dtype=torch.float64))
        for i, (r, o) in enumerate(zip(refs, torch_opts)):
            r.grad = g[i].clone()
            o.step()
    assert torch.allclose(stacked.detach(), torch.stack([r.detach() for r in refs]),
                          atol=1e-14)


def test_a_stack_must_share_its_shapes_and_vocabulary():
    splits = text.split_text(TEXT, tune_chars=200)
    with pytest.raises(ValueError, match="must share task, shape"):
        lh.train_lms([_tiny(), _tiny(factorize="both", rank=2)], splits)
    other = text.split_text(TEXT + "Z", tune_chars=200)
    with pytest.raises(ValueError, match="vocab_size"):
        lh.train_lms([_tiny()], other)


def test_windows_cover_the_split_once():
    data = torch.arange(100)
    x, y = windows(data, 8)
    assert x.shape == (12, 8) and torch.equal(y, x + 1) and x[0, 0] == 0
    assert windows(data, 8, 3)[0].shape == (3, 8)
    gen = torch.Generator().manual_seed(0)
    xb, yb = get_batch(data, 8, 5, gen)
    assert xb.shape == (5, 8) and torch.equal(yb, xb + 1)


def test_narrow_width_matches_parameters():
    shape = lh.LMShape()
    target = lm_parameters(shape, "both", 16)["total"]
    d = narrow_width(target, shape)
    assert d % shape.n_head == 0 and d < shape.d_model
    got = lm_parameters(lh.LMShape(d_model=d), "none")["total"]
    for other in (d - 4, d + 4):
        assert abs(got - target) <= abs(lm_parameters(lh.LMShape(d_model=other))["total"]
                                        - target)


def test_smoke_study_writes_records_and_resumes(tmp_path):
    cfg = lh.LMStudyConfig(smoke=True, results_dir=str(tmp_path / "r"),
                           img_dir=str(tmp_path / "img"), data_root=str(tmp_path / "data"))
    runs = lh.run_lm_study(cfg, progress=False)
    table = lh.lm_table(runs)
    dense = table[(table.factorize == "none") & (table.d_model == cfg.d_model)].iloc[0]
    assert dense.seeds == cfg.seeds and set(cfg.lrs) <= set(dense.lrs_tried)
    assert set(table[table.factorize == "both"]["rank"]) == set(cfg.ranks)
    assert len(lh.reports.lm.anchor_runs(runs)) == cfg.anchor_seeds
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "r").glob("*.json")}
    again = lh.run_lm_study(cfg, progress=False)
    assert len(again) == len(runs)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "r").glob("*.json")} == stamps
    rec = lh.read_record(runs.path.iloc[0])
    assert {"n_layer", "n_head", "d_model", "block_size"} <= set(rec["config"])
    assert "Equal steps" in lh.lm_answer(runs) and "| model |" in lh.lm_tables_markdown(table)
    figs = lh.lm_figures(runs, init=cfg.inits[0])
    assert set(figs) >= {"shakespeare_loss_vs_rank.png", "shakespeare_loss_vs_params.png"}


def test_lm_command_smoke(tmp_path):
    from lowrank_helpers.batch.cli import main
    rc = main(["lm", "--smoke", "--no-notebook", "--results-dir", str(tmp_path / "r"),
               "--data-root", str(tmp_path / "data"), "--phases", "anchor"])
    assert rc == 0 and len(list((tmp_path / "r" / "smoke").glob("*.json"))) == 2
    with pytest.raises(SystemExit):
        main(["lm", "--phases", "everything"])


def test_teacher_has_its_spectrum_and_students_respect_the_floor():
    w, s = teacher("power", 16)
    assert torch.allclose(torch.linalg.svdvals(w), s, atol=1e-10)
    assert (w ** 2).sum().item() == pytest.approx(16)
    u, sv, vh = torch.linalg.svd(w)
    w4 = u[:, :4] @ torch.diag(sv[:4]) @ vh[:4]
    assert floor(s, 4) == pytest.approx(((w - w4) ** 2).sum().item() / 16)
    df = lh.studies.teacher.run_teacher_student(lh.TeacherConfig(d=16, ranks=(2, 16), steps=300,
                                                         inits=("he",), lrs=(1e-2,)),
                                        progress=False)
    assert (df.loss >= df.floor - 1e-9).all()              # Eckart–Young: nothing beats it
    full = df[df["rank"] == 16]
    assert (full.loss < 0.05).all()                        # full rank learns the teacher


def test_an_interrupted_stack_goes_on_from_its_last_save(tmp_path):
    """A stack stopped at step 4 of 6 (its state saved after every step) and trained again ends
    where the uninterrupted stack ends, and its saved state is gone; another stack's file is
    not taken."""
    from lowrank_helpers.core.checkpoints import stack_state_path
    from lowrank_helpers.training.stacking import train_stacked
    splits = text.split_text(TEXT, tune_chars=200)
    runs = [_tiny(0, 1e-2, factorize="both", rank=3, init="lora"),
            _tiny(1, 3e-3, factorize="both", rank=3, init="lora")]
    whole = train_stacked(runs, splits, dtype=torch.float64)
    path = stack_state_path(runs, tmp_path)
    assert path.parent == tmp_path / "stacks"

    def stop(n, steps=[0]):
        steps[0] += n
        if steps[0] == 4:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train_stacked(runs, splits, dtype=torch.float64, progress=stop, resume=path,
                      save_every=0)
    assert path.exists()
    other = stack_state_path(runs[:1], tmp_path)
    other.parent.mkdir(exist_ok=True)
    other.write_bytes(path.read_bytes())               # a file of other runs: not theirs
    counted = []
    again = train_stacked(runs, splits, dtype=torch.float64, progress=counted.append,
                          resume=path, save_every=0)
    assert counted == [4, 1, 1]                         # the 4 steps kept, then 5 and 6
    assert path.exists()          # saved after the last step: the caller removes it once kept
    counted.clear()               # stopped before the records were written: nothing retrains
    last = train_stacked(runs, splits, dtype=torch.float64, progress=counted.append,
                         resume=path)
    assert counted == [6]
    for a, b, c in zip(whole, again, last):
        assert [h["iter"] for h in b.history] == [h["iter"] for h in a.history]
        assert b.final["val_loss"] == pytest.approx(a.final["val_loss"], rel=1e-12)
        assert c.final["val_loss"] == pytest.approx(a.final["val_loss"], rel=1e-12)
        assert b.history[0]["train_loss"] == pytest.approx(a.history[0]["train_loss"])
    counted.clear()                         # float32 runs do not take a float64 stack's state
    train_stacked(runs, splits, progress=counted.append, resume=path)
    assert counted == [1] * 6
    restarted = []
    train_stacked(runs[:1], splits, dtype=torch.float64, progress=restarted.append,
                  resume=other)
    assert len(restarted) == 6                          # from step 1


def test_linear_students_are_a_task_of_the_one_trainer():
    """Alone (fit) and stacked (train_stacked) train the same student; the population loss is
    the squared error on fresh samples; a dense student learns the teacher."""
    from lowrank_helpers.core.protocol import RunConfig
    from lowrank_helpers.tasks.linear import linear_protocol
    from lowrank_helpers.training.stacking import train_stacked
    proto = linear_protocol(steps=40, batch_size=32, eval_every=20)
    runs = [RunConfig("linear_power", "lora", rank=4, init=i, shape=8, protocol=proto)
            for i in ("he", "lora")]
    data = runs[0].task_spec.load(proto)
    data64 = dataclasses.replace(data, dtype=torch.float64)
    alone = [lh.fit(r, data64, progress=False, dtype=torch.float64) for r in runs]
    stacked = train_stacked(runs, data64, dtype=torch.float64)
    for a, b in zip(alone, stacked):
        assert [h["iter"] for h in a.history] == [20, 40]
        assert b.final["val_loss"] == pytest.approx(a.final["val_loss"], rel=1e-9)
    model = alone[0].model
    x = torch.randn(20000, 8, dtype=torch.float64)
    sampled = ((model(x) - x @ data64(8)[0].T) ** 2).mean().item()
    assert sampled == pytest.approx(alone[0].final["val_loss"], rel=0.05)
    dense = lh.fit(RunConfig("linear_power", "full", shape=8, lr=3e-2,
                             protocol=linear_protocol(steps=300, batch_size=64)),
                   data, progress=False)
    assert dense.final["val_loss"] < 1e-3 < dense.init["val_loss"]
    with pytest.raises(ValueError, match="rank 9 is above d = 8"):
        RunConfig("linear_flat", "lora", rank=9, shape=8)
    with pytest.raises(ValueError, match="'cola' is not a linear layer"):
        RunConfig("linear_flat", "cola", rank=2, shape=8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_the_gpu_is_training_on_the_cpu():
    splits = text.split_text(TEXT, tune_chars=200)
    runs = [_tiny(0), _tiny(1, 3e-3)]
    cpu = lh.train_lms(runs, splits, dtype=torch.float64)
    gpu = lh.train_lms(runs, splits, dtype=torch.float64, device="cuda")
    for a, b in zip(cpu, gpu):
        assert b.device != "cpu"
        assert b.final["val_loss"] == pytest.approx(a.final["val_loss"], abs=1e-8)


def test_the_learned_part_is_stored_and_backfilled(tmp_path):
    """Dense records hold the singular values of W and of its learned part W − γ·W₀ (W₀
    rebuilt from the seed); a record written without the latter gets it by retraining,
    checked against its W."""
    from pathlib import Path
    from lowrank_helpers.models.charlm import spectra
    from lowrank_helpers.studies.lm import complete_analysis
    from lowrank_helpers.core.results import _write_atomic
    cfg = lh.LMStudyConfig(smoke=True, results_dir=str(tmp_path / "r"),
                           data_root=str(tmp_path / "data"), phases=("anchor",))
    runs = lh.run_lm_study(cfg, progress=False)
    path = runs.path.iloc[0]
    rec = lh.read_record(path)
    learned = rec["analysis"]["learned_singular_values"]
    run = lh.RunConfig.from_dict(rec["config"])
    assert rec["analysis"]["init_decay"] == pytest.approx(run.protocol.init_decay())
    assert max(max(v) for v in spectra(run.build(), run.build()).values()) == 0  # at init
    assert set(learned) == set(rec["analysis"]["singular_values"]) and max(learned["0.q"]) > 0
    # an older record without it: the anchor phase retrains and adds it, W unchanged
    del rec["analysis"]["learned_singular_values"]
    _write_atomic(rec, Path(path))
    lh.run_lm_study(cfg, progress=False)
    again = lh.read_record(path)["analysis"]
    assert max(abs(a - b) for k in learned
               for a, b in zip(learned[k], again["learned_singular_values"][k])) < 1e-5
    assert again["learned_from_retraining"]["max_singular_value_difference"] < 1e-4
    assert lh.reports.lm.energy_beyond(runs, (2,), "learned_singular_values")
    # a record whose W the retraining does not reproduce is left as it was
    rec = lh.read_record(path)
    del rec["analysis"]["learned_singular_values"]
    rec["analysis"]["singular_values"]["0.q"][0] += 1.0
    _write_atomic(rec, Path(path))
    with pytest.warns(UserWarning, match="another model"):
        refused = complete_analysis([run], cfg, text.split_text(
            text.corpus_path(cfg.corpus, cfg.data_root).read_text(), 0, cfg.corpus))
    assert refused == [Path(path).name]
    assert "learned_singular_values" not in lh.read_record(path)["analysis"]


def test_weight_decay_shrinks_the_init_by_gamma():
    """With zero gradients AdamW only decays: W_T = γ·W₀ exactly, so W − γ·W₀ is what the
    updates added (here nothing)."""
    proto = lh.LMProtocol(iters=30, lr=0.05, min_lr=0.005, warmup_steps=5)
    w0 = torch.randn(4, 3, dtype=torch.float64)
    w = w0.clone().unsqueeze(0)
    opt = lh.training.lm.StackedAdamW([w], [True], proto)
    for it in range(proto.steps):
        w.grad = torch.zeros_like(w)
        opt.step(torch.tensor([proto.lr_at(it, proto.steps)], dtype=torch.float64))
    torch.testing.assert_close(w[0], proto.init_decay() * w0, rtol=1e-12, atol=1e-12)
    assert 0 < proto.init_decay() < 1 and lh.LMProtocol(weight_decay=0).init_decay() == 1


def test_the_teacher_line_reports_every_student_and_an_upper_bound():
    import pandas as pd
    from lowrank_helpers.reports.lm import TEACHER_SCOPE, teacher_line
    students = pd.DataFrame({"spectrum": "flat", "init": "he", "rank": [1, 1, 2, 2],
                             "lr": [1e-3, 1e-2, 1e-3, 1e-2], "floor": 0.5,
                             "loss": [0.7, 0.5 + 1.448e-4, 0.5, 0.5 + 1e-5]})
    line = teacher_line(students)
    assert "1 of them end more than 0.001" in line
    assert "lr 0.001: 1 of 2 within" in line and "lr 0.01: both within" in line
    assert "≤ 1.5e-04" in line              # the largest best-rate excess, rounded up
    assert TEACHER_SCOPE in line and "find what a rank allows" not in line
