"""The stacked engine trains each model as it would be trained alone."""
import os

import pytest
import torch

from lowrank_helpers import MLP, Protocol, RunConfig, build_model, load_data, train
from lowrank_helpers.training.engine import train_group, train_many
from lowrank_helpers.training.planning import SMALL_RANK, plan_stacks, stack_rank
from lowrank_helpers.training.stacked import GradRule, MomentumRule, SGDRule, StackedMLP


@pytest.fixture(scope="module")
def data():
    return load_data("fashion_mnist", root=os.environ["LOWRANK_DATA"], download=False,
                     train_subset=640, test_subset=256)


def alone(run, data, config, dtype=torch.float32):
    model = build_model(run).to(dtype)
    return model, train(model, data, config, seed=run.seed, device="cpu", progress=False)


def assert_same_training(runs, data, config, stacks=None, dtype=torch.float32):
    """Histories within float tolerance; with SGD the weights too. Adam(W) divides by sqrt(v),
    which turns rounding noise in near-zero gradients into steps of about ±lr, so in float32
    with AdamW only the metrics are compared (with a looser tolerance). In float64 the rounding
    noise is 1e-16, so even chaotic training (the "lora" init at small ranks) stays within
    1e-9 over the 100 steps: everything is compared, tightly."""
    sgd = config.optimizer == "sgd"
    if dtype == torch.float64:
        rtol, atol, w_rtol, w_atol = 1e-9, 1e-10, 1e-9, 1e-10
    else:
        rtol, atol = (1e-4, 1e-5) if sgd else (5e-3, 1e-3)
        w_rtol, w_atol = 1e-3, 1e-4
    data = data.to(dtype=dtype)
    models = [build_model(r).to(dtype) for r in runs]
    stacks = stacks or [list(range(len(runs)))]
    if config.shuffle:  # the batch order is the seed's: a group shares one
        assert len({r.seed for r in runs}) == 1
    stacked = train_group(models, stacks, data, config, seed=runs[0].seed, device="cpu",
                          progress=False)
    for run, model, res in zip(runs, models, stacked):
        ref_model, ref = alone(run, data, config, dtype)
        assert res.diverged_epoch is None and ref.diverged_epoch is None
        assert len(res.history) == len(ref.history) == config.epochs
        keys = ["train_loss", "test_loss", "test_accuracy"]
        if len(data.y_val):
            keys += ["val_loss", "val_accuracy"]
        for key in keys:
            got = torch.tensor([h[key] for h in res.history], dtype=torch.float64)
            want = torch.tensor([h[key] for h in ref.history], dtype=torch.float64)
            tol = atol
            if key.endswith("accuracy") and not sgd and dtype == torch.float32:
                # accuracy moves in steps of one sample: AdamW's float32 noise may flip one
                # borderline sample of the split
                n = len(data.y_test if key.startswith("test") else data.y_val)
                tol = max(atol, 1.5 / n)
            torch.testing.assert_close(got, want, rtol=rtol, atol=tol,
                                       msg=lambda m: f"{run.label} seed {run.seed} {key}: {m}")
        if sgd or dtype == torch.float64:
            for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
                torch.testing.assert_close(p, q, rtol=w_rtol, atol=w_atol,
                                           msg=lambda m: f"{run.label} {name}: {m}")


# 10 epochs of 10 steps: 100 steps per model: SGD with momentum and weight decay, plain SGD with
# weight decay, AdamW (on CPU the engine's written-out steps, against autograd in the loop).
SGD = Protocol(epochs=10, lr=2e-3, momentum=0.5, weight_decay=1e-3)
PLAIN = Protocol(epochs=10, lr=2e-3, weight_decay=1e-3)
ADAMW = Protocol(epochs=10, lr=1e-3, optimizer="adamw", weight_decay=0.01)
CONFIGS = {"sgd": SGD, "fused-sgd": PLAIN, "adamw": ADAMW}
# Ranks 1…16 padded into one stack of rank 16, both methods, the original's inits. The "lora"
# init at small ranks starts with huge activations and trains chaotically: float32 rounding
# differences between the stack and a lone model grow past 1e-2 within 100 steps (as they
# would between two machines), so these are compared in float64.
MIXED = [("lora", 1, None), ("lora", 3, None), ("ae", 1, None), ("lora", 5, None),
         ("lora", 8, None), ("ae", 16, None)]
