"""The extensions' defining mechanisms (issue 20), each a method of its own module: LoRA+'s
rates, CoLA's bottleneck nonlinearity and init, SLTrain's fixed sparse support. CPU, tiny
sizes, fixed seeds."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import lowrank_helpers as lh
from lowrank_helpers.core.protocol import RunConfig
from lowrank_helpers.tasks import text
from lowrank_helpers.training.trainer import fit, param_groups

TEXT = text._stdlib_text()[:20000]
SHAPE = lh.LMShape(1, 2, 16, 8, len(set(TEXT)))


def _lm(method, **kw):
    proto = lh.LMProtocol(iters=5, batch_size=3, lr=1e-2, min_lr=1e-3, warmup_steps=1,
                          tune_chars=200, eval_every=5, eval_windows=4)
    return RunConfig("python_char", method, 4, shape=SHAPE, protocol=proto, **kw), \
        text.split_text(TEXT, tune_chars=200)


# -- LoRA+ --------------------------------------------------------------------------------------
def test_loraplus_puts_every_b_at_lambda_times_the_rate_and_keeps_the_rest():
    run, _ = _lm("loraplus", options={"loraplus_ratio": 4.0})
    model = run.build()
    groups = param_groups(model, run)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(names.values())                     # each tensor once
    base = {id(p): g["weight_decay"] for g in run.task_spec.param_groups(model, run.protocol)
            for p in g["params"]}
    for g in groups:
        for p in g["params"]:
            b = names[id(p)].endswith(".B")
            assert g["lr"] == pytest.approx(4 * run.lr if b else run.lr), names[id(p)]
            assert g["weight_decay"] == base[id(p)]                   # the task's decay split
    assert not lh.METHODS["loraplus"].stackable


def test_loraplus_at_lambda_one_trains_as_the_lora_layers():
    run, data = _lm("loraplus", options={"loraplus_ratio": 1.0})
    lora = run.replace(method="lora", options={})
    a, b = fit(run, data, progress=False), fit(lora, data, progress=False)
    assert a.history[-1]["train_loss"] == pytest.approx(b.history[-1]["train_loss"], abs=1e-6)
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=n)


def test_loraplus_takes_only_a_positive_ratio():
    with pytest.raises(ValueError, match="loraplus_ratio must be a positive number"):
        _lm("loraplus", options={"loraplus_ratio": 0})
    with pytest.raises(ValueError, match="takes no option 'loraplus_ratio'"):
        _lm("lora", options={"loraplus_ratio": 2.0})


# -- CoLA ---------------------------------------------------------------------------------------
def test_cola_is_b_silu_a_x_with_the_papers_balanced_init():
    from lowrank_helpers.methods.cola import CoLALinear
    torch.manual_seed(0)
    layer = CoLALinear(300, 500, 16, bias=True)
    x = torch.randn(7, 300)
    torch.testing.assert_close(layer(x), F.silu(x @ layer.A.T) @ layer.B.T + layer.bias)
    s = (300 + 500) ** -0.25 / 16 ** 0.25
    for f in (layer.A, layer.B):                           # each factor N(0, s²)
        assert f.std().item() == pytest.approx(s, rel=0.05) and abs(f.mean().item()) < s / 20
    assert (layer.bias.abs() <= 1 / math.sqrt(500)).all()
    run, data = _lm("cola")
    res = fit(run, data, progress=False)                   # trains, alone
    assert math.isfinite(res.final["val_loss"]) and not lh.METHODS["cola"].stackable


# -- SLTrain ------------------------------------------------------------------------------------
def test_sltrain_is_scaled_ba_plus_a_sparse_s_whose_support_stays_fixed():
    from lowrank_helpers.methods.sltrain import ALPHA, DENSITY, SparsePlusLowRankLinear
    torch.manual_seed(0)
    layer = SparsePlusLowRankLinear(40, 30, 4, bias=False)
    assert len(layer.support) == int(DENSITY * 40 * 30) and (layer.B == 0).all()
    x = torch.randn(5, 40)
    W = ALPHA / 4 * layer.B @ layer.A + layer.sparse()
    torch.testing.assert_close(layer(x), x @ W.T)
    assert [n for n, p in layer.named_parameters()] == ["A", "B", "values"]
    off = torch.ones(30 * 40, dtype=torch.bool)
    off[layer.support] = False
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    for _ in range(3):                                       # train: S stays on its support
        opt.zero_grad()
        layer(x).pow(2).sum().backward()
        opt.step()
    assert (layer.B != 0).any()                              # the low-rank part moved
    S = layer.weight() - ALPHA / 4 * layer.B @ layer.A
    assert S.flatten()[off].abs().max() < 1e-5
    torch.testing.assert_close(S, layer.sparse(), atol=1e-5, rtol=1e-5)
    run, data = _lm("sltrain", seed=3)
    a, b = run.build(), run.build()
    s1 = [m.support for m in a.modules() if hasattr(m, "support")]
    assert s1 and all(torch.equal(u, m.support) for u, m in
                      zip(s1, [m for m in b.modules() if hasattr(m, "support")]))  # seeded
    assert math.isfinite(fit(run, data, progress=False).final["val_loss"])


def test_sltrain_density_and_alpha_are_run_options():
    """δ and α as options: another δ redraws each support (seeded) at that size; α sets the
    scale α/r; the defaults leave the run's id as it was; bad values are refused."""
    from lowrank_helpers.methods.sltrain import ALPHA, DENSITY, SparsePlusLowRankLinear
    plain, _ = _lm("sltrain")
    assert _lm("sltrain", options={"sltrain_density": DENSITY,
                                   "sltrain_alpha": ALPHA})[0].run_id == plain.run_id
    run, _ = _lm("sltrain", options={"sltrain_density": 0.25, "sltrain_alpha": 8.0})
    assert run.run_id != plain.run_id
    layers = [m for m in run.build().modules() if isinstance(m, SparsePlusLowRankLinear)]
    again = [m for m in run.build().modules() if isinstance(m, SparsePlusLowRankLinear)]
    for m, n in zip(layers, again):
        assert len(m.support) == int(0.25 * m.in_features * m.out_features)
        assert len(m.values) == len(m.support) and m.scale == 8.0 / m.rank
        assert torch.equal(m.support, n.support) and torch.equal(m.values, n.values)
    assert not torch.equal(layers[0].support[:5], layers[1].support[:5])  # each its own
    for bad in ({"sltrain_density": 1.5}, {"sltrain_alpha": 0}, {"sltrain_alpha": True}):
        with pytest.raises(ValueError, match="sltrain_"):
            _lm("sltrain", options=bad)


