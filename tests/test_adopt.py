"""quadexport.adopt (issue #22): quadratic neurons written as plain layers, in each public research style
(tests/adopt_models.py), become quadexport layers computing the same outputs; export, BN folding, ReLU twin, replay
from the recorded spec, and the refusals of quadratize and of the function/fused export."""

from __future__ import annotations

import collections
import copy
import json
import logging
import pickle
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import quadexport as q
from quadexport.parity import NonFiniteOutputs
from quadexport.transforms.adopter import AdoptReport, TOLERANCE
from quadexport.errors import QuadexportError, UsageError
from quadexport.layers import QuadLayer
from quadexport.transforms.adopted import apply_adopt_spec, relu_twin

sys.path.insert(0, str(Path(__file__).parent))
import adopt_models as am  # noqa: E402

SMALL_RESNET = (3, 8, 8)  # the inline QResNet20 at a small input keeps the tests fast
BITWISE = {"qresnet20", "compact_net", "t2_net", "t4_net", "qres_net", "fan_mlp", "partial_net", "fan_net1d",
           "t4_net1d", "relu_factor_net", "stride_mismatch_net", "stride_mismatch_net1d"}
"""Builders whose adopted model runs the same arithmetic as the source (no BatchNorm folded into a branch)."""


def _shape(name: str) -> tuple[int, ...]:
    return SMALL_RESNET if name == "qresnet20" else am.INPUT_SHAPES[name]


_CACHE: dict[str, tuple[nn.Module, nn.Module, AdoptReport]] = {}


def adopted(name: str) -> tuple[nn.Module, nn.Module, AdoptReport]:
    """``(source, adopted, report)`` of a builder (cached; callers must not modify them)."""
    if name not in _CACHE:
        src = am.build(name, input_shape=_shape(name))
        model, rep = q.adopt(src, input_shape=_shape(name), return_report=True)
        _CACHE[name] = (src, model, rep)
    return _CACHE[name]


