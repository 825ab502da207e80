"""quadexport.adopt on the functional and transposed styles of public research code (issue #30): raw parameters with
``F.conv1d``/``F.conv2d``/``F.linear``/``matmul``, ``nn.ConvTranspose2d`` neurons, models already made of quadexport
layers, one real checkpoint layout per style; export of the results (tests/adopt_functional_models.py)."""

from __future__ import annotations

import collections
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quadexport as q
from quadexport.transforms.adopter import TOLERANCE
from quadexport.errors import UsageError
from quadexport.layers import QuadConvTranspose2d, QuadLayer
from quadexport.transforms.adopted import apply_adopt_spec
from quadexport.transforms.statedict import load_into

sys.path.insert(0, str(Path(__file__).parent))
import adopt_functional_models as fm  # noqa: E402

BITWISE = {"qcnn1d", "qunet", "qres_mlp", "qae", "qx_heads", "qx_mixed", "quadranet", "quadralib_types"}
"""Builders whose adopted model runs the same arithmetic (qmlp: its ``+ b_b`` moves into the power branch's map)."""

_CACHE: dict[str, tuple] = {}


def adopted(name: str):
    if name not in _CACHE:
        src = fm.build(name)
        model, rep = q.adopt(src, example_input=fm.example(name), return_report=True)
        _CACHE[name] = (src, model, rep)
    return _CACHE[name]


@pytest.mark.parametrize("name", sorted(fm.EXPECTED))
def test_functional_and_transposed_styles_adopted_exactly(name):
    src, model, rep = adopted(name)
    assert dict(collections.Counter(n.type for n in rep.neurons)) == fm.EXPECTED[name]
    x = fm.example(name, 8, seed=7)
    with torch.no_grad():
        ref, out = src(x), model(x)
    if name in BITWISE:
        assert torch.equal(ref, out)
    assert rep.verify(x) <= TOLERANCE
    if name == "quadralib_types":  # type 3 (y * y of one conv) is a t4 whose branches both hold that conv
        assert [s.modules for s in rep.skipped] == [("t1",)] and "QuadraLib type 1" in rep.skipped[0].reason
        assert [n.branches for n in rep.neurons][1] == {"r": "t3", "g": "t3"}
        assert rep.macs_after - rep.macs_before == q.count_macs(nn.Sequential(src.t3), (8, 12, 12))
    else:
        assert not rep.skipped and rep.macs_after == rep.macs_before
    keys = set(model.state_dict())
    moved = {p for n in rep.neurons for p in n.branches.values()}
    assert not moved & keys  # the source's weights left the model (moved into the layers)
    assert not any(k.split(".")[-1] in ("bias_r", "bias_g", "bias_b", "b1", "b2") for k in keys)
    # the spec replays on a fresh build: same keys, the adopted weights load strictly, same outputs
    torch.manual_seed(11)
    again = apply_adopt_spec(getattr(fm, name)(), model.quadexport_config["adopt"])
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(again.eval()(x), out)


def test_functional_neurons_take_their_geometry_from_the_call():
    _, model, rep = adopted("qcnn1d")
    first = model.get_submodule("q1")
    assert isinstance(first, q.QuadConv1d) and (first.stride, first.padding, first.kernel_size) == ((4,), (6,), (16,))
    assert [n.name for n in rep.neurons] == ["q1", "features.0", "features.4", "features.8", "features.12",
                                             "features.16"]
    plist = rep.neurons[3]  # the ParameterList layer: no biases, so the power branch has none either
    assert plist.branches == {"r": "features.8.w.0", "g": "features.8.w.1", "b": "features.8.w.2"}
    assert model.get_submodule("features.8").b.bias is None
    assert rep.params_after == rep.params_before + 32  # the gate bias a fan layer always has (zero here)


def test_qmlp_matmul_weights_either_layout_and_trailing_bias():
    src, model, rep = adopted("qmlp")
    assert [n.branches["r"] for n in rep.neurons] == ["l1.weight_r", "l2.weight_r"]
    l1, l2 = model.get_submodule("l1"), model.get_submodule("l2")
    assert torch.equal(l1.r.weight, src.l1.weight_r) and torch.equal(l2.r.weight, src.l2.weight_r.t())
    assert torch.equal(l1.b.bias, src.l1.bias_b)  # "... + x**2 @ W_b.t() + b_b": b_b is the power branch's bias


