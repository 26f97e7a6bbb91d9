import math
import os

import pytest
import torch

from lowrank_helpers import (MLP, Protocol, RunConfig, build_model, evaluate, load_data,
                             resolve_device, train)


@pytest.fixture(scope="module")
def data():
    # the first 512 training samples of the session's synthetic data (see conftest.py)
    return load_data("fashion_mnist", root=os.environ["LOWRANK_DATA"], download=False,
                     train_subset=512, test_subset=256)


@pytest.mark.parametrize("method, rank", [("full", None), ("lora", 8), ("ae", 8)])
def test_training_lowers_the_loss(data, method, rank):
    model = build_model(RunConfig(method=method, rank=rank))
    # lr 1e-2: the "lora" init's large initial outputs make larger steps diverge here
    result = train(model, data, Protocol(epochs=3, lr=1e-2), device="cpu", progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert len(result.history) == 3 and result.diverged_epoch is None
    assert losses[-1] < losses[0]
    assert result.history[-1]["test_loss"] < result.init_test_loss
    assert {"epoch", "test_accuracy", "test_loss", "train_loss", "seconds"} <= set(result.history[0])


@pytest.mark.parametrize("config", [Protocol(epochs=2, lr=1e-2),
                                    Protocol(epochs=2, lr=1e-3, optimizer="adamw",
                                                weight_decay=0.01, shuffle=True),
                                    Protocol(epochs=2, lr=1e-3, momentum=0.9, shuffle=True)])
def test_same_seed_same_history_bit_for_bit(data, config):
    def history():
        run = RunConfig(method="lora", rank=4, seed=7)
        result = train(build_model(run), data, config, seed=7, device="cpu", progress=False)
        assert result.diverged_epoch is None
        return [{k: v for k, v in h.items() if k != "seconds"} for h in result.history]
    assert history() == history()


def test_seed_changes_init_and_shuffle_order(data):
    a = build_model(RunConfig(method="lora", rank=4, seed=0))
    b = build_model(RunConfig(method="lora", rank=4, seed=1))
    assert not torch.equal(a.net[1].A, b.net[1].A)
    before = torch.random.get_rng_state()
    build_model(RunConfig(method="full", seed=3))
    assert torch.equal(before, torch.random.get_rng_state())  # global RNG untouched


def test_nan_loss_marks_run_diverged(data):
    model = MLP("lora", 4)
    with torch.no_grad():
        model.net[1].A[0, 0] = float("nan")
    result = train(model, data, Protocol(epochs=5), device="cpu", progress=False)
    assert result.diverged_epoch == 1 and len(result.history) == 1
    assert math.isnan(result.history[0]["train_loss"])


def test_huge_lr_diverges_without_raising(data):
    result = train(MLP("full"), data, Protocol(epochs=4, lr=1e6), device="cpu",
                   progress=False)
    assert result.diverged_epoch is not None and len(result.history) == result.diverged_epoch


def test_evaluate_matches_manual_accuracy(data):
    model = MLP("full")
    acc, loss = evaluate(model, data.X_test, data.y_test, chunk=100)
    logits = model(data.X_test)
    assert acc == pytest.approx((logits.argmax(1) == data.y_test).float().mean().item())
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, data.y_test).item(),
                                 rel=1e-5)


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_bad_train_config():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'; valid optimizers: sgd, adamw"):
        Protocol(optimizer="rmsprop")
    with pytest.raises(TypeError, match="batch_size must be int"):
        Protocol(batch_size=64.0)
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        Protocol(batch_size=0)


def test_tensor_memory_counts_parameters_gradients_state_and_the_steps_temporaries():
    """On the CPU: after two AdamW steps the live tensors are the parameters, their
    gradients, AdamW's two moments (and its step counters) and the batch; the peak is above
    that (the activations, the backward's and the optimizer's temporaries); views of one
    storage count once; freed tensors stop counting."""
    from lowrank_helpers.core.devices import TensorMemory
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.AdamW(m.parameters(), foreach=False)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    params = sum(p.numel() * 4 for p in m.parameters())
    with TensorMemory(*m.parameters(), x, y, x[:4], x.view(-1)) as mem:
        assert mem.current == params + x.numel() * 4 + y.numel() * 8   # views: no more
        for _ in range(2):
            loss = torch.nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        del loss
        steps = sum(s["step"].numel() * s["step"].element_size() for s in opt.state.values())
        settled = 4 * params + steps + x.numel() * 4 + y.numel() * 8   # W, grad, m, v
        assert mem.current == settled
        assert mem.peak >= settled + 32 * 64 * 4                       # an activation more
        big = torch.zeros(1000, 1000)
        assert mem.current == settled + big.numel() * 4
        del big
        assert mem.current == settled
