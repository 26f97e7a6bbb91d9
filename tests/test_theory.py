"""The inits do what their formulas say, and the forward- and backward-signal theory predicts
measurements."""
import math

import pytest
import torch

from lowrank_helpers import MLP, LowRankLinear
from lowrank_helpers.studies.theory import (break_even_rank, init_variances, layer_gains,
                                    marchenko_pastur_energy, measure_forward_std,
                                    predict_forward_std)

INITS = ["lora", "default", "matched", "he", "spectral"]


@pytest.fixture(autouse=True)
def one_thread():
    """SVDs with several threads crawl on a busy 2-core machine; one thread is fast here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_break_even_ranks_of_the_study_layers():
    assert break_even_rank(784, 512) == pytest.approx(309.7, abs=0.05)
    assert break_even_rank(512, 512) == 256
    assert break_even_rank(512, 10) == pytest.approx(9.8, abs=0.05)


def test_layer_gains_of_the_original_inits():
    """Dense default 1/3 per layer; the original's "lora" init d_in/(9r) (about 87 at r=1 and
    0.68 at r=128 for d_in=784); PyTorch's default on both factors 1/9 at every rank."""
    assert layer_gains("full") == pytest.approx([1 / 3] * 3)
    assert layer_gains("lora", 1)[0] == pytest.approx(87.1, abs=0.05)
    assert layer_gains("lora", 128)[0] == pytest.approx(0.68, abs=0.005)
    assert layer_gains("ae", 4) == pytest.approx([1 / 9] * 3)
    for r in (1, 16, 128):
        assert layer_gains("lora", r, "matched") == pytest.approx([1 / 3] * 3)
        assert layer_gains("lora", r, "he") == pytest.approx([2.0] * 3)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("rank", [2, 16, 128])
def test_measured_forward_std_of_a_wide_layer_matches_the_formula(init, rank):
    """One wide layer on white inputs, two seeds: the RMS output within 10 % of prediction."""
    x = torch.randn(1024, 784)
    q = x.pow(2).mean().item()
    v = init_variances(init, 784, 2048, rank)
    want = math.sqrt(784 * v["product"] * q + v["bias"])
    got = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        layer = LowRankLinear(784, 2048, rank, init=init)
        with torch.no_grad():
            got.append(layer(x).pow(2).mean().item())
    assert math.sqrt(sum(got) / len(got)) == pytest.approx(want, rel=0.1)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("rank", [32, 128])
def test_measured_forward_std_of_a_wide_mlp_matches_the_prediction(init, rank):
    """Layer after layer through ReLUs (784 -> 1024 -> 1024 -> 1024), over several draws."""
    widths = (784, 1024, 1024, 1024)
    method, init_name = ("ae", None) if init == "default" else ("lora", init)
    x = torch.randn(512, 784)
    want = predict_forward_std(method, rank, init_name, widths, x.pow(2).mean().item())
    second = torch.zeros(len(widths) - 1, dtype=torch.float64)
    draws = 2 if init == "spectral" else 6  # the spectral init varies little between draws
    for seed in range(draws):
        torch.manual_seed(seed)
        second += torch.tensor(measure_forward_std(MLP(method, rank, init_name, widths), x)) ** 2
    got = (second / draws).sqrt()
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0.1, atol=0)


def test_dense_prediction_matches_nn_linear():
    x = torch.rand(512, 784)  # pixel-like: not zero-mean, the formula holds all the same
    want = predict_forward_std("full", widths=(784, 1024, 1024), input_second_moment=
                               x.pow(2).mean().item())
    second = torch.zeros(2, dtype=torch.float64)
    for seed in range(3):
        torch.manual_seed(seed)
        second += torch.tensor(measure_forward_std(MLP("full", widths=(784, 1024, 1024)), x)) ** 2
    torch.testing.assert_close((second / 3).sqrt(), torch.tensor(want, dtype=torch.float64),
                               rtol=0.1, atol=0)


@pytest.mark.parametrize("d_in,d_out,rank", [(784, 512, 1), (784, 512, 32), (512, 512, 128),
                                             (512, 10, 4), (512, 10, 64)])