# In float32, inits whose signal shrinks layer by layer (gain 1/3 or 1/9), which stay clear of
# chaos: (method, rank, init).
CALM = [("ae", 1, None), ("lora", 2, "matched"), ("lora", 5, "matched"), ("lora", 8, "matched"),
        ("ae", 16, None)]


def model_runs(models):
    return [RunConfig(method=m, rank=r, init=i, seed=s) for m, r, i in models for s in (0, 1)]


@pytest.mark.parametrize("config", [SGD, PLAIN, ADAMW], ids=["sgd", "fused-sgd", "adamw"])
def test_seeds_of_the_full_rank_mlp(data, config):
    assert_same_training([RunConfig(method="full", seed=s) for s in (0, 1, 2)], data, config)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_ranks_and_both_methods_padded_into_one_stack(data, config):
    assert_same_training(model_runs(CALM), data, config)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_the_original_inits_padded_into_one_stack_in_float64(data, config):
    assert_same_training(model_runs(MIXED), data, config, dtype=torch.float64)


@pytest.mark.parametrize("config", [SGD, PLAIN], ids=["sgd", "fused-sgd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_several_stacks_in_lockstep(data, config, dtype):
    runs = [RunConfig(method="full"),
            RunConfig(method="lora", rank=2, init="matched" if dtype == torch.float32 else None),
            RunConfig(method="ae", rank=32)]
    assert_same_training(runs, data, config, stacks=[[0], [1], [2]], dtype=dtype)


STEP_MODELS = {
    "dense": lambda: [MLP("full"), MLP("full_he")],
    "factorized": lambda: [MLP("ae", 2), MLP("lora", 8), MLP("lora", 5, "matched"),
                           MLP("lora", 8, "he")],
    "dense-head": lambda: [MLP("densehead", 3, "matched"), MLP("densehead", 8, "he")],
}
RULES = {  # a written-out rule and the torch.optim optimizer it must match
    "sgd": (lambda bufs, opt: SGDRule(0.02, 0.01), lambda ps: None,
            lambda ps: torch.optim.SGD(ps, lr=0.02, weight_decay=0.01)),
    "momentum": (lambda bufs, opt: MomentumRule(bufs, 0.002, 0.9, 0.01), lambda ps: None,
                 lambda ps: torch.optim.SGD(ps, lr=0.002, momentum=0.9, weight_decay=0.01)),
    "adamw": (lambda bufs, opt: GradRule(),
              lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01),
              lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01)),
}


@pytest.mark.parametrize("rule", RULES, ids=RULES.keys())
@pytest.mark.parametrize("kind", STEP_MODELS, ids=STEP_MODELS.keys())
def test_written_step_is_autograd_and_the_optimizer(data, kind, rule):
    """StackedMLP.written_step (backward written out; SGD fused into the weights, momentum
    into its buffers, AdamW from the written .grad) against autograd + the torch.optim
    optimizer on the same stack, in float64: same losses and weights, step by step, to
    rounding (the gradient sums run in another order); padded factors stay exactly zero.
    The original "lora" init is in the stack too."""
    import copy
    make_rule, make_own, make_ref = RULES[rule]
    torch.manual_seed(0)  # the same draws whatever ran before
    models = STEP_MODELS[kind]()
    fused = StackedMLP([m.double() for m in models],
                       rank=None if kind == "dense" else 8)
    ref = copy.deepcopy(fused)
    opt, own, bufs = make_ref(list(ref.parameters())), make_own(list(fused.parameters())), {}
    X, Y = data.X_train.double(), data.y_train
    for i in range(0, 640, 64):
        x, y = X[i:i + 64], Y[i:i + 64]
        opt.zero_grad()
        want = ref.losses(x, y)
        want.sum().backward()
        opt.step()
        got = fused.written_step(x, y, make_rule(bufs, own))
        if own is not None:
            own.step()
        torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-12)
        for (name, p), q in zip(fused.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11, msg=lambda m: f"{name}: {m}")
    for l, layer in enumerate(fused.layers):
        if not hasattr(layer, "A"):
            continue
        a, b = layer.A, layer.B
        for k, r in enumerate(fused.ranks):
            assert torch.count_nonzero(a[:, k, r:] if l == 0 else a[k, :, r:]) == 0
            assert torch.count_nonzero(b[k, r:]) == 0