def _x(name: str, n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn((n, *_shape(name)), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(am.INPUT_SHAPES))
def test_each_style_adopted_or_left_alone_exactly(name):
    src, model, rep = adopted(name)
    types = collections.Counter(n.type for n in rep.neurons)
    assert dict(types) == am.EXPECTED[name]
    layers = [m for m in model.modules() if isinstance(m, QuadLayer)]
    assert collections.Counter(m.neuron for m in layers) == types
    branches = {p for n in rep.neurons for p in n.branches.values()}
    mods = dict(model.named_modules())
    assert all(isinstance(mods[p], QuadLayer) for p in branches & set(mods))  # the branch convs left the model
    assert isinstance(model, fx.GraphModule) and model.quadexport_config["adopt"] == rep.spec
    x = _x(name)
    with torch.no_grad():
        ref, out = src.eval()(x), model.eval()(x)
    if name in BITWISE:
        assert torch.equal(ref, out)
    assert rep.max_rel_diff is not None and rep.max_rel_diff <= TOLERANCE
    assert rep.verify(x) <= TOLERANCE
    assert rep.macs_after == rep.macs_before  # same branches, same MACs (BN per branch is not a MAC)
    json.dumps(rep.to_dict())
    assert copy.deepcopy(model).quadexport_config == model.quadexport_config
    back = pickle.loads(pickle.dumps(model))  # torch.save(model), spawn-based workers
    assert back.quadexport_config == model.quadexport_config and torch.equal(back.eval()(x), out)
    assert copy.deepcopy(back).quadexport_config == model.quadexport_config


@pytest.mark.parametrize("name,reason", [("relu_factor_net", "a factor passes through relu"),
                                         ("stride_mismatch_net", "branches differ in stride"),
                                         ("stride_mismatch_net1d", "branches differ in stride")])
def test_forms_left_alone_name_their_reason(name, reason):
    _, model, rep = adopted(name)
    assert [s.reason for s in rep.skipped] == [reason]
    assert not any(isinstance(m, QuadLayer) for m in model.modules())
    assert reason in str(rep.to_dict()["skipped"])


def test_qresnet20_neurons_and_names():
    _, model, rep = adopted("qresnet20")
    first = rep.neurons[0]
    assert (first.name, first.type) == ("layer1.0.conv1", "fan")
    assert first.branches == {"r": "layer1.0.conv1r", "g": "layer1.0.conv1g", "b": "layer1.0.conv1b"}
    assert isinstance(model.get_submodule("layer3.2.conv2"), q.QuadConv2d)
    assert rep.params_after == rep.params_before and "18 fan" in rep.summary()


def test_quadralib_branch_batchnorms_fold_into_branches():
    src, model, rep = adopted("quadralib_net")
    assert all(set(n.bn.values()) == {f"features.{i}.bn1", f"features.{i}.bn2", f"features.{i}.bn3"}
               for n, i in zip(rep.neurons, (0, 2)))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert rep.params_after < rep.params_before
    x = _x("quadralib_net", 64, seed=3)
    assert rep.verify(x) <= TOLERANCE


class SquareForms(nn.Module):
    """One fan neuron, the square and the operand order chosen by the test."""

    def __init__(self, square: str, swap: bool, bias: bool, dims: int = 2) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
        self.r, self.g, self.b = (conv(2, 4, 3, stride=2, padding=2, dilation=2, groups=2, bias=bias)
                                  for _ in range(3))
        self.square, self.swap = square, swap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sq = {"pow": lambda t: t.pow(2), "**": lambda t: t ** 2, "x*x": lambda t: t * t,
              "square": torch.square, "mul": lambda t: torch.mul(t, t)}[self.square](x)
        if self.swap:
            return self.b(sq) + self.g(x) * self.r(x)
        return self.r(x) * self.g(x) + self.b(sq)


@pytest.mark.parametrize("square", ["pow", "**", "x*x", "square", "mul"])
@pytest.mark.parametrize("swap,bias,dims", [(False, True, 2), (True, False, 2), (True, True, 1)])
def test_square_spellings_operand_order_bias(square, swap, bias, dims):
    torch.manual_seed(0)
    src = am.randomize(SquareForms(square, swap, bias, dims), (2,) + (9,) * dims)
    model, rep = q.adopt(src, input_shape=(2,) + (9,) * dims, return_report=True)
    assert [n.type for n in rep.neurons] == ["fan"]
    layer = next(m for m in model.modules() if isinstance(m, QuadLayer))
    first = src.g if swap else src.r  # r is the first factor as written
    assert torch.equal(layer.r.weight, first.weight) and torch.equal(layer.b.weight, src.b.weight)
    assert (layer.stride, layer.dilation, layer.groups) == (src.r.stride, src.r.dilation, 2)
    x = torch.randn(3, 2, *(9,) * dims)
    assert torch.equal(model(x), src(x))


def test_replay_from_spec_gives_same_keys_and_outputs():
    _, model, rep = adopted("qresnet20")
    spec = json.loads(json.dumps(model.quadexport_config["adopt"]))
    torch.manual_seed(5)
    again = apply_adopt_spec(am.qresnet20(), spec)
    assert list(again.state_dict()) == list(model.state_dict())
    again.load_state_dict(model.state_dict())
    x = _x("qresnet20")
    assert torch.equal(again.eval()(x), model.eval()(x))
    assert again.quadexport_config["adopt"] == spec
    with pytest.raises(UsageError, match="not in this model's traced graph"):
        apply_adopt_spec(am.quadralib_net(), spec)


def test_relu_twin_keeps_r_branch_or_first_factor():
    src, model, _ = adopted("qresnet20")
    twin = relu_twin(model)
    conv = twin.get_submodule("layer2.0.conv1")
    assert type(conv) is nn.Conv2d and conv.stride == (2, 2)
    assert torch.equal(conv.weight, src.layer2[0].conv1r.weight)
    assert not any(isinstance(m, QuadLayer) for m in twin.modules())
    assert twin.quadexport_config["neuron"] == "relu"
    stem_head = 8 * 8 * 16 * 3 * 9 + 64 * 10  # conventional in both
    macs, twin_macs = q.count_macs(model, SMALL_RESNET), q.count_macs(twin, SMALL_RESNET)
    assert macs - stem_head == 3 * (twin_macs - stem_head)  # three branch convs per neuron -> one
    assert twin(_x("qresnet20")).shape == (4, 10)
    t2_src, t2_model, _ = adopted("t2_net")  # no r branch: the twin is the power branch's map applied to x
    assert torch.equal(relu_twin(t2_model).get_submodule("conv1").weight, t2_src.conv1.weight)


def test_adopted_model_trains():
    _, model, _ = adopted("fan_mlp")
    work = copy.deepcopy(model).train()
    before = {k: v.clone() for k, v in work.state_dict().items()}
    opt = torch.optim.SGD(work.parameters(), lr=0.1)
    F.cross_entropy(work(_x("fan_mlp", 16)), torch.arange(16) % 10).backward()
    opt.step()
    changed = {k for k, v in work.state_dict().items() if not torch.equal(v, before[k])}
    assert {"fc1.g.weight", "fc1.b.weight", "fc2.r.weight", "head.weight"} <= changed


def test_include_exclude_and_typo():
    src, _, _ = adopted("t4_net")
    model, rep = q.adopt(src, input_shape=_shape("t4_net"), exclude="conv4", return_report=True)
    assert [n.branches for n in rep.neurons] == [{"r": "conv1", "g": "conv2"}]
    assert [s.reason for s in rep.skipped] == ["t4 neuron excluded"]
    assert torch.equal(model(_x("t4_net")), src(_x("t4_net")))
    with pytest.raises(UsageError, match="matches no quadratic neuron"):
        q.adopt(src, include="conv9")


def test_untraceable_model_is_one_line_usage_error():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(UsageError, match="torch.fx") as e:
        q.adopt(Branchy())
    assert "\n" not in str(e.value)


def test_quadratize_refuses_foreign_neurons_then_leaves_adopted_model_alone():
    src, model, _ = adopted("qresnet20")
    with pytest.raises(UsageError, match="adopt") as e:
        q.quadratize(src, input_shape=SMALL_RESNET)
    assert "\n" not in str(e.value) and "18 quadratic neuron" in str(e.value)
    again, rep = q.quadratize(model, input_shape=SMALL_RESNET, return_report=True)
    assert rep.converted == [] and rep.macs_after == rep.macs_before  # stem and head only: nothing squared


@pytest.mark.parametrize("mode", ["function", "fused"])
def test_export_refuses_model_without_quadexport_layers(tmp_path, mode):
    src, _, _ = adopted("qresnet20")
    with pytest.raises(QuadexportError, match="adopt") as e:
        q.export(src, tmp_path / "x.onnx", mode=mode, input_shape=SMALL_RESNET)
    assert "\n" not in str(e.value) and "18 quadratic neuron(s)" in str(e.value) and "conv1r" in str(e.value)
    with pytest.raises(QuadexportError, match="no quadexport quadratic layer"):
        q.export(q.create_model("cnn", "relu"), tmp_path / "y.onnx", mode=mode)
    assert not list(tmp_path.iterdir())


def _ops(path: Path) -> collections.Counter:
    return collections.Counter(n.op_type if not n.domain else f"{n.domain}::{n.op_type}"
                               for n in onnx.load(str(path)).graph.node)


def _ort(path: Path, x: torch.Tensor, **kw) -> np.ndarray:
    sess = q.make_session(path, **kw)
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def _rel(ref: torch.Tensor, out: np.ndarray) -> float:
    ref = ref.detach().numpy()
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def test_qresnet20_exports_folded_and_fused(tmp_path):
    src, model, _ = adopted("qresnet20")
    x = _x("qresnet20", 3)
    ref = src(x)
    dec = q.export(model, tmp_path / "dec.onnx", mode="decomposed", opset=17, input_shape=SMALL_RESNET)
    ops = _ops(dec)
    assert "BatchNormalization" not in ops and "Pow" not in ops
    assert _rel(ref, _ort(dec, x)) <= 1e-5
    naive = q.export(src, tmp_path / "naive.onnx", mode="decomposed", opset=17, input_shape=SMALL_RESNET)
    assert _ops(naive)["BatchNormalization"] == 18 and _ops(naive)["Pow"] == 18  # what adopt removes
    fused = q.export(model, tmp_path / "fused.onnx", mode="fused", input_shape=SMALL_RESNET)
    custom = {k: v for k, v in _ops(fused).items() if "::" in k}
    assert sum(custom.values()) == 18
    assert _rel(ref, _ort(fused, x, kernel_library="never")) <= 1e-5  # function bodies
    sess = q.make_session(fused)
    if getattr(sess, "quadexport_kernel", None) is not None:  # the kernel library is built
        assert _rel(ref, sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]) <= 1e-5