def test_spectral_init_is_the_best_rank_r_approximation_of_its_source(d_in, d_out, rank):
    """Eckart–Young: B·A equals the truncated SVD of the dense default-init matrix it was cut
    from (redrawn here from the same seed), and its error is the dropped singular values."""
    torch.manual_seed(7)
    layer = LowRankLinear(d_in, d_out, rank, init="spectral")
    torch.manual_seed(7)
    bound = 1 / math.sqrt(d_in)
    w = torch.empty(d_out, d_in, dtype=torch.float64).uniform_(-bound, bound)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    k = min(rank, len(s))
    best = (u[:, :k] * s[:k]) @ vh[:k]
    product = layer.dense_weight().double()
    torch.testing.assert_close(product, best, rtol=0, atol=1e-5)
    err = torch.linalg.matrix_norm(w - product) ** 2
    assert err.item() == pytest.approx(s[k:].pow(2).sum().item(), rel=1e-3, abs=1e-8)
    assert torch.linalg.matrix_rank(product.float()).item() == k
    if rank > k:  # extra factors: B's columns start at 0, A's rows do not (both train)
        assert torch.count_nonzero(layer.B[:, k:]) == 0
        assert torch.count_nonzero(layer.A[k:]) == layer.A[k:].numel()


def test_marchenko_pastur_energy_matches_random_matrices():
    torch.manual_seed(0)
    s = torch.linalg.svdvals(torch.randn(512, 784, dtype=torch.float64)) ** 2
    for r in (1, 16, 128, 400):
        assert marchenko_pastur_energy(r, 784, 512) == pytest.approx(
            (s[:r].sum() / s.sum()).item(), rel=0.05 if r > 1 else 0.15)
    assert marchenko_pastur_energy(600, 784, 512) == 1.0


@pytest.mark.parametrize("rank", [1, 8, 128])
def test_variance_matched_product_has_the_dense_default_variance(rank):
    """The product B·A of the "matched" init: entry variance 1/(3 d_in), as nn.Linear's W."""
    products = []
    for seed in range(4):
        torch.manual_seed(seed)
        products.append(LowRankLinear(784, 1024, rank, init="matched").dense_weight())
    torch.manual_seed(0)
    dense = torch.nn.Linear(784, 1024).weight
    var = torch.stack(products).var().item()
    assert var == pytest.approx(1 / (3 * 784), rel=0.05)
    assert var == pytest.approx(dense.var().item(), rel=0.05)


def test_he_product_variance():
    torch.manual_seed(0)
    layer = LowRankLinear(784, 2048, 64, init="he")
    assert layer.dense_weight().var().item() == pytest.approx(2 / 784, rel=0.05)
    assert torch.count_nonzero(layer.bias) == 0


def test_effective_lr_prediction_and_measurement_agree_on_average():
    """One SGD step's effect on B·A along the dense gradient, averaged over draws, is
    η·r·(Var(A) + Var(B)): 2/3 for the "lora" init at every rank."""
    from lowrank_helpers.studies.theory import effective_lr, measure_effective_lr
    assert effective_lr("lora", 784, 512, 1) == pytest.approx(2 / 3)
    assert effective_lr("lora", 784, 512, 128) == pytest.approx(2 / 3)
    assert effective_lr("matched", 784, 512, 1) == pytest.approx(2 * math.sqrt(1 / (3 * 784)))
    assert effective_lr(None, 784, 512, None) == 1.0
    x, g = torch.randn(256, 784), torch.randn(256, 512)
    for init in ("lora", "default", "matched", "he", "spectral"):
        got = []
        for seed in range(6):
            torch.manual_seed(seed)
            got.append(measure_effective_lr(LowRankLinear(784, 512, 64, init=init), x, g))
        assert sum(got) / len(got) == pytest.approx(effective_lr(init, 784, 512, 64), rel=0.1)