@pytest.mark.parametrize("config, mode", [(PLAIN, "fused sgd"), (SGD, "fused momentum"),
                                          (ADAMW, "written backward + AdamW")])
def test_step_modes_on_cpu(data, config, mode):
    """On CPU the written-out step is the default for every optimizer; written=False keeps
    autograd."""
    one = Protocol(**{**config.to_dict(), "epochs": 1})
    res = train_group([MLP("full")], [[0]], data, one, device="cpu", progress=False)
    assert res[0].step_mode == mode
    res = train_group([MLP("full")], [[0]], data, one, device="cpu", progress=False,
                      written=False)
    assert res[0].step_mode == "eager"


@pytest.mark.parametrize("config", [SGD, ADAMW], ids=["sgd", "adamw"])
def test_padding_stays_zero(data, config):
    stack = StackedMLP([MLP("lora", 2), MLP("ae", 5)], rank=8)
    opt_params = list(stack.parameters())
    from lowrank_helpers.training.loop import make_optimizer
    opt = make_optimizer(opt_params, config)
    for i in range(0, 320, 64):
        opt.zero_grad()
        stack.losses(data.X_train[i:i + 64], data.y_train[i:i + 64]).sum().backward()
        for l in range(stack.n_layers):
            a, b = stack.layers[l].A, stack.layers[l].B
            for k, r in enumerate(stack.ranks):
                a_pad = a.grad[:, k, r:] if l == 0 else a.grad[k, :, r:]
                assert torch.count_nonzero(a_pad) == 0 and torch.count_nonzero(b.grad[k, r:]) == 0
        opt.step()
    for l in range(stack.n_layers):
        a, b = stack.layers[l].A, stack.layers[l].B
        for k, r in enumerate(stack.ranks):
            assert torch.count_nonzero(a[:, k, r:] if l == 0 else a[k, :, r:]) == 0
            assert torch.count_nonzero(b[k, r:]) == 0
            assert torch.count_nonzero(b[k, :r]) > 0  # the real factors did train


def test_unstack_round_trip():
    models = [MLP("lora", 3), MLP("ae", 7)]
    back = StackedMLP(models, rank=16).unstack()
    x = torch.rand(5, 784)
    for m, b in zip(models, back):
        assert b.rank == m.rank
        torch.testing.assert_close(b(x), m(x))


def test_a_diverging_model_does_not_disturb_the_others(data):
    """A NaN in one model of a stack (float64: the "lora" init is chaotic in float32)."""
    runs = [RunConfig(method="lora", rank=4, seed=s) for s in (0, 1)]
    models = [build_model(r).double() for r in runs]
    data = data.to(dtype=torch.float64)
    with torch.no_grad():
        models[0].net[1].A[0, 0] = float("nan")
    config = Protocol(epochs=3)
    res = train_group(models, [[0, 1]], data, config, device="cpu", progress=False)
    assert res[0].diverged_epoch == 1 and len(res[0].history) == 1
    _, ref = alone(runs[1], data, config, torch.float64)
    assert res[1].diverged_epoch is None
    torch.testing.assert_close(torch.tensor([h["test_loss"] for h in res[1].history]),
                               torch.tensor([h["test_loss"] for h in ref.history]),
                               rtol=1e-9, atol=1e-10)


def test_mixed_families_are_split_or_refused():
    with pytest.raises(ValueError, match="one kind of layer at each depth and one widths.*plan_stacks"):
        StackedMLP([MLP("full"), MLP("lora", 4)])
    with pytest.raises(ValueError, match="one kind of layer at each depth and one widths"):
        StackedMLP([MLP("lora", 4), MLP("lora", 4, widths=(784, 64, 10))])
    runs = [RunConfig(method="full"), RunConfig(method="lora", rank=4),
            RunConfig(method="ae", rank=16), RunConfig(method="lora", rank=64),
            RunConfig(method="lora", rank=4, widths=(784, 64, 10)),
            RunConfig(method="lora", rank=4, optimizer="adamw"),
            RunConfig(method="lora", rank=4, shuffle=True, seed=1)]
    groups = plan_stacks(runs)
    assert groups == [[[0], [1, 2], [3], [4]], [[5]], [[6]]]


