"""Quadratic layers: signatures, neuron formulas, ReLinear init equivalence."""

import pytest
import torch
from torch import nn

import quadexport as q
from quadexport import QuadConv1d, QuadConv2d, QuadLinear
from quadexport.errors import UsageError
from quadexport.training.relinear import plain_init


def test_public_imports_and_registry():
    # every built-in type is registered by ``import quadexport`` (the cheap fan_pw / fan_dw included)
    assert {"fan", "compact", "t2", "t4", "quadralib", "qres", "fan_pw", "fan_dw"} <= set(q.list_neurons())
    with pytest.raises(ValueError, match="unknown neuron"):
        QuadLinear(3, 4, neuron="cubic")
    with pytest.raises(UsageError, match="did you mean 'fan_pw'"):
        QuadLinear(3, 4, neuron="fan_px")


def test_registering_a_neuron_name_twice_raises(pw_dw_neuron):
    from quadexport.layers.neurons import get_neuron, register_neuron

    with pytest.raises(ValueError, match="already registered"):
        register_neuron(get_neuron("fan"))
    with pytest.raises(UsageError, match="already registered"):
        register_neuron(get_neuron(pw_dw_neuron))
    assert get_neuron("fan").formula.startswith("(W_r x + b_r)")


def _perturb(layer, std=0.3):
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * std)


def test_fan_formula_matches_definition():
    layer = QuadLinear(5, 3)
    _perturb(layer)
    x = torch.randn(7, 5)
    r, g, b = layer.r, layer.g, layer.b
    expected = (x @ r.weight.T + r.bias) * (x @ g.weight.T + g.bias) + (x * x) @ b.weight.T + b.bias
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("neuron,formula", [
    ("compact", lambda L, x: L.r(x) + L.b(x * x)),
    ("t2", lambda L, x: L.b(x * x)),
    ("t4", lambda L, x: L.r(x) * L.g(x)),
    ("quadralib", lambda L, x: L.r(x) * L.g(x) + L.l(x)),
    ("qres", lambda L, x: L.r(x) * L.g(x) + L.r(x)),
])
def test_other_neuron_formulas(neuron, formula):
    layer = QuadConv2d(3, 4, 3, padding=1, neuron=neuron)
    _perturb(layer)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(layer(x), formula(layer, x))


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=1), dict(kernel_size=5, padding=2, groups=2), dict(kernel_size=3, padding=1, bias=False),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
])
def test_conv_signature_mirrors_torch(kwargs):
    torch_conv = nn.Conv2d(4, 6, **kwargs)
    quad = QuadConv2d(4, 6, **kwargs)
    x = torch.randn(2, 4, 9, 9)
    assert quad(x).shape == torch_conv(x).shape
    # ReLinear init: the layer computes exactly its r branch (a torch conv with the same config)
    assert torch.equal(quad(x), quad.r(x))
    assert (quad.r.bias is None) == (torch_conv.bias is None)


def test_conv1d_and_linear_equal_linear_twin_at_init():
    c1 = QuadConv1d(3, 5, 3, padding=1)
    x = torch.randn(4, 3, 11)
    twin = nn.Conv1d(3, 5, 3, padding=1)
    twin.load_state_dict({"weight": c1.r.weight, "bias": c1.r.bias})
    assert torch.equal(c1(x), twin(x))
    lin = QuadLinear(6, 2)
    tl = nn.Linear(6, 2)
    tl.load_state_dict(lin.r.state_dict())
    xx = torch.randn(3, 6)
    assert torch.equal(lin(xx), tl(xx))


def test_relinear_init_values_and_plain_init():
    layer = QuadConv2d(4, 4, 3, padding=1)
    assert torch.count_nonzero(layer.g.weight) == 0 and torch.all(layer.g.bias == 1)
    assert torch.count_nonzero(layer.b.weight) == 0 and torch.all(layer.b.bias == 0)
    assert layer.r.weight.std() > 0
    plain_init(layer)
    assert layer.g.weight.std() > 0 and layer.b.weight.std() > 0


def test_square_uses_mul_not_pow():
    layer = QuadLinear(4, 4)
    gm = torch.fx.symbolic_trace(layer)
    targets = {str(n.target) for n in gm.graph.nodes}
    assert not any("pow" in t for t in targets)


@pytest.fixture
def pw_dw_neuron():
    """A temporary neuron type (pointwise gate, depthwise power branch), removed from the registry afterwards."""
    from quadexport.layers.neurons import Branch, NeuronType, register_neuron, unregister_neuron

    nt = register_neuron(NeuronType("_test_pw_dw", "r*g1x1 + b_dw", (
        Branch("r"), Branch("g", quadratic=True, bias="always", init="one", kind="pointwise"),
        Branch("b", "x2", quadratic=True, init="zero", kind="depthwise")), lambda o: o["r"] * o["g"] + o["b"]))
    yield nt.name
    unregister_neuron(nt.name)


def test_pointwise_and_depthwise_branch_kinds(pw_dw_neuron):
    layer = QuadConv2d(8, 16, 3, stride=2, padding=1, neuron=pw_dw_neuron)
    assert layer.g.kernel_size == (1, 1) and layer.b.groups == 8
    x = torch.randn(2, 8, 10, 10)
    assert torch.equal(layer(x), layer.r(x))
    with pytest.raises(ValueError, match="pointwise"):
        QuadConv2d(8, 16, 3, padding=0, neuron=pw_dw_neuron)