@pytest.mark.parametrize("name", ["quadralib_net", "compact_net", "t2_net", "qres_net", "fan_mlp", "fan_net1d"])
def test_small_styles_export_function_mode_in_parity(tmp_path, name, caplog):
    src, model, rep = adopted(name)
    x = _x(name, 3)
    with caplog.at_level(logging.WARNING, logger="quadexport"):
        path = q.export(model, tmp_path / f"{name}.onnx", mode="function", input_shape=_shape(name))
    custom = sum(v for k, v in _ops(path).items() if "::" in k)
    fan_form = [n for n in rep.neurons if q.get_neuron(n.type).fan_form is not None]
    assert custom == len(fan_form)  # quadralib has no Fan form: it stays decomposed (function mode says so)
    assert _rel(src(x), _ort(path, x, kernel_library="never")) <= 1e-5
    assert "stay standard ops" not in caplog.text


def test_partial_adoption_export_logs_how_many_stay_standard(tmp_path, caplog):
    src, _, _ = adopted("t4_net")
    model = q.adopt(src, input_shape=_shape("t4_net"), exclude="conv4")
    with caplog.at_level(logging.WARNING, logger="quadexport"):
        path = q.export(model, tmp_path / "p.onnx", mode="function", input_shape=_shape("t4_net"))
    assert "1 quadratic neuron(s) written as plain layers stay standard ops" in caplog.text
    assert sum(v for k, v in _ops(path).items() if "::" in k) == 1
    x = _x("t4_net", 3)
    assert _rel(src(x), _ort(path, x, kernel_library="never")) <= 1e-5


