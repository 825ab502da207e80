"""ReLinear: exact equivalence of every zoo model to its ReLU twin at init, LR groups, sw penalty, warm start."""

import math

import pytest
import torch

import quadexport as q
from quadexport.zoo.tokens import is_token_model, random_tokens, token_input
from quadexport.training.relinear import (ReLinearConfig, param_groups, quadratic_norms, quadratic_penalty, warm_start)

ZOO = q.list_models()


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("neuron", ["fan", "compact", "t4", "quadralib", "qres"])
def test_quadratic_model_from_relu_weights_is_exactly_relu(name, neuron):
    size = 8 if name in ("mlp", "cnn") else 12
    quad = q.create_model(name, neuron, in_channels=1, input_size=size).eval()
    if is_token_model(quad):  # gpt: with a ReLU after the neuron, it computes the same-width ReLU gpt at init
        quad = q.create_model(name, neuron, act="relu").eval()
        relu = q.create_model(name, "relu", ffn_width=quad.ffn_width).eval()
        x = random_tokens(token_input(quad), 4, 16, seed=0)
    else:
        relu = q.create_model(name, "relu", in_channels=1, input_size=size).eval()
        x = torch.randn(4, 1, size, size)
    filled = warm_start(quad, relu.state_dict())
    assert len(filled) == len(relu.state_dict())
    with torch.no_grad():
        assert torch.equal(quad(x), relu(x))


def test_t2_is_not_relu_equivalent():
    assert not q.get_neuron("t2").relu_equivalent_init


@pytest.mark.parametrize("rg,rb", [(1e-2, 1e-2), (0.0, 0.5), (2.0, 1e-4)])
def test_lr_groups_carry_ratios(rg, rb):
    model = q.create_model("resnet8", "fan")
    cfg = ReLinearConfig(mode="sg", lr_ratio_g=rg, lr_ratio_b=rb)
    groups = {g["name"]: g for g in param_groups(model, 0.1, cfg)}
    assert math.isclose(groups["g"]["lr"], 0.1 * rg) and math.isclose(groups["b"]["lr"], 0.1 * rb)
    assert groups["base"]["lr"] == 0.1
    ids = lambda name: {id(p) for p in groups[name]["params"]}
    g_expected = {id(p) for m in model.modules() if isinstance(m, q.QuadConv2d) for p in m.g.parameters()}
    b_expected = {id(p) for m in model.modules() if isinstance(m, q.QuadConv2d) for p in m.b.parameters()}
    assert ids("g") == g_expected and ids("b") == b_expected
    assert len(ids("base")) + len(ids("g")) + len(ids("b")) == len(list(model.parameters()))
    opt = torch.optim.SGD(param_groups(model, 0.1, cfg), lr=0.1)
    assert sorted(g["lr"] for g in opt.param_groups) == sorted([0.1, 0.1 * rg, 0.1 * rb])
    none = {g["name"]: g["lr"] for g in param_groups(model, 0.1, ReLinearConfig(mode="none"))}
    assert none == {"base": 0.1, "g": 0.1, "b": 0.1}


@pytest.mark.parametrize("penalty", ["l1", "l2"])
def test_sw_penalty_only_touches_quadratic_weights(penalty):
    model = q.create_model("cnn", "fan", input_size=8)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, q.QuadConv2d):
                m.g.weight.normal_(0, 0.1)
                m.b.weight.normal_(0, 0.1)
    cfg = ReLinearConfig(mode="sw", penalty=penalty, alpha=1e-2, beta=2e-2)
    pen = quadratic_penalty(model, cfg)
    assert pen > 0
    pen.backward()
    for name, p in model.named_parameters():
        is_quad_weight = name.endswith(("g.weight", "b.weight"))
        if is_quad_weight:
            coef = 1e-2 if name.endswith("g.weight") else 2e-2
            expected = coef * (torch.sign(p) if penalty == "l1" else 2 * p)
            torch.testing.assert_close(p.grad, expected)
        else:
            assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    assert quadratic_penalty(model, ReLinearConfig(mode="sg")).item() == 0


def test_quadratic_norms():
    model = q.create_model("cnn", "fan", input_size=8)
    assert quadratic_norms(model) == {"norm_wg": 0.0, "norm_wb": 0.0}
    with torch.no_grad():
        model.conv1.g.weight.fill_(1.0)
    assert math.isclose(quadratic_norms(model)["norm_wg"], math.sqrt(model.conv1.g.weight.numel()))


def test_warm_start_rejects_other_architecture():
    quad = q.create_model("resnet8", "fan")
    other = q.create_model("cnn", "relu")
    with pytest.raises(ValueError, match="twin architecture"):
        warm_start(quad, other.state_dict())


def test_invalid_relinear_values():
    with pytest.raises(ValueError):
        ReLinearConfig(lr_ratio_g=float("nan"))
    with pytest.raises(ValueError):
        ReLinearConfig(mode="sx")
