"""The one training loop and the one stacked path: every model of a stack ends where the loop
takes it alone (float64), on both tasks, under SGD with momentum and under AdamW, with frozen
parameters kept frozen; a method's hook runs every N steps."""
import os

import pytest
import torch

import lowrank_helpers as lh
from lowrank_helpers.tasks import text
from lowrank_helpers.training.stacking import train_stacked
from lowrank_helpers.training.trainer import fit

TEXT = text._stdlib_text()[:20000]


def _lm_runs(**kw):
    splits = text.split_text(TEXT, tune_chars=200)
    shape = lh.LMShape(2, 2, 16, 8, len(set(TEXT)))
    proto = lh.LMProtocol(iters=6, batch_size=3, lr=1e-2, min_lr=1e-3, warmup_steps=2,
                          grad_clip=0.05, tune_chars=200, eval_every=3, eval_windows=4, **kw)
    runs = [lh.LMRun("python_stdlib", shape, seed=s, protocol=proto, factorize="both",
                     rank=3, init=i) for s, i in ((0, "lora"), (1, "he"))]
    return [runs[0], runs[1].replace(lr=3e-3, min_lr=3e-4)], splits


def _mlp_runs(**kw):
    p = lh.Protocol(epochs=2, batch_size=64, lr=0.01, train_subset=512, test_subset=256,
                    val_size=64, shuffle=True, **kw)
    data = lh.TASKS["fashion_mnist"].load(p, os.environ["LOWRANK_DATA"]).to(dtype=torch.float64)
    runs = [lh.RunConfig(method="lora", rank=4, init="he", seed=s, protocol=p) for s in (0, 1)]
    return [runs[0], runs[1].replace(lr=0.003)], data


@pytest.mark.parametrize("case", ["lm", "mlp-sgd", "mlp-adamw"])
def test_a_stack_trains_each_model_as_the_loop_alone(case):
    runs, data = (_lm_runs() if case == "lm" else
                  _mlp_runs(optimizer="sgd", momentum=0.9, weight_decay=0.01)
                  if case == "mlp-sgd" else _mlp_runs(optimizer="adamw", weight_decay=0.01))
    stacked = train_stacked(runs, data, dtype=torch.float64)
    for run, st in zip(runs, stacked):
        alone = fit(run, data, dtype=torch.float64, progress=False)
        for (name, p), q in zip(alone.model.named_parameters(), st.model.parameters()):
            torch.testing.assert_close(p, q, atol=1e-10, rtol=0, msg=name)
        assert [h.keys() for h in alone.history] == [h.keys() for h in st.history]
        score = run.task_spec.score
        assert alone.history[-1][score] == pytest.approx(st.history[-1][score], abs=1e-9)
        assert alone.final[score] == pytest.approx(st.final[score], abs=1e-9)
        assert st.optimizer_state_bytes > 0 and st.engine == "stacked"


def test_frozen_parameters_stay_as_drawn_stacked_and_alone():
    runs, data = _lm_runs()

    def frozen(run):
        model = run.build()
        for m in model.modules():
            if isinstance(m, lh.LowRankLinear):
                m.A.requires_grad_(False)
        return model
    a0 = [m.A.detach().clone() for m in frozen(runs[0]).modules()
          if isinstance(m, lh.LowRankLinear)]
    alone = fit(runs[0], data, model=frozen(runs[0]), progress=False)
    after = [m.A for m in alone.model.modules() if isinstance(m, lh.LowRankLinear)]
    assert all(torch.equal(a, b) for a, b in zip(a0, after))
    assert any(not torch.equal(m.B, frozen(runs[0]).get_submodule(n).B) for n, m in
               alone.model.named_modules() if isinstance(m, lh.LowRankLinear))


def test_a_methods_hook_runs_every_n_steps_and_its_groups_are_used():
    """after_step runs at steps every, 2·every, …; the method's groups reach the optimizer."""
    calls, seen = [], []

    class Counting(lh.Method):
        def groups(self, model, run, base):
            b = [p for n, p in model.named_parameters() if n.endswith(".B")]
            rest = [p for n, p in model.named_parameters() if not n.endswith(".B")]
            return [{"params": rest}, {"params": b, "lr": 4 * run.lr}]

        def after_step(self, model, optimizer, step, run):
            calls.append(step)
            seen.append([g["lr"] for g in optimizer.param_groups])
    lh.register_method(Counting("counting", "counting layers", factorized=True,
                                default_init="lora", every=2))
    try:
        assert not lh.METHODS["counting"].stackable
        runs, data = _lm_runs()
        fit(runs[0].replace(method="counting"), data, progress=False)
        assert calls == [2, 4, 6]
        assert all(b == pytest.approx(4 * a) for a, b in seen)
        with pytest.raises(ValueError, match="changes the training step"):
            train_stacked([runs[0].replace(method="counting")], data)
    finally:
        lh.METHODS.pop("counting")


@pytest.mark.parametrize("kw", [{"optimizer": "sgd", "momentum": 0.9, "weight_decay": 0.01},
                                {"optimizer": "adamw", "weight_decay": 0.01}])
def test_ranks_padded_into_one_stack_train_as_alone(kw):
    """Models of ranks 1, 2 and 4 padded to 4 with zeros: the padding gets no gradient, so each
    ends where it would alone, at its own rank."""
    runs, data = _mlp_runs(**kw)
    runs = [runs[0].replace(rank=r, seed=i) for i, r in enumerate((1, 2, 4))]
    stacked = train_stacked(runs, data, dtype=torch.float64, pad=True)
    for run, st in zip(runs, stacked):
        alone = fit(run, data, dtype=torch.float64, progress=False)
        for (name, p), q in zip(alone.model.named_parameters(), st.model.parameters()):
            assert p.shape == q.shape, name
            torch.testing.assert_close(p, q, atol=1e-10, rtol=0, msg=name)
        assert alone.final["test_loss"] == pytest.approx(st.final["test_loss"], abs=1e-9)