def test_stack_rank_buckets():
    assert [stack_rank(r) for r in (None, 1, 16, 17, 32, 33, 128, 200)] == [
        None, SMALL_RANK, SMALL_RANK, 32, 32, 64, 128, 256]


def test_train_many_keeps_order_and_reports_groups(data):
    runs = [RunConfig(method="lora", rank=2, epochs=1), RunConfig(method="full", epochs=1),
            RunConfig(method="ae", rank=2, epochs=1)]
    done = []
    results = train_many(runs, data, device="cpu", progress=False,
                         on_group_done=lambda rs, res: done.append([r.method for r in rs]))
    assert [r.stack_size for r in results] == [2, 1, 2]
    assert all(r.engine == "stacked" and len(r.history) == 1 for r in results)
    assert sorted(done) == [["full"], ["lora", "ae"]]


def test_out_of_gpu_memory_splits_the_stack(data, monkeypatch, capsys):
    import lowrank_helpers.training.engine as engine
    real, sizes = engine.train_group, []

    def small_memory(models, *args, **kwargs):  # pretend stacks of more than 2 do not fit
        sizes.append(len(models))
        if len(models) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(models, *args, **kwargs)
    monkeypatch.setattr(engine, "train_group", small_memory)
    runs = [RunConfig(method="ae", rank=r, epochs=1) for r in (1, 2, 4, 8, 16)]
    results = train_many(runs, data, device="cpu", progress=False)
    assert sizes == [5, 2, 3, 1, 2] and all(len(r.history) == 1 for r in results)
    assert "splitting it into 2 + 3 and going on" in capsys.readouterr().out


def test_lockstep_group_out_of_memory_falls_back_to_stack_after_stack(data, monkeypatch, capsys):
    import lowrank_helpers.training.engine as engine
    real, calls = engine.train_group, []

    def small_memory(models, stacks, *args, **kwargs):  # pretend two stacks do not fit together
        calls.append(len(stacks))
        if len(stacks) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(models, stacks, *args, **kwargs)
    monkeypatch.setattr(engine, "train_group", small_memory)
    runs = [RunConfig(method="full", epochs=1), RunConfig(method="ae", rank=2, epochs=1)]
    results = train_many(runs, data, device="cpu", progress=False, lockstep=True)
    assert calls == [2, 1, 1] and all(len(r.history) == 1 for r in results)
    assert "training them one after another" in capsys.readouterr().out


def test_workers_train_as_one_process_does(data):
    """Stacks trained in 2 worker processes (one thread each) give the same histories, in the
    caller's order, and each stack is reported as it ends."""
    runs = [RunConfig(method="ae", rank=2, epochs=2), RunConfig(method="full", epochs=2),
            RunConfig(method="lora", rank=32, epochs=2, seed=1)]
    done = []
    got = train_many(runs, data, device="cpu", progress=False, workers=2,
                     on_group_done=lambda rs, res: done.append(len(rs)))
    want = train_many(runs, data, device="cpu", progress=False)
    assert sorted(done) == [1, 1, 1]
    for g, w, run in zip(got, want, runs):
        assert g.engine == "stacked" and g.step_mode == "fused sgd"  # plain SGD on CPU
        for key in ("train_loss", "test_loss", "test_accuracy"):
            torch.testing.assert_close(torch.tensor([h[key] for h in g.history]),
                                       torch.tensor([h[key] for h in w.history]),
                                       rtol=1e-5, atol=1e-6, msg=lambda m: f"{run.label} {key}: {m}")


def test_bad_workers_are_refused(data):
    with pytest.raises(ValueError, match="workers must be a positive integer, got 0"):
        train_many([RunConfig(method="full", epochs=1)], data, device="cpu", workers=0)