def test_adopting_in_two_steps_records_both_for_replay():
    src, _, _ = adopted("t4_net")
    first = q.adopt(src, input_shape=_shape("t4_net"), exclude="conv4")
    second = q.adopt(first, input_shape=_shape("t4_net"))
    spec = second.quadexport_config["adopt"]
    assert [n["branches"] for n in spec["neurons"]] == [{"r": "conv1", "g": "conv2"}, {"r": "conv4", "g": "conv3"}]
    again = apply_adopt_spec(am.t4_net(), spec)
    assert sorted(again.state_dict()) == sorted(second.state_dict())
    again.load_state_dict(second.state_dict())
    assert torch.equal(again.eval()(_x("t4_net")), src(_x("t4_net")))


@pytest.mark.parametrize("name", ["qresnet20", "quadralib_net", "fan_mlp", "compact_net"])
def test_exact_on_real_inputs(name):
    from quadexport.data import load_dataset

    digits = load_dataset("digits", test_subset=64)
    x = digits.x_test  # (64, 1, 8, 8), normalised
    torch.manual_seed(0)
    src = am.randomize(getattr(am, name)(in_channels=1), (1, 8, 8))
    model, rep = q.adopt(src, example_input=x, return_report=True)
    assert rep.neurons and rep.input_shape == (1, 8, 8) and rep.max_rel_diff <= TOLERANCE
    assert rep.verify(x[:16]) <= TOLERANCE  # a "verify(x)" hook on any real batch
    if name == "qresnet20":  # its random quadratic weights overflow float32 on 3x the inputs: refused in one line,
        with pytest.raises(NonFiniteOutputs, match="not finite .*--input-range"):  # never "unchanged"
            rep.verify_fp64(x * 3, "3x digits")
        assert rep.verify(x * 3) == float("inf")
    if name in BITWISE:
        assert torch.equal(model(x), src(x))


def test_bilinear_full_form_is_named_and_left_alone():
    class Type1(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bil = nn.Bilinear(6, 6, 4)

        def forward(self, x):
            return self.bil(x, x)

    model, rep = q.adopt(Type1(), input_shape=(6,), return_report=True)
    assert not rep.neurons and [s.modules for s in rep.skipped] == [("bil",)]
    assert "no registered neuron type" in rep.skipped[0].reason


def test_cli_export_fused_of_a_model_without_quadexport_layers_names_adopt(tmp_path):
    import os
    import subprocess

    from quadexport.runs.checkpoint import save_checkpoint

    run = tmp_path / "relu"
    save_checkpoint(run, q.create_model("cnn", "relu", width=4), {"input_shape": [1, 8, 8]})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    for mode in ("fused",):  # function: the same refusal, through the API above
        out = tmp_path / f"{mode}.onnx"
        r = subprocess.run([sys.executable, "-m", "quadexport", "export", str(run), str(out), "--mode", mode],
                           capture_output=True, text=True, env=env, timeout=300)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "quadexport.adopt" in lines[0], r.stderr
        assert not out.exists()