# -- GaLore -------------------------------------------------------------------------------------
def _galore_layer(m, n, rank, every=2, scale=0.25, sgd=False, lr=1e-2, wd=0.0):
    from lowrank_helpers.methods.galore import GaLoreOptimizer
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(m, n))
    opt = GaLoreOptimizer([{"params": [W], "rank": rank, "every": every, "scale": scale}],
                          lr=lr, betas=(0.9, 0.99), weight_decay=wd, sgd=sgd)
    return W, opt


def test_galore_update_is_the_projected_adam_step_and_its_state_is_r_by_n():
    from lowrank_helpers.methods.galore import projector
    for m, n in ((12, 7), (7, 12)):
        W, opt = _galore_layer(m, n, 3, wd=0.1)
        grads = [torch.randn(m, n, generator=torch.Generator().manual_seed(k)) for k in range(3)]
        ref = W.detach().clone()
        mom, sq = None, None
        for t, g in enumerate(grads, start=1):
            if (t - 1) % 2 == 0:
                P = projector(g, 3)
            low = g @ P if m >= n else P.T @ g
            mom = 0.1 * low if mom is None else 0.9 * mom + 0.1 * low
            sq = 0.01 * low ** 2 if sq is None else 0.99 * sq + 0.01 * low ** 2
            step = 1e-2 * math.sqrt(1 - 0.99 ** t) / (1 - 0.9 ** t)
            norm = mom / (sq.sqrt() + 1e-8)
            back = norm @ P.T if m >= n else P @ norm
            ref = ref - step * 0.25 * back
            ref = ref - 1e-2 * 0.1 * ref
            W.grad = g.clone()
            opt.step()
            torch.testing.assert_close(W.detach(), ref, atol=1e-6, rtol=1e-5)
        state = opt.state[W]
        assert state["exp_avg"].shape == ((m, 3) if m >= n else (3, n))


def test_galore_at_full_rank_with_scale_one_and_plain_sgd_is_sgd():
    W, opt = _galore_layer(9, 6, 6, every=1, scale=1.0, sgd=True, lr=0.1)
    V = torch.nn.Parameter(W.detach().clone())
    sgd = torch.optim.SGD([V], lr=0.1)
    for k in range(4):
        g = torch.randn(9, 6, generator=torch.Generator().manual_seed(k))
        W.grad, V.grad = g.clone(), g.clone()
        opt.step()
        sgd.step()
        torch.testing.assert_close(W.detach(), V.detach(), atol=1e-5, rtol=1e-5)


def test_galore_projects_only_the_target_layers_and_trains_on_both_tasks():
    run, data = _lm("galore")
    model = run.build()
    groups = param_groups(model, run)
    ranked = [p for g in groups if "rank" in g for p in g["params"]]
    assert len(ranked) == 6 * SHAPE.n_layer and all(p.dim() == 2 for p in ranked)
    assert all(g["rank"] == 4 and g["every"] == 200 and g["scale"] == 0.25
               for g in groups if "rank" in g)
    assert all(type(m) is not lh.LowRankLinear for m in model.modules())   # W stays dense
    res = fit(run, data, progress=False)
    assert math.isfinite(res.final["val_loss"]) and not lh.METHODS["galore"].stackable
    dense = fit(run.replace(method="full", rank=None, init=None, targets=None), data,
                progress=False)
    assert res.optimizer_state_bytes < dense.optimizer_state_bytes
    mlp = RunConfig("fashion_mnist", "galore", 8, widths=(784, 32, 10))
    assert sum(p.numel() for p in mlp.build().parameters()) == 784 * 32 + 32 + 32 * 10 + 10
    with pytest.raises(ValueError, match="rank must be an integer"):
        RunConfig("fashion_mnist", "galore", None)


def _reference_galore():
    """``galore_torch``'s ``GaLoreAdamW`` from its own files, without the package's
    ``__init__`` (which imports bitsandbytes and transformers' 8-bit optimizers): its
    ``adamw.py`` needs only ``transformers.utils.versions.require_version``, stubbed here when
    transformers is absent."""
    import importlib
    import importlib.util
    import sys
    import types
    spec = importlib.util.find_spec("galore_torch")
    if spec is None:
        pytest.skip("opt-in cross-check: pip install --no-deps galore-torch")
    if importlib.util.find_spec("transformers") is None:
        for name in ("transformers", "transformers.utils", "transformers.utils.versions"):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules["transformers.utils.versions"].require_version = lambda *a, **k: None
    pkg = types.ModuleType("galore_torch")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("galore_torch", pkg)
    return importlib.import_module("galore_torch.adamw").AdamW


def test_galore_matches_the_reference_package():
    """Opt-in (galore-torch installed): the official GaLore AdamW and this one take the same
    steps from the same weights and gradients, on both orientations of W."""
    Reference = _reference_galore()
    for m, n in ((12, 7), (7, 12)):
        W, opt = _galore_layer(m, n, 3, every=2, scale=0.25, wd=0.1)
        V = torch.nn.Parameter(W.detach().clone())
        ref = Reference([{"params": [V], "rank": 3, "update_proj_gap": 2, "scale": 0.25,
                          "proj_type": "std"}], lr=1e-2, betas=(0.9, 0.99), eps=1e-8,
                        weight_decay=0.1, no_deprecation_warning=True)
        for k in range(5):
            g = torch.randn(m, n, generator=torch.Generator().manual_seed(k))
            W.grad, V.grad = g.clone(), g.clone()
            opt.step()
            ref.step()
            torch.testing.assert_close(W.detach(), V.detach(), atol=1e-5, rtol=1e-4)


