"""Neuron types drive adopt (issue #28 item 4): a type registered with ``register_neuron`` is recognised from its
``combine`` (probed into a polynomial, operand order free) and adopted as itself, with no code in adopt. Each test
registers its type and unregisters it afterwards (the global registry is left as it was)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quadexport as q
from quadexport.layers import Branch, NeuronType, QuadLayer, list_neurons, register_neuron, unregister_neuron
from quadexport.transforms.adopt_patterns import patterns

R = Branch("r", "x", quadratic=False, bias="layer", init="kaiming")
G = Branch("g", "x", quadratic=True, bias="always", init="one")
B = Branch("b", "x2", quadratic=True, bias="layer", init="zero")
L = Branch("l", "x", quadratic=False, bias="layer", init="zero")


@pytest.fixture
def fan_skip():
    """``r·g + b(x²) + l``: the Fan neuron plus a linear skip branch (written with ``torch.mul``)."""
    nt = register_neuron(NeuronType("fan_skip_test", "r*g + b(x*x) + l", (R, G, B, L),
                                    lambda o: torch.mul(o["r"], o["g"]) + o["b"] + o["l"]))
    yield nt
    unregister_neuron(nt.name)


@pytest.fixture
def diff_gate():
    """``r·(g − l)``: a difference gate (subtraction and a product of a sum)."""
    nt = register_neuron(NeuronType("diff_gate_test", "r*(g - l)", (R, G, L), lambda o: o["r"] * (o["g"] - o["l"])))
    yield nt
    unregister_neuron(nt.name)


class FanSkipNet(nn.Module):
    """Research-style: plain convs, the new form written in another operand order, a square spelled ``x * x``."""

    def __init__(self) -> None:
        super().__init__()
        self.skip, self.gate, self.main, self.power = (nn.Conv2d(3, 8, 3, 1, 1) for _ in range(4))
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.skip(x) + self.power(x * x) + self.gate(x) * self.main(x)
        return self.fc(F.relu(self.bn(y)).mean((2, 3)))


class DiffGateMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 5), nn.Linear(6, 5), nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.a(x) * (self.b(x) - self.c(x)))


def _randomized(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.train()
    model(torch.randn(8, *shape))
    return model.eval()


def test_a_registered_type_is_adopted_as_itself(fan_skip):
    src = _randomized(FanSkipNet(), (3, 8, 8))
    model, rep = q.adopt(src, input_shape=(3, 8, 8), return_report=True)
    assert [(n.type, n.branches) for n in rep.neurons] == [
        ("fan_skip_test", {"r": "gate", "g": "main", "b": "power", "l": "skip"})]
    layer = next(m for m in model.modules() if isinstance(m, QuadLayer))
    assert isinstance(layer, q.QuadConv2d) and layer.neuron == "fan_skip_test"
    assert torch.equal(layer.l.weight, src.skip.weight) and torch.equal(layer.b.weight, src.power.weight)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert float((model(x) - src(x)).abs().max() / src(x).abs().max()) <= 1e-6
    assert model.quadexport_config["neuron"] == "fan_skip_test"


def test_unregistered_the_same_form_splits_along_the_written_sums(fan_skip):
    unregister_neuron(fan_skip.name)
    try:  # (skip(x) + power(x*x)) + gate(x) * main(x): the sums as written, each a built-in type
        src = _randomized(FanSkipNet(), (3, 8, 8))
        _, rep = q.adopt(src, input_shape=(3, 8, 8), return_report=True)
        assert [(n.type, n.branches) for n in rep.neurons] == [("compact", {"r": "skip", "b": "power"}),
                                                               ("t4", {"r": "gate", "g": "main"})]
        assert rep.max_rel_diff <= 1e-6
    finally:
        register_neuron(fan_skip)


def test_subtraction_and_product_of_a_sum(diff_gate):
    src = _randomized(DiffGateMLP(), (6,))
    model, rep = q.adopt(src, input_shape=(6,), return_report=True)
    assert [(n.type, n.branches) for n in rep.neurons] == [("diff_gate_test", {"r": "a", "g": "b", "l": "c"})]
    assert rep.max_rel_diff <= 1e-6 and isinstance(model.get_submodule("quad"), q.QuadLinear)


def test_patterns_follow_the_registry(fan_skip):
    names = [p.type for p in patterns()]
    assert names[:6] == ["fan", "compact", "t2", "t4", "quadralib", "qres"]  # built-in first: they win a tie
    assert "fan_skip_test" in names
    assert not {"fan_pw", "fan_dw", "lowrank"} & set(names)  # branches research code does not write inline
    unregister_neuron(fan_skip.name)
    try:
        assert "fan_skip_test" not in [p.type for p in patterns()] and "fan_skip_test" not in list_neurons()
    finally:
        register_neuron(fan_skip)


def test_a_type_whose_combine_is_not_a_polynomial_takes_no_part():
    nt = register_neuron(NeuronType("gelu_gate_test", "r*gelu(g)", (R, G), lambda o: o["r"] * F.gelu(o["g"])))
    try:
        assert "gelu_gate_test" not in [p.type for p in patterns()]
    finally:
        unregister_neuron(nt.name)


def test_deep_products_are_read_in_bounded_time():
    class Tower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            for _ in range(40):
                y = y * y * 1e-3
            return y

    _, rep = q.adopt(Tower(), input_shape=(2, 4, 4), return_report=True)
    assert [n.type for n in rep.neurons] == ["t4"] and rep.max_rel_diff <= 1e-6  # y * y: QuadraLib type 3
