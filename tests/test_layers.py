import math

import pytest
import torch
from torch import nn

from lowrank_helpers import INITS, LowRankLinear, register_init


def test_forward_equals_dense_product():
    torch.manual_seed(0)
    layer = LowRankLinear(20, 7, rank=3)
    x = torch.randn(5, 20)
    expected = x @ (layer.B @ layer.A).T + layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.dense_weight(), layer.B @ layer.A)
    assert layer.dense_weight().shape == (7, 20)
    assert layer.A.shape == (3, 20) and layer.B.shape == (7, 3)


def test_no_bias_and_extra_dims():
    layer = LowRankLinear(6, 4, rank=2, bias=False)
    assert layer.bias is None
    x = torch.randn(2, 3, 6)  # like nn.Linear, any leading dims
    torch.testing.assert_close(layer(x), x @ layer.dense_weight().T)


def test_default_init_equals_two_stacked_linears():
    torch.manual_seed(123)
    layer = LowRankLinear(30, 11, rank=4, init="default")
    torch.manual_seed(123)
    first, second = nn.Linear(30, 4, bias=False), nn.Linear(4, 11)
    assert torch.equal(layer.A, first.weight)
    assert torch.equal(layer.B, second.weight)
    assert torch.equal(layer.bias, second.bias)
    x = torch.randn(8, 30)
    torch.testing.assert_close(layer(x), second(first(x)))


@pytest.mark.parametrize("rank", [1, 4, 64])
def test_lora_init_variance(rank):
    torch.manual_seed(0)
    layer = LowRankLinear(400, 3000, rank=rank, init="lora")  # enough entries for the LLN
    # U(-a, a) has variance a²/3; here a = 1/sqrt(r) for A and B, 1/sqrt(d_in) for the bias
    for tensor, var in ((layer.A, 1 / (3 * rank)), (layer.B, 1 / (3 * rank)),
                        (layer.bias, 1 / (3 * 400))):
        assert tensor.var().item() == pytest.approx(var, rel=0.1)
        assert tensor.abs().max().item() <= math.sqrt(3 * var) + 1e-7


def test_default_init_variance():
    torch.manual_seed(0)
    layer = LowRankLinear(400, 300, rank=16, init="default")
    assert layer.A.var().item() == pytest.approx(1 / (3 * 400), rel=0.1)
    assert layer.B.var().item() == pytest.approx(1 / (3 * 16), rel=0.1)


def test_rank_above_min_dim_is_allowed():
    layer = LowRankLinear(512, 10, rank=128)
    assert torch.linalg.matrix_rank(layer.dense_weight()).item() <= 10


@pytest.mark.parametrize("rank", [0, -3, 1.5, "4", True, None])
def test_bad_rank_raises(rank):
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        LowRankLinear(4, 4, rank=rank)


def test_unknown_init_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown init 'xavier'.*default.*lora"):
        LowRankLinear(4, 4, rank=2, init="xavier")


def test_register_init_extends_registry():
    name = "zeros_for_test"

    @register_init(name)
    def zeros(layer):
        for p in layer.parameters():
            nn.init.zeros_(p)
    try:
        assert torch.count_nonzero(LowRankLinear(3, 3, 2, init=name).dense_weight()) == 0
        with pytest.raises(ValueError, match="already registered"):
            register_init(name)(zeros)
    finally:
        del INITS[name]


def test_lowrank_puts_a_methods_layers_into_any_model():
    """lh.lowrank replaces the matching nn.Linear layers of a model of one's own; with
    svd=True the product starts as the dense weight's best rank-r approximation."""
    import lowrank_helpers as lh
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 10))
    dense = net[0].weight.detach().clone()
    lh.lowrank(net, rank=4, init="he", targets=["0"], svd=True)
    assert isinstance(net[0], lh.LowRankLinear) and isinstance(net[2], torch.nn.Linear)
    u, s, vh = torch.linalg.svd(dense.double())
    best = (u[:, :4] * s[:4]) @ vh[:4]
    torch.testing.assert_close(net[0].dense_weight().double(), best, atol=1e-5, rtol=1e-5)
    assert net(torch.randn(3, 64)).shape == (3, 10)
    with pytest.raises(ValueError, match="no nn.Linear of the model matches"):
        lh.lowrank(net, rank=2, targets=["nosuch"])
    with pytest.warns(UserWarning, match="left dense"):
        lh.lowrank(net, rank=16, targets=["2"])   # 32 -> 10: rank 16 restricts nothing