# -- ReLoRA -------------------------------------------------------------------------------------
def test_a_relora_merge_leaves_the_function_unchanged_and_resets_the_factors():
    from lowrank_helpers.methods.relora import ReLoRALinear
    torch.manual_seed(0)
    layer = ReLoRALinear(12, 9, 3, bias=True)
    with torch.no_grad():
        layer.B.normal_()                                  # a trained low-rank part
    x = torch.randn(4, 12)
    before, W0 = layer(x), layer.weight.detach().clone()
    update = layer.scale * layer.B.detach() @ layer.A.detach()
    layer.merge(torch.Generator().manual_seed(1))
    torch.testing.assert_close(layer(x), before, atol=1e-5, rtol=1e-5)   # same function
    torch.testing.assert_close(layer.weight, W0 + update)
    assert (layer.B == 0).all() and layer.A.abs().sum() > 0 and not layer.weight.requires_grad


def test_relora_merges_every_t_steps_with_a_jagged_schedule_and_fresh_factor_state():
    run, data = _lm("relora", options={"relora_every": 2, "relora_rewarm": 3})
    m = lh.METHODS["relora"]
    assert [m.lr_factor(s, run) for s in range(7)] == [1, 1, .25, .5, .25, .5, .25]
    model = run.build()
    W0 = [l.weight.detach().clone() for l in model.modules() if hasattr(l, "merge")]
    res = fit(run, data, model=model, progress=False)       # 5 steps: merges after 2 and 4
    layers = [l for l in res.model.modules() if hasattr(l, "merge")]
    assert len(layers) == 6 * SHAPE.n_layer
    assert all(not torch.equal(w, l.weight) for w, l in zip(W0, layers))   # W moved by merges
    assert math.isfinite(res.final["val_loss"]) and not m.stackable
    # between merges W does not train: one step, no merge, W unchanged
    one = fit(run.replace(steps=1), data, progress=False)
    W1 = [l.weight for l in one.model.modules() if hasattr(l, "merge")]
    W_init = [l.weight for l in run.replace(steps=1).build().modules() if hasattr(l, "merge")]
    assert all(torch.equal(a, b) for a, b in zip(W1, W_init))


def test_relora_resets_the_factors_optimizer_state_at_a_merge():
    run, _ = _lm("relora", options={"relora_every": 1})
    model = run.build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, SHAPE.vocab_size, (2, SHAPE.block_size))
    model(x).sum().backward()
    opt.step()
    layer = next(l for l in model.modules() if hasattr(l, "merge"))
    assert layer.A in opt.state
    lh.METHODS["relora"].after_step(model, opt, 1, run)
    for p in (layer.A, layer.B):                           # as a fresh state, its size kept
        st = opt.state[p]
        assert int(st["step"]) == 0 and not st["exp_avg"].any() and not st["exp_avg_sq"].any()
    assert opt.state[model.wte.weight]["exp_avg"].any()    # every other tensor keeps its state
    fresh = torch.optim.AdamW([torch.nn.Parameter(layer.A.detach().clone())], lr=1e-3)
    fresh.param_groups[0]["params"][0].grad = torch.ones_like(layer.A)
    layer.A.grad = torch.ones_like(layer.A)
    before = layer.A.detach().clone()
    opt.step()
    fresh.step()                                           # the reset state steps as a new one
    torch.testing.assert_close(layer.A.detach() - before,
                               fresh.param_groups[0]["params"][0].detach() - before)


def test_relora_rates_return_to_the_schedule_after_a_rewarm_on_a_constant_protocol():
    """The trainer sets the rate whenever a method's factor changes, so that after a re-warm-up
    the optimizer is back at the protocol's rate (a constant protocol sets it only once)."""
    import os
    seen = []

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)
    p = lh.Protocol(epochs=1, batch_size=64, lr=0.01, train_subset=640, test_subset=64)
    run = RunConfig("fashion_mnist", "relora", 4, widths=(784, 16, 10), protocol=p,
                    options={"relora_every": 3, "relora_rewarm": 2})
    data = lh.TASKS["fashion_mnist"].load(p, os.environ["LOWRANK_DATA"])
    m = lh.METHODS["relora"]
    original = m.make_optimizer
    object.__setattr__(m, "make_optimizer",
                       lambda params, r: Spy(params, lr=r.protocol.lr))
    try:
        fit(run, data, progress=False)
    finally:
        object.__setattr__(m, "make_optimizer", original)
    expect = [0.01 * m.lr_factor(s, run) for s in range(10)]
    assert seen == pytest.approx(expect), (seen, expect)
    assert seen[3] < 0.01 and seen[5] == pytest.approx(0.01)   # re-warmed, then back at lr


# -- LORO ---------------------------------------------------------------------------------------
from lowrank_helpers.methods.loro import LOROAdamW, exact_step  # noqa: E402


def _tangent(B, A, G):
    """P(G) at W = B·A, formed densely: U UᵀG + G V Vᵀ − U UᵀG V Vᵀ."""
    U, _ = torch.linalg.qr(B)
    V, _ = torch.linalg.qr(A.T)
    return U @ U.T @ G + G @ V @ V.T - U @ U.T @ G @ V @ V.T