def test_stack_cost_orders_large_stacks_first():
    from lowrank_helpers.training.planning import stack_cost
    full = [RunConfig(method="full")]
    small = [RunConfig(method="lora", rank=r) for r in (1, 2, 4, 8, 16)]
    assert stack_cost(full) > stack_cost(small) > stack_cost(small[:1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("lockstep", [True, False], ids=["lockstep-streams", "stack-after-stack"])
@pytest.mark.parametrize("config", [SGD, ADAMW], ids=["sgd", "adamw"])
def test_cuda_graphs_train_as_the_plain_loop_does(data, config, lockstep):
    """On CUDA the engine captures its step into a CUDA graph: the histories match the plain
    loop's, eager, on the same GPU."""
    runs = [RunConfig(method=m, rank=r, seed=s, protocol=config)
            for m, r in (("full", None), ("lora", 8), ("ae", 32)) for s in (0, 1)]
    got = train_many(runs, data, device="cuda", progress=False, lockstep=lockstep)
    rtol, atol = (1e-4, 1e-5) if config.optimizer == "sgd" else (5e-3, 1e-3)
    for run, res in zip(runs, got):
        assert res.step_mode.startswith("cuda graph"), res.step_mode
        ref = train(build_model(run), data, run.protocol, seed=run.seed, device="cuda",
                    progress=False)
        for key in ("train_loss", "test_loss", "test_accuracy"):
            torch.testing.assert_close(torch.tensor([h[key] for h in res.history]),
                                       torch.tensor([h[key] for h in ref.history]),
                                       rtol=rtol, atol=atol,
                                       msg=lambda m: f"{run.label} seed {run.seed} {key}: {m}")


def test_worker_stacks_cover_every_run_once_and_share_out_evenly():
    """Stacks for CPU workers: as in one process (ranks up to 16 padded together), a stack too
    costly for an even share halved, and every worker given a stack where there are models."""
    from lowrank_helpers import StudyConfig
    from lowrank_helpers.training.planning import stack_cost, worker_stacks
    small = StudyConfig(methods=["lora", "ae"], ranks=[1, 2, 4, 8, 16], seeds=[0]).runs()
    stacks = worker_stacks(small, 2)
    assert sorted(map(len, stacks)) == [5, 5]
    for seeds in ([0], [0, 1, 2]):
        runs = StudyConfig(seeds=seeds).runs()
        for workers in (1, 2, 4):
            stacks = worker_stacks(runs, workers)
            assert sorted(i for s in stacks for i in s) == list(range(len(runs)))
            assert all(len({(runs[i].method == "full", stack_rank(runs[i].rank)) for i in s}) == 1
                       for s in stacks)
            costs = [stack_cost([runs[i] for i in s]) for s in stacks]
            assert max(c for c, s in zip(costs, stacks) if len(s) > 1) <= sum(costs) / workers
    assert worker_stacks([RunConfig(method="full")], 4) == [[0]]


def test_unstack_leaves_the_global_rng_alone():
    stack = StackedMLP([MLP("lora", 3, "spectral"), MLP("ae", 7)], rank=16)
    before = torch.random.get_rng_state()
    stack.unstack()
    assert torch.equal(before, torch.random.get_rng_state())


@pytest.mark.parametrize("config", [
    Protocol(epochs=3, lr=2e-3, schedule="cosine", warmup_steps=4, min_lr=2e-4, val_size=128),
    Protocol(epochs=3, lr=2e-3, momentum=0.9, schedule="cosine", warmup_steps=4, shuffle=True,
             val_size=128),
    Protocol(epochs=3, lr=1e-3, optimizer="adamw", weight_decay=0.01, warmup_steps=4,
             val_size=128)], ids=["fused-sgd", "sgd-momentum", "adamw"])
def test_schedules_and_a_validation_split_train_as_alone(config):
    """Warm-up, cosine decay and the validation split in the engine, in float64 against the
    plain loop: the same learning rate at every step, the same validation metrics."""
    data = load_data("fashion_mnist", root=os.environ["LOWRANK_DATA"], download=False,
                     train_subset=640, test_subset=256, val_size=config.val_size)
    assert len(data.y_val) == 128 and len(data.y_train) == 512
    seeds = (1,) if config.shuffle else (0, 1)  # shuffled: the group's order is one seed's
    runs = [RunConfig(method=m, rank=r, seed=s, protocol=config)
            for m, r in (("full", None), ("lora", 4), ("lora", 16), ("ae", 8)) for s in seeds]
    n = len(seeds)
    assert_same_training(runs, data, config, stacks=[list(range(n)), list(range(n, 4 * n))],
                         dtype=torch.float64)
