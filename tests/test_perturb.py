"""The one "ReLinear init plus a small perturbation" helper (quadexport.layers.init.perturb_quadratic): what it
changes, by how much, reproducibly; and calibrate_bn."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quadexport as q
from quadexport.layers import QuadLayer
from quadexport.layers.init import calibrate_bn, perturb_quadratic


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


@pytest.mark.parametrize("neuron", ["fan", "t4", "lowrank:2"])
def test_perturbs_only_the_quadratic_branch_weights(neuron):
    torch.manual_seed(0)
    m = q.create_model("cnn", neuron, in_channels=1, input_size=8)
    before = _snapshot(m)
    out = perturb_quadratic(m, 0.05, seed=3)
    assert out is m and not m.training
    quad = {f"{n}.{br}." for n, layer in m.named_modules() if isinstance(layer, QuadLayer)
            for br in layer.neuron_type.quadratic_branches}
    changed = _changed(before, m)
    # every quadratic branch changed, nothing else (a low-rank branch stores its weight as factors)
    assert quad and {p for p in quad if any(k.startswith(p) for k in changed)} == quad
    assert all(any(k.startswith(p) for p in quad) for k in changed)
    if neuron == "fan":  # N(0, 0.05²): the change has about that std
        for p in quad:
            d = m.state_dict()[p + "weight"] - before[p + "weight"]
            if d.numel() >= 64:
                assert 0.03 < float(d.std()) < 0.07


def test_reproducible_by_seed_and_scales():
    def build():
        torch.manual_seed(0)
        return q.create_model("cnn", "fan", in_channels=1, input_size=8)

    a, b, c = perturb_quadratic(build(), 0.1, seed=1), perturb_quadratic(build(), 0.1, seed=1), \
        perturb_quadratic(build(), 0.1, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    base = build()
    rel = perturb_quadratic(build(), 0.1, seed=1, scale="r_std")
    layer = next(l for l in base.modules() if isinstance(l, QuadLayer))
    name = next(n for n, l in base.named_modules() if l is layer)
    d_rel = rel.get_submodule(name).g.weight - layer.g.weight
    d_abs = a.get_submodule(name).g.weight - layer.g.weight
    # same draws, scaled by std(W_r) of the layer
    torch.testing.assert_close(d_rel, d_abs * float(layer.r.weight.detach().std()), rtol=1e-4, atol=1e-7)
    fan_in = perturb_quadratic(build(), 0.1, seed=1, scale="fan_in")
    d_fan = fan_in.get_submodule(name).g.weight - layer.g.weight
    torch.testing.assert_close(d_fan, d_abs / layer.g.weight[0].numel() ** 0.5, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="scale"):
        perturb_quadratic(build(), 0.1, scale="relative")


def test_calibration_sets_bn_statistics_and_keeps_outputs_finite():
    torch.manual_seed(0)
    m = q.create_model("resnet8", "fan", in_channels=1, input_size=12)
    bn = next(x for x in m.modules() if isinstance(x, nn.BatchNorm2d))
    momentum = bn.momentum
    perturb_quadratic(m, 1e-3, calib_shape=(1, 12, 12))
    assert not torch.equal(bn.running_var, torch.ones_like(bn.running_var))  # calibrated, not the init 1s
    assert bn.momentum == momentum and not m.training
    assert bool(torch.isfinite(m(torch.randn(4, 1, 12, 12))).all())
    relu = q.create_model("resnet8", "relu", in_channels=1, input_size=12)
    calibrate_bn(relu, (1, 12, 12), torch.Generator().manual_seed(0))
    assert not relu.training and not torch.equal(next(x for x in relu.modules()
                                                      if isinstance(x, nn.BatchNorm2d)).running_mean,
                                                 torch.zeros(16))