def test_loro_exact_step_is_the_truncated_retraction_of_the_tangent_step():
    g = torch.Generator().manual_seed(0)
    B, A = torch.randn(9, 3, generator=g, dtype=torch.float64), \
        torch.randn(3, 7, generator=g, dtype=torch.float64)
    G = torch.randn(9, 7, generator=g, dtype=torch.float64)
    lr = 0.3
    B2, A2 = exact_step(B, A, G @ A.T, B.T @ G, lr)              # the factors' gradients
    U, s, Vh = torch.linalg.svd(B @ A - lr * _tangent(B, A, G))
    best = U[:, :3] * s[:3] @ Vh[:3]                              # its rank-3 truncation
    torch.testing.assert_close((B2 @ A2).double(), best, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(B2.T @ B2, A2 @ A2.T, atol=1e-5, rtol=1e-5)   # balanced
    B0, A0 = exact_step(B, A, G @ A.T, B.T @ G, 0.0)              # no step: the same W
    torch.testing.assert_close((B0 @ A0).double(), B @ A, atol=1e-5, rtol=1e-5)


def test_loro_lazy_steps_are_adam_at_r_over_d_and_the_exact_step_resets_the_state():
    run, data = _lm("loro", options={"loro_every": 3})
    model = run.build()
    layers = [m for m in model.modules() if isinstance(m, lh.LowRankLinear)]
    assert layers and all(m.rank == 4 for m in layers)
    groups = param_groups(model, run)
    [factors] = [g for g in groups if g.get("pairs")]
    assert factors["scalers"] == [4 / min(m.in_features, m.out_features) for m in layers]
    named = {id(p) for m in layers for p in (m.A, m.B)}
    assert {id(p) for p in factors["params"]} == named
    assert not any(id(p) in named for g in groups if not g.get("pairs") for p in g["params"])
    opt = lh.METHODS["loro"].make_optimizer(groups, run)
    assert isinstance(opt, LOROAdamW) and opt.every == 3
    # one lazy step of a factor: Adam's first step at the rate times its scaler
    layer, scale = layers[0], factors["scalers"][0]
    before = layer.A.detach().clone()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    gA = layer.A.grad.clone()
    opt.step()
    lr, wd, eps = factors["lr"], factors["weight_decay"], 1e-8
    expect = before - lr * scale * gA / (gA.abs() + eps)
    expect = expect - lr * wd * expect
    torch.testing.assert_close(layer.A.detach(), expect)
    opt.step()
    assert opt.state                                              # moments kept
    B0, A0 = layer.B.detach().clone(), layer.A.detach().clone()
    st = {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
          for p in (layer.B, layer.A)}
    opt.step()                                                    # the third: exact
    # the exact step from Adam's directions m/(√v+ε) at the bias-corrected rate, no r/d scaler
    beta1, beta2 = factors["betas"]
    dirs = []
    for p in (layer.B, layer.A):
        m = beta1 * st[p]["exp_avg"] + (1 - beta1) * p.grad
        v = beta2 * st[p]["exp_avg_sq"] + (1 - beta2) * p.grad ** 2
        dirs.append(m / (v.sqrt() + eps))
    corr = math.sqrt(1 - beta2 ** 3) / (1 - beta1 ** 3)
    Be, Ae = exact_step(B0, A0, dirs[0], dirs[1], lr * corr)
    torch.testing.assert_close(layer.B.detach() @ layer.A.detach(), Be @ Ae, atol=1e-5,
                               rtol=1e-4)
    state = opt.state[layer.A]                                    # every state reset, kept
    assert state["step"] == 0 and not state["exp_avg"].any()
    from lowrank_helpers.methods import optimizer_state_bytes
    assert optimizer_state_bytes(opt) > 0                         # still measured
    # the schedule re-warms after each exact step
    m = lh.METHODS["loro"]
    assert m.lr_factor(2, run) == 1 and m.lr_factor(3, run) == pytest.approx(1 / 6)
    assert m.lr_factor(4, run) == pytest.approx(2 / 6)


def test_loro_at_a_rank_no_smaller_than_a_layer_takes_the_lazy_step_there():
    """The MLP's 10-way output layer at r = 32: no proper rank-32 manifold, no exact step."""
    import os
    p = lh.Protocol(epochs=1, batch_size=64, optimizer="adamw", lr=1e-3, train_subset=256,
                    test_subset=64)
    run = RunConfig("fashion_mnist", "loro", 32, widths=(784, 64, 10), protocol=p,
                    options={"loro_every": 2})
    data = lh.TASKS["fashion_mnist"].load(p, os.environ["LOWRANK_DATA"])
    result = fit(run, data, progress=False)
    assert math.isfinite(result.history[-1]["train_loss"])


def test_loro_trains_and_refuses_bad_input():
    run, data = _lm("loro", options={"loro_every": 2})
    result = fit(run, data, progress=False)
    assert math.isfinite(result.history[-1]["train_loss"])
    assert not lh.METHODS["loro"].stackable
    with pytest.raises(ValueError, match="loro_every must be a non-negative integer"):
        _lm("loro", options={"loro_every": -1})
    sgd = run.replace(protocol=dataclasses.replace(run.protocol, optimizer="sgd"))
    with pytest.raises(ValueError, match="LORO takes adamw"):
        lh.METHODS["loro"].make_optimizer(param_groups(sgd.build(), sgd), sgd)


# -- AdaLoRA ------------------------------------------------------------------------------------
from lowrank_helpers.methods.adalora import AdaLoRALinear, RankAllocator, budget  # noqa: E402


def test_adalora_budget_is_cubic_between_its_phases():
    kw = dict(total=100, b0=30, bT=10, tinit=10, tfinal=40)
    assert budget(0, **kw) == (30, False) and budget(10, **kw) == (30, False)
    assert budget(60, **kw) == (10, True) and budget(99, **kw) == (10, True)
    assert budget(59, **kw) == (10, False)                  # before it: masked every ΔT only
    b, mask = budget(35, **kw)                           # halfway through the reduction
    assert b == int(10 + 20 * 0.5 ** 3) and not mask
    assert budget(40, **kw) == (int(10 + 20 * (1 - 30 / 50) ** 3), True)   # every ΔT = 10


def test_adalora_masks_the_lowest_scored_triplets_to_the_budget_over_all_layers():
    torch.manual_seed(0)
    layers = [AdaLoRALinear(16, 12, 12), AdaLoRALinear(12, 16, 12)]
    assert all(torch.allclose(m.B.T @ m.B, torch.eye(12), atol=1e-5) for m in layers)  # P, Q
    alloc = RankAllocator(layers, target=4, total=60)     # b0 24, bT 8; tinit 10, tfinal 30
    for m in layers:
        for p in (m.A, m.E, m.B):
            p.grad = torch.randn_like(p)
    alloc.step(5)                                         # warm-up: scores, no mask
    assert sum(m.kept() for m in layers) == 24
    # the score by hand after one update from zero: I = 0.15 s, U = 0.15 |s − I|, score I·U;
    # a triplet's: E_i's + the mean over A's row i + the mean over B's column i
    def hand(p):
        sens = (p * p.grad).abs()
        return (0.15 * sens) * (0.15 * (sens - 0.15 * sens).abs())
    expect = torch.cat([hand(m.E) + hand(m.A).mean(1) + hand(m.B).mean(0) for m in layers])
    torch.testing.assert_close(alloc.scores(), expect)
    b = alloc.step(20)                                    # a masking step of the reduction
    assert b == budget(20, 60, 24, 8, 10, 30)[0] and 8 < b < 24
    zero = torch.cat([m.E == 0 for m in layers])
    assert int(zero.sum()) == 24 - b
    assert set(torch.nonzero(zero).flatten().tolist()) == \
        set(torch.argsort(alloc.scores())[:24 - b].tolist())
    assert alloc.step(31) == 8 and sum(m.kept() for m in layers) == 8   # final phase: b_T
    fixed = [m.E == 0 for m in layers]
    for m in layers:
        m.E.data.fill_(1.0)                               # a step revives them ...
    alloc.step(45)
    assert [torch.equal(m.E == 0, f) for m, f in zip(layers, fixed)] == [True, True]  # same mask


def test_adalora_caps_a_small_layers_triplets_at_its_singular_values():
    """The MLP's 10-way output layer at r = 32: r₀ = min(48, 10), its target 10, no dead
    triplet; the budget b_T = Σ min(r, d_in, d_out)."""
    from lowrank_helpers.methods.adalora import initial_rank
    assert initial_rank(32, 512, 10) == 10 and initial_rank(32, 784, 512) == 48
    torch.manual_seed(0)
    layers = [AdaLoRALinear(64, 64, initial_rank(32, 64, 64)),
              AdaLoRALinear(64, 10, initial_rank(32, 64, 10))]
    assert [m.rank for m in layers] == [48, 10] and layers[1].kept() == 10
    alloc = RankAllocator(layers, target=32, total=60)
    assert (alloc.b0, alloc.bT) == (58, 42)


def test_adalora_trains_with_its_penalty_in_the_loss_and_records_each_layers_rank():
    proto = lh.LMProtocol(iters=12, batch_size=3, lr=1e-2, min_lr=1e-3, warmup_steps=1,
                          tune_chars=200, eval_every=6, eval_windows=4)
    run = RunConfig("python_char", "adalora", 4, shape=SHAPE, protocol=proto)
    data = text.split_text(TEXT, tune_chars=200)
    model = run.build()
    layers = [m for m in model.modules() if isinstance(m, AdaLoRALinear)]
    assert layers and all(m.rank == 6 for m in layers)     # r₀ = ⌈1.5·4⌉
    m = lh.METHODS["adalora"]
    terms = [torch.linalg.matrix_norm(x) for layer in layers for x in
             (layer.A @ layer.A.T - torch.eye(6), layer.B.T @ layer.B - torch.eye(6))]
    assert m.penalty(model, run).item() == pytest.approx(0.1 * torch.stack(terms).mean().item(),
                                                         abs=1e-7)
    result = fit(run, data, progress=False)
    ranks = result.analysis["adalora_ranks"]
    assert len(ranks) == len(layers) and result.analysis["adalora_total_rank"] == 4 * len(layers)
    assert sum(ranks.values()) == 4 * len(layers)          # the target budget, spread by need
    free = fit(run.replace(options={"adalora_orth": 0.0}), data, progress=False)
    a = dict(result.model.named_parameters())
    assert any(not torch.allclose(a[n], p) for n, p in free.model.named_parameters()
               if n.endswith(".A"))                       # the penalty changed the training
    assert not m.stackable
    from lowrank_helpers.methods import optimizer_state_bytes
    ema = 2 * 4 * sum(p.numel() for layer in layers for p in (layer.A, layer.E, layer.B))
    opt = torch.optim.AdamW(result.model.parameters())
    assert m.state_bytes(result.model, opt) == optimizer_state_bytes(opt) + ema  # EMAs counted
    assert result.optimizer_state_bytes > ema
    with pytest.raises(ValueError, match="adalora_orth must be a non-negative number"):
        run.replace(options={"adalora_orth": -1.0})


# -- the comparison -----------------------------------------------------------------------------
def test_the_extensions_study_trains_resumes_and_reports_each_model(tmp_path):
    from dataclasses import replace
    from lowrank_helpers.reports.extensions import ext_name, extensions_markdown, \
        extensions_table
    from lowrank_helpers.studies.extensions import ExtensionsConfig, plan_jobs, run_extensions
    cfg = ExtensionsConfig(smoke=True, results_dir=str(tmp_path / "ext"),
                           lm_dir=str(tmp_path / "lm"))
    assert cfg.models == ("adalora",) and cfg.lm_dir.endswith("smoke") and cfg.refine == 0
    cfg = replace(cfg, models=("loro", "adalora"))
    assert [j.name for j in plan_jobs(cfg)] == ["loro", "adalora"]
    assert plan_jobs(cfg)[0].config.models == ("loro",)       # a job keeps its own model
    with pytest.raises(ValueError, match="smoke mode sets refine itself"):
        ExtensionsConfig(smoke=True, refine=3.0)
    cfg = replace(cfg, models=("loro",), parts=("lm",))
    runs = run_extensions(cfg, progress=False)
    assert set(runs.method) == {"loro"} and set(runs["rank"]) == set(cfg.ranks)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ext").rglob("*.json")}
    run_extensions(cfg, progress=False)                       # resumed: nothing retrained
    assert before == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ext").rglob("*.json")}
    table = extensions_table(cfg)                              # no LM records: its rows only
    assert list(table.name) == ["loro"] * len(cfg.ranks) and (table.seeds == cfg.seeds).all()
    text = extensions_markdown(table)
    assert text.count("| loro |") == len(cfg.ranks)
    assert (table.total_parameters == table.parameters).all()   # LORO freezes nothing
    import json
    from pathlib import Path
    from lowrank_helpers.reports.extensions import total_parameters
    record = json.loads(Path(runs.iloc[0].path).read_text())
    relora = lh.RunConfig.from_dict({**record["config"], "method": "relora"})
    model = relora.build()
    assert sum(p.numel() for p in model.parameters() if not p.requires_grad) > 0   # its W
    path = tmp_path / "relora.json"
    path.write_text(json.dumps({**record, "config": relora.to_dict(), "run_id": relora.run_id}))
    assert total_parameters(path) == sum(p.numel() for p in model.parameters())
    assert ext_name("loraplus", {}) == "loraplus16"            # λ = 16 is the default
    assert ext_name("loraplus", {"loraplus_ratio": 4.0}) == "loraplus4"
    assert ext_name("lora", {}) is None
    with pytest.raises(ValueError, match="models"):
        ExtensionsConfig(models=("nope",))


def test_the_extensions_mlp_part_trains_on_the_tuned_adamw_protocol(tmp_path):
    from dataclasses import replace
    from lowrank_helpers.core.results import load_records
    from lowrank_helpers.reports.extensions import comparisons, extensions_markdown, mlp_table
    from lowrank_helpers.reports.extensions_answer import gap_summary
    from lowrank_helpers.studies.extensions import ExtensionsConfig, run_extensions
    from lowrank_helpers.studies.tuned import GRIDS
    cfg = replace(ExtensionsConfig(smoke=True, results_dir=str(tmp_path / "ext"),
                                   tuned_dir=str(tmp_path / "tuned")),
                  models=("adalora",), parts=("mlp",))
    assert cfg.mlp_dir == str(tmp_path / "ext" / "smoke" / "mlp")
    run_extensions(cfg, progress=False)
    runs = load_records(cfg.mlp_config().results_dir)
    assert set(runs.method) == {"adalora", "full", "lora", "ae"}   # with its own baselines
    assert set(runs.optimizer) == {"adamw"}
    for _, g in runs[runs.seed == 0].groupby("model_key"):
        assert set(g.lr) >= set(GRIDS["adamw"])                # the tuned study's grid, each
    ada = runs[runs.method == "adalora"]
    assert all(a and a["adalora_total_rank"] == 4 * 3 for a in ada.analysis)  # 3 layers
    table = mlp_table(cfg)
    # the narrower dense model of plain B·A's parameter count (equal parameters), after dense
    narrow = "narrow dense (widths 784-15-15-10)"
    assert list(table.name) == ["dense", narrow, "B·A (lora init)", "B·A (default init)",
                                "adalora"]
    plain = table[table.name == "B·A (lora init)"].parameters.iloc[0]
    assert abs(table.parameters[1] / plain - 1) <= 0.10
    assert (table.seeds[:4] == cfg.seeds).all()                # the baselines: the seed rule
    assert table.seeds.iloc[4] in (cfg.seeds, cfg.close_seeds)  # a close call's extra seeds count
    assert "| adalora | 4 |" in extensions_markdown(table, "mlp")
    tests = comparisons(table)
    assert set(tests[tests.name == narrow].against) == {"dense"}
    assert set(tests[tests.name == "B·A (lora init)"].against) == {
        "dense", "B·A (default init)", narrow}
    # adalora's trainable parameters (r0 = 1.5 r, and Λ) are not plain B·A's: no narrow test
    assert narrow not in set(tests[tests.name == "adalora"].against)
    summary = gap_summary(table, "mlp", models=("adalora",))
    assert "*At equal steps*, against dense: **detectably better**:" in summary
    assert "Not compared (no narrower dense model of its parameters in the records): " \
        "adalora r=4." in summary
    # the baselines start from another folder's records of the same runs (the tuned study's)
    from lowrank_helpers.studies.extensions import _adopt, mlp_baselines
    base = runs[runs.method != "adalora"]
    assert _adopt(mlp_baselines(cfg), cfg.mlp_config().results_dir, tmp_path / "copy") == \
        len(base)
    assert _adopt(mlp_baselines(cfg), cfg.mlp_config().results_dir, tmp_path / "copy") == 0
    assert set(load_records(tmp_path / "copy").run_id) == set(base.run_id)


def test_each_method_counts_its_own_training_flops():
    """Per token: 6 × the projections' parameters for dense and B·A (and for the methods
    computing just that: CoLA, LORO, GaLore's dense W), the frozen W's 4× plus B·A's 6× for
    ReLoRA, SLTrain's formed dense W, AdaLoRA's initial rank with Λ."""
    from lowrank_helpers.models.charlm import lm_training_flops
    shape = lh.LMShape(2, 2, 32, 16, 40)

    def flops(method, rank=8):
        run = RunConfig("shakespeare_char", method, None if method == "full" else rank,
                        shape=shape)
        return run.task_spec.training_flops(run)
    dense, lowrank = flops("full"), flops("lora")
    assert lowrank == lm_training_flops(shape, "both", 8) == \
        lm_training_flops(shape, "both", 8, macs=lambda i, o: 3 * 8 * (i + o))
    assert flops("cola") == flops("loro") == lowrank and flops("galore") == dense
    assert flops("sltrain") == dense
    proj = 2 * sum(i * o for i, o in shape.projections().values())    # both layers' W
    assert flops("relora") == dense - 2 * proj + (lowrank - dense + 6 * proj)
    r0 = 12                                                          # ⌈1.5 · 8⌉
    ada = 2 * 2 * sum(3 * (r0 * (i + o) + r0) for i, o in shape.projections().values())
    assert flops("adalora") == dense - 6 * proj + ada


def test_loraplus_rates_match_peft_create_loraplus_optimizer():
    """Opt-in cross-check against PEFT's LoRA+ (``pip install peft``): the same rates for
    every A and B; the one documented departure, PEFT's 1-D tensors at λ·lr (here a bias
    keeps the task's rate)."""
    pytest.importorskip("peft", reason="opt-in cross-check: pip install peft")
    import copy
    from types import SimpleNamespace
    from peft import LoraConfig, get_peft_model
    from peft.optimizers import create_loraplus_optimizer
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 4))
    theirs_model = get_peft_model(copy.deepcopy(base),
                                  LoraConfig(r=2, target_modules=["0", "2"], bias="all"))
    opt = create_loraplus_optimizer(theirs_model, torch.optim.AdamW, lr=1e-3,
                                    loraplus_lr_ratio=4.0)
    names = {id(p): n for n, p in theirs_model.named_parameters()}
    theirs = {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
    ours_model = lh.lowrank(copy.deepcopy(base), rank=2, method="loraplus")
    run = SimpleNamespace(options={"loraplus_ratio": 4.0}, protocol=SimpleNamespace(lr=1e-3))
    groups = lh.METHODS["loraplus"].groups(
        ours_model, run, [{"params": list(ours_model.parameters()), "weight_decay": 0.0}])
    names = {id(p): n for n, p in ours_model.named_parameters()}
    ours = {names[id(p)]: g["lr"] for g in groups for p in g["params"]}
    for layer in ("0", "2"):
        prefix = f"base_model.model.{layer}"
        assert theirs[f"{prefix}.lora_A.default.weight"] == ours[f"{layer}.A"] == 1e-3
        assert theirs[f"{prefix}.lora_B.default.weight"] == ours[f"{layer}.B"] == 4e-3
        assert theirs[f"{prefix}.base_layer.bias"] == 4e-3 and ours[f"{layer}.bias"] == 1e-3


def test_close_calls_are_the_rows_whose_interval_overlaps_dense_or_plain_of_their_rank():
    import pandas as pd
    from lowrank_helpers.reports.extensions import close_calls
    table = pd.DataFrame([
        {"name": "dense", "rank": pd.NA, "scores": [1.90, 1.91, 1.92]},
        {"name": "B·A (default init)", "rank": 4, "scores": [2.50, 2.51, 2.52]},
        {"name": "loro", "rank": 4, "scores": [1.905, 1.91, 1.915]},       # overlaps dense
        {"name": "cola", "rank": 4, "scores": [2.505, 2.51, 2.515]},       # overlaps B·A
        {"name": "galore", "rank": 4, "scores": [2.20, 2.21, 2.22]},       # neither
        {"name": "relora", "rank": 8, "scores": [2.505, 2.51, 2.515]},     # no B·A at r=8
        {"name": "sltrain", "rank": 4, "scores": [1.91]},                  # one seed: no
    ])
    assert close_calls(table) == {("loro", 4), ("cola", 4)}


def test_galore_miniature_is_each_ranks_perplexity_ratio_to_dense():
    import pandas as pd
    from lowrank_helpers.reports.extensions_answer import galore_line, galore_miniature
    table = pd.DataFrame([{"name": "dense", "rank": pd.NA, "score": 1.9, "seeds": 3},
                          {"name": "B·A (default init)", "rank": 4, "score": 2.0, "seeds": 3},
                          {"name": "galore", "rank": 4, "score": 1.95, "seeds": 1},
                          {"name": "B·A (default init)", "rank": 8, "score": 1.92, "seeds": 5}])
    mini = galore_miniature(table)
    line = galore_line(table)
    assert f"rank 4: Low-Rank (B·A) {math.exp(0.1):.3f} (3 seeds), GaLore " \
        f"{math.exp(0.05):.3f} (1 seed); rank 8: Low-Rank (B·A) {math.exp(0.02):.3f} " \
        "(5 seeds)." in line
    assert list(mini["rank"]) == [4, 8]
    assert mini.iloc[0]["Low-Rank (B·A) / dense"] == pytest.approx(math.exp(0.1))
    assert mini.iloc[0]["GaLore / dense"] == pytest.approx(math.exp(0.05))
    assert math.isnan(mini.iloc[1]["GaLore / dense"])
    assert "78.18" not in mini.attrs["published"] and "2.30" in mini.attrs["published"]


def test_every_row_of_the_figures_has_its_own_colour_and_marker():
    """More rows than matplotlib's ten colours still look different (the marker changes),
    dense is black, and a row keeps its style in every figure; log axes read 50k, 1.5M."""
    from lowrank_helpers.reports.extensions import DENSE
    from lowrank_helpers.reports.extensions_plots import _short, _styles
    names = [DENSE] + [f"m{i}" for i in range(12)]
    styles = _styles(names + names[::-1])
    assert styles[DENSE] == {"color": "black", "marker": "o"}
    looks = {(s["color"], s["marker"]) for s in styles.values()}
    assert len(looks) == len(names) == len(styles)
    assert [_short(v) for v in (500, 5e4, 1.5e6, 2e9)] == ["500", "50k", "1.5M", "2G"]


def test_the_table_gives_each_parts_flops_and_leaves_time_and_memory_to_the_benchmark():
    """Every row's costs: training FLOPs per token (transformer) or per sample (MLP); the
    records' own speed and resident set are not columns (measured under different
    conditions), the benchmark's block gives them."""
    import pandas as pd
    from lowrank_helpers.reports.extensions import DENSE, extensions_markdown
    row = dict(rank=float("nan"), lr=3e-3, edge=False, seeds=2, scores=[1.9, 1.92],
               score=1.91, score_std=0.014, parameters=804_000, total_parameters=804_000,
               optimizer_state_bytes=6.4e6, peak_memory_bytes=1.2e9, training_flops=5.16e6,
               tokens_per_second=3722.0, seconds_per_epoch=3.04)
    table = pd.DataFrame([{**row, "name": DENSE},
                          {**row, "name": "cola", "rank": 32, "scores": [1.95, 1.97],
                           "score": 1.96, "training_flops": 2.21e6}])
    lm = extensions_markdown(table, "lm").splitlines()
    assert lm[0].endswith("| optimizer state (kB) | training MFLOPs per token |")
    assert lm[2].endswith("| 6,400 | 5.16 |") and lm[3].endswith("| 6,400 | 2.21 |")
    assert "3,722" not in "\n".join(lm) and "1,200" not in "\n".join(lm)
    assert all(line.count("|") == lm[0].count("|") for line in lm)
    mlp = extensions_markdown(table, "mlp").splitlines()
    assert mlp[0].endswith("| training MFLOPs per sample |")
    assert all(line.count("|") == mlp[0].count("|") for line in mlp)


def test_the_mlps_flops_count_each_methods_own_layers():
    """On the MLP, a method that counts its own multiply-adds is counted by them (ReLoRA's
    frozen W, SLTrain's formed W, AdaLoRA's r₀ and Λ), less the first layer's input gradient;
    dense and plain B·A keep the formula of models.mlp."""
    from lowrank_helpers.core.protocol import RunConfig
    from lowrank_helpers.methods.adalora import initial_rank
    from lowrank_helpers.models.mlp import training_flops_per_sample
    flops = lambda m, r: (lambda run: run.task_spec.training_flops(run))(
        RunConfig("fashion_mnist", m, r, None))
    for m, r in (("full", None), ("lora", 8), ("ae", 32), ("densehead", 8), ("cola", 8)):
        assert flops(m, r) == training_flops_per_sample(m, r)
    widths, r = (784, 512, 512, 10), 8                     # the MLP's default widths
    layers = list(zip(widths[:-1], widths[1:]))
    relora = sum(2 * i * o + 3 * r * (i + o) for i, o in layers) - (784 * 512 + r * 784)
    assert flops("relora", r) == 2 * relora
    sltrain = sum(3 * i * o for i, o in layers) - 784 * 512
    assert flops("sltrain", r) == 2 * sltrain
    # AdaLoRA's from the built layers: P·Λ·Q costs its parameters' products three times (the
    # forward, the input and the weight gradients), and Q takes the input
    model = RunConfig("fashion_mnist", "adalora", r, None).build()
    shapes = [[p.numel() for p in m.parameters(recurse=False) if p.dim() > 0 and p.numel() > 1
               and p is not getattr(m, "bias", None)] for m in model.modules()
              if type(m).__name__ == "AdaLoRALinear"]
    first = next(m for m in model.modules() if type(m).__name__ == "AdaLoRALinear")
    q_input = first.A.numel()                                 # forward: B·(E ⊙ (A·x))
    assert len(shapes) == 3 and q_input == initial_rank(r, 784, 512) * 784
    assert flops("adalora", r) == 2 * (3 * sum(map(sum, shapes)) - q_input)


def test_gap_summary_sorts_by_the_holm_verdict_and_says_why_a_row_is_left_out():
    """The three-way answer: a row whose uncorrected interval excludes 0 but whose Holm p is
    not below 0.05 reads "not distinguishable" (never better or worse); a clearly worse row
    "detectably worse"; a 1-seed row is still searching; the rows without a comparison are
    named with their reason: more optimizer state, no plain B·A of their rank, a frozen
    dense W (total parameters not a narrower model's)."""
    import pandas as pd
    from lowrank_helpers.reports.extensions import DENSE, PLAIN, comparisons
    from lowrank_helpers.reports.extensions_answer import gap_summary
    nan = float("nan")

    def row(name, rank, scores, params, state, total=None):
        return {"name": name, "rank": rank, "scores": scores, "parameters": params,
                "total_parameters": total or params, "optimizer_state_bytes": state}
    plain = PLAIN.format(init="default")
    table = pd.DataFrame([
        row(DENSE, nan, [1.00, 1.01, 1.02], 800, 6400),
        row("narrow dense (d_model 8)", nan, [1.10, 1.12, 1.14], 160, 1280),
        row(plain, 4, [1.06, 1.07, 1.08], 165, 1320),
        row("cola", 4, [1.03, 1.04, 1.05], 165, 1320),           # close: Holm decides
        row("loro", 4, [1.50, 1.51, 1.52], 165, 1320),           # far: detectably worse
        row("adalora", 4, [1.06, 1.07, 1.08], 240, 3700),        # more state, more params
        row("relora", 4, [1.06, 1.07, 1.08], 165, 1320, total=900),   # a frozen dense W
        row("galore", 8, [1.05], 800, 1100),                      # 1 seed; no B·A at rank 8
    ])
    models = ("cola", "loro", "adalora", "relora", "galore")
    tests = comparisons(table)
    close = tests[(tests.name == "cola") & (tests.against == "dense")].test.iloc[0]
    assert close.low > 0 and close.p_holm >= 0.05 and not close.real   # the case at issue
    got = gap_summary(table, "lm", models=models)
    steps, params, memory = got.splitlines()[1:]
    assert "+ is worse" in got.splitlines()[0]
    assert "**detectably better**: none" in steps
    assert "**not distinguishable**: cola r=4 (+0.030" in steps
    assert "**detectably worse**: loro r=4" in steps
    assert "**fewer than 2 seeds so far**: galore r=8" in steps
    assert "against the narrower dense model" in params and "cola r=4" in params
    assert "Not compared (its total parameters (a frozen dense W) are not a narrower " \
        "model's): relora r=4." in params
    assert "Not compared (more optimizer state): adalora r=4." in memory
    assert "Not compared (no plain B·A of its rank): galore r=8." in memory
