import pytest
import torch

from lowrank_helpers import MLP, LowRankLinear, count_parameters, parameter_counts
from lowrank_helpers.models.mlp import parameter_table


def test_full_rank_mlp_parameters():
    counts = parameter_counts(MLP("full"))
    assert counts == {"fc1 784→512": 784 * 512 + 512, "fc2 512→512": 512 * 512 + 512,
                      "fc3 512→10": 512 * 10 + 10, "total": 669_706}


@pytest.mark.parametrize("method", ["lora", "ae"])
@pytest.mark.parametrize("rank", [1, 2, 16, 128])
def test_factorized_parameters_match_formula(method, rank):
    model = MLP(method, rank)
    expected = sum(rank * (i + o) + o for i, o in ((784, 512), (512, 512), (512, 10)))
    assert parameter_counts(model)["total"] == expected
    assert parameter_counts(model) == count_parameters(method, rank)
    assert all(isinstance(m, LowRankLinear) for m in model.linear_layers())


def test_rank_one_total():
    assert count_parameters("lora", 1)["total"] == 3_876


def test_methods_use_their_inits():
    assert MLP("lora", 4).init == "lora" and MLP("ae", 4).init == "default"
    assert {m.init for m in MLP("ae", 4).linear_layers()} == {"default"}


def test_widths_are_configurable():
    model = MLP("lora", 2, widths=(784, 64, 10))
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert len(model.linear_layers()) == 2


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "lowrank"}, "unknown method 'lowrank'; valid methods: full, lora, ae"),
    ({"method": "full", "rank": 4}, "method 'full' takes no rank"),
    ({"method": "lora", "rank": 0}, "rank must be an integer >= 1"),
    ({"method": "lora", "rank": None}, "rank must be an integer >= 1"),
    ({"method": "full", "widths": (784,)}, "widths must be"),
])
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLP(**kwargs)


def test_parameter_table():
    table = parameter_table(ranks=(1, 128))
    assert table.loc["full-rank", "total"] == 669_706
    assert table.loc["rank 1", "total"] == 3_876
    assert table.loc["full-rank", "% of full"] == 100


def test_narrow_widths_give_the_dense_mlp_closest_in_parameters_and_name_it():
    from lowrank_helpers.core.protocol import RunConfig
    from lowrank_helpers.models.mlp import narrow_widths
    target = count_parameters("lora", 8)["total"]              # 23,770
    widths = narrow_widths(target)
    assert widths[0] == 784 and widths[-1] == 10 and widths[1] == widths[2]
    err = abs(count_parameters("full", None, widths)["total"] - target)
    for h in (widths[1] - 1, widths[1] + 1):                    # no width comes closer
        assert abs(count_parameters("full", None, (784, h, h, 10))["total"] - target) >= err
    assert narrow_widths(count_parameters("full")["total"]) == (784, 512, 512, 10)
    narrow, default = RunConfig(method="full", widths=widths), RunConfig(method="full")
    assert narrow.name == f"fashion_mnist-full-w784x{widths[1]}x{widths[1]}x10-s0"
    assert narrow.label.endswith(f"widths 784-{widths[1]}-{widths[1]}-10")
    assert default.name == "fashion_mnist-full-s0" and "widths" not in default.label