def _ops(path) -> collections.Counter:
    return collections.Counter(n.op_type if not n.domain else f"{n.domain}::{n.op_type}"
                               for n in onnx.load(str(path)).graph.node)


def _rel(path, x: torch.Tensor, ref: torch.Tensor, **kw) -> float:
    sess = q.make_session(path, **kw)
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return float(np.abs(out - ref.numpy()).max() / np.abs(ref.numpy()).max())


@pytest.mark.parametrize("name,custom", [("qcnn1d", 6), ("qres_mlp", 4)])
def test_functional_nets_export_fused_one_custom_node_per_neuron(tmp_path, name, custom):
    src, model, _ = adopted(name)
    x = fm.example(name, 3, seed=5)
    with torch.no_grad():
        ref = src(x)
    path = q.export(model, tmp_path / f"{name}.onnx", mode="fused", input_shape=fm.INPUT_SHAPES[name])
    assert sum(v for k, v in _ops(path).items() if "::" in k) == custom
    assert _rel(path, x, ref, kernel_library="never") <= 1e-5  # the function bodies
    sess = q.make_session(path)
    if getattr(sess, "quadexport_kernel", None) is not None:  # the kernel library is built
        assert _rel(path, x, ref) <= 1e-5


def test_autoencoder_transposed_neurons_export_in_every_mode(tmp_path, caplog):
    src, model, rep = adopted("qae")
    assert sum(isinstance(m, QuadConvTranspose2d) for m in model.modules()) == 5
    assert sum(isinstance(m, q.QuadConv2d) for m in model.modules()) == 5
    x = fm.example("qae", 2, seed=3)
    with torch.no_grad():
        ref = src(x)
    dec = q.export(model, tmp_path / "dec.onnx", mode="decomposed", input_shape=fm.INPUT_SHAPES["qae"])
    assert _ops(dec)["ConvTranspose"] == 15 and _rel(dec, x, ref) <= 1e-5
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fused = q.export(model, tmp_path / "fused.onnx", mode="fused", input_shape=fm.INPUT_SHAPES["qae"])
    said = [str(m.message) for m in w if "stay decomposed" in str(m.message)]
    assert len(said) == 1 and "\n" not in said[0] and said[0].startswith("5 quadratic layer(s)")
    assert "forward convolutions only" in said[0] and "tconv1" in said[0]
    ops = _ops(fused)
    assert sum(v for k, v in ops.items() if "::" in k) == 5 and ops["ConvTranspose"] == 15
    assert _rel(fused, x, ref, kernel_library="never") <= 1e-5


def test_transposed_layer_signature_init_bn_fold_and_macs():
    layer = QuadConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
    ref = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
    ref.weight.data.copy_(layer.r.weight)
    ref.bias.data.copy_(layer.r.bias)
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(layer(x), ref(x))  # ReLinear init: the r branch exactly
    with pytest.raises(UsageError, match="full-size branches"):
        QuadConvTranspose2d(4, 6, 3, neuron="lowrank")
    torch.manual_seed(0)
    for p in layer.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    net = nn.Sequential(layer, nn.BatchNorm2d(6)).eval()
    net[1].running_mean.normal_()
    net[1].running_var.uniform_(0.5, 2.0)
    from quadexport.exporter.fold import fold_batchnorm

    folded, report = fold_batchnorm(net, x)
    assert len(report.folded) == 1 and isinstance(folded[1], nn.Identity)
    with torch.no_grad():
        assert float((folded(x) - net(x)).abs().max() / net(x).abs().max()) <= 1e-5
    # MACs: each input position scatters to (out / groups) * k*k outputs, per branch
    assert q.count_macs(nn.Sequential(layer), (4, 5, 5)) == 3 * 4 * 25 * 3 * 9