def test_softmax_gradient_second_moment_limits():
    """Tiny logits: every class at 1/C, E[(p_j − 1{j=y})²] = (1 − 1/C)/C; saturated logits:
    p is one-hot on a class that is right 1/C of the time, 2(1 − 1/C)/C."""
    from lowrank_helpers.studies.theory import softmax_delta_second_moment
    assert softmax_delta_second_moment(1e-6, 10) == pytest.approx(0.09, rel=1e-4)
    assert softmax_delta_second_moment(1e4, 10) == pytest.approx(0.18, rel=0.01)
    small, large = (softmax_delta_second_moment(s, 10) for s in (0.5, 5.0))
    assert 0.09 < small < large < 0.18


def test_marchenko_pastur_singular_sum_matches_svd():
    """The expected sum of the top-r singular values (the spectral init's ‖A‖_F²) from the
    Marchenko–Pastur law against SVDs of a few draws."""
    from lowrank_helpers.studies.theory import marchenko_pastur_singular_sum
    var = 1 / (3 * 784)
    svs = []
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        w = (torch.rand(512, 784, generator=g, dtype=torch.float64) * 2 - 1) / math.sqrt(784)
        svs.append(torch.linalg.svdvals(w))
    for r in (1, 16, 128, 512):
        got = sum(s[:r].sum().item() for s in svs) / len(svs)
        assert got == pytest.approx(marchenko_pastur_singular_sum(r, 784, 512, var), rel=0.03)


@pytest.mark.parametrize("init", INITS)
def test_measured_gradient_std_of_a_wide_mlp_matches_the_formula(init):
    """Per-sample gradient RMS at each layer's output and of A and B, at init, in a wide MLP
    on white inputs with random labels, pooled over three draws: within 10 % of prediction, 15 %
    at the output layer, where the formula's one approximation shows: it takes ‖δ‖² and ‖x‖²
    as uncorrelated across samples, but a sample with larger activations has larger logits and
    a more saturated softmax (11 % for "he", whose logits start largest)."""
    from lowrank_helpers.studies.theory import measure_backward_std, predict_backward_std
    widths, rank = (256, 1024, 1024, 10), 128
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, 256, generator=g), torch.randint(0, 10, (512,), generator=g)
    q = x.pow(2).mean().item()
    draws = []
    for seed in range(3):
        torch.manual_seed(seed)
        draws.append(measure_backward_std(MLP("lora", rank, init, widths), x, y))
    want = predict_backward_std("lora", rank, init, widths, q)
    for layer in range(3):
        for key in ("delta", "A", "B", "W"):
            got = math.sqrt(sum(d[layer][key] ** 2 for d in draws) / len(draws))
            assert got == pytest.approx(want[layer][key], rel=0.15 if layer == 2 else 0.1), \
                (layer, key)


def test_measured_gradient_std_of_a_dense_mlp_is_exact_per_sample():
    """measure_backward_std's per-sample RMS equals the one from explicit per-sample gradients."""
    from lowrank_helpers.studies.theory import measure_backward_std
    torch.manual_seed(0)
    model = MLP("lora", 3, "he", (6, 5, 4))
    x, y = torch.randn(7, 6), torch.randint(0, 4, (7,))
    got = measure_backward_std(model, x, y)
    per_sample = {name: [] for name, _ in model.named_parameters()}
    for n in range(len(x)):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[n:n + 1]), y[n:n + 1]).backward()
        for name, p in model.named_parameters():
            per_sample[name].append(p.grad.clone())
    for layer, prefix in enumerate(("net.1", "net.3")):
        for key in ("A", "B"):
            grads = torch.stack(per_sample[f"{prefix}.{key}"])
            assert got[layer][key] == pytest.approx(grads.pow(2).mean().sqrt().item(), rel=1e-5)


def test_theory_config_rejects_bad_parameters():
    from lowrank_helpers import TheoryConfig
    with pytest.raises(ValueError, match="unknown init 'hee'"):
        TheoryConfig(inits=["lora", "hee"])
    with pytest.raises(ValueError, match="did you mean 'ranks'"):
        TheoryConfig.from_params({"rnaks": [1, 2]})
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        TheoryConfig(ranks=[0])
    smoke = TheoryConfig(smoke=True)
    assert len(smoke.seeds) == 2 and smoke.results_dirs[0].endswith("smoke")