class _Mismatch(nn.Module):
    """Functional factors whose stride differs (5x5 input: both give 3x3), and a 3-d functional neuron."""

    def __init__(self) -> None:
        super().__init__()
        self.w1, self.w2 = nn.Parameter(torch.randn(4, 2, 3, 3)), nn.Parameter(torch.randn(4, 2, 3, 3))
        self.v = nn.ParameterList([nn.Parameter(torch.randn(4, 2, 1, 1, 1)) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.w1, stride=2, padding=1) * F.conv2d(x, self.w2)
        z = x.unsqueeze(2)
        z = F.conv3d(z, self.v[0]) * F.conv3d(z, self.v[1])
        return y.mean((2, 3)) + z.mean((2, 3, 4))


def test_functional_forms_left_alone_are_named_with_their_reason():
    _, rep = q.adopt(_Mismatch(), input_shape=(2, 5, 5), return_report=True)
    assert not rep.neurons
    reasons = {s.modules: s.reason for s in rep.skipped}
    assert reasons[("w1", "w2")] == "branches differ in stride"
    assert reasons[("v.0", "v.1")] == "v.0: 3-d convolutions have no quadexport layer"


@pytest.mark.parametrize("name", sorted(fm.CHECKPOINT_LAYOUTS))
def test_each_style_loads_its_real_checkpoint_layout_then_adopts(tmp_path, name):
    trained = fm.build(name, seed=3)
    fm.save_checkpoint(name, trained, tmp_path / "ckpt.pth")
    torch.manual_seed(0)
    model = getattr(fm, name)().eval()
    loaded = load_into(model, tmp_path / "ckpt.pth")
    assert (loaded.container, loaded.stripped) == {
        "bare": (None, []), "model+optimizer+args": ("model", []), "model_state_dict": ("model_state_dict", []),
        "dataparallel": (None, ["module."]), "net": ("net", [])}[fm.CHECKPOINT_LAYOUTS[name]]
    x = fm.example(name)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))
    _, rep = q.adopt(model, example_input=x, return_report=True)
    assert len(rep.neurons) == sum(fm.EXPECTED[name].values()) and rep.max_rel_diff <= TOLERANCE


def test_model_of_quadexport_layers_is_reported_as_such():
    _, model, rep = adopted("qx_heads")
    assert rep.neurons == [] and rep.already == ["c1", "c2", "head"]
    assert "0 neuron(s) rewritten (none), 3 already quadexport" in rep.summary()
    assert model.quadexport_config["neuron"] in ("fan", "t4", "qres")
    _, _, mixed = adopted("qx_mixed")
    assert [n.name for n in mixed.neurons] == ["inline"] and mixed.already == ["c1", "c2", "head"]


def test_untraceable_model_of_quadexport_layers_is_kept(caplog):
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = q.QuadLinear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with caplog.at_level(logging.WARNING, logger="quadexport"):
        model, rep = q.adopt(Branchy(), input_shape=(4,), return_report=True)
    assert rep.already == ["fc"] and rep.max_rel_diff == 0.0 and "cannot trace" in caplog.text
    assert "torch.fx cannot trace" in rep.skipped[0].reason


def test_the_pinn_form_forward_x_t_is_matched_in_its_graph():
    from quadexport.transforms.adopted import scan

    found = scan(fm.qres_pinn())  # forward(x, t): two placeholders, the same four QRes neurons
    assert found.traced and [t for t, _ in found.neurons] == ["qres"] * 4
    assert found.neurons[0][1] == ("blocks.0.W1", "blocks.0.W2")


class _Deconv1d(nn.Module):
    """A functional transposed-conv neuron (``F.conv_transpose1d`` on raw parameters, geometry as keywords)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.ParameterList([nn.Parameter(0.3 * torch.randn(4, 3, 5)) for _ in range(3)])
        self.b = nn.ParameterList([nn.Parameter(0.1 * torch.randn(3)) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kw = dict(stride=2, padding=1, output_padding=1)
        return (F.conv_transpose1d(x, self.w[0], self.b[0], **kw) * F.conv_transpose1d(x, self.w[1], self.b[1], **kw)
                + F.conv_transpose1d(x * x, self.w[2], self.b[2], **kw))


def test_functional_transposed_conv1d_neuron(tmp_path):
    src = _Deconv1d().eval()
    model, rep = q.adopt(src, input_shape=(4, 9), return_report=True)
    layer = model.get_submodule("w")
    assert isinstance(layer, q.QuadConvTranspose1d) and [n.type for n in rep.neurons] == ["fan"]
    assert (layer.stride, layer.padding, layer.output_padding, layer.kernel_size) == ((2,), (1,), (1,), (5,))
    assert sorted(model.state_dict()) == sorted(f"w.{r}.{p}" for r in "rgb" for p in ("weight", "bias"))
    x = torch.randn(2, 4, 9)
    with torch.no_grad():
        assert torch.equal(model(x), src(x)) and rep.macs_after == rep.macs_before > 0
        path = q.export(model, tmp_path / "d.onnx", mode="decomposed", input_shape=(4, 9))
        assert _rel(path, x, src(x)) <= 1e-5
