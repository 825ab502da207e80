"""The low-rank quadratic neuron ``lowrank`` (issue #12 item 2): ReLinear exactness, rank plumbing, MAC count,
ReLinear parameter groups, BatchNorm folding, export parity (decomposed, function, fp16), the fused target's
refusal, and the checkpoint round trip of a zoo model."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import quadexport as q
from quadexport.check import check
from quadexport.runs.checkpoint import load, save_checkpoint
from quadexport.exporter import lower_functions, lowrank_ops, make_session
from quadexport.exporter.fold import fold_batchnorm, fold_plan
from quadexport.errors import UsageError
from quadexport.layers import QuadConv1d, QuadConv2d, QuadLinear
from quadexport.training.relinear import ReLinearConfig, param_groups, warm_start
from test_export import op_counts, perturb, rel_l2, torch_out  # noqa: F401  (tests/ is on sys.path)

TWINS = [
    (lambda: QuadConv2d(6, 10, 3, padding=1, neuron="lowrank", rank=3),
     lambda: nn.Conv2d(6, 10, 3, padding=1), (2, 6, 9, 9)),
    (lambda: QuadConv2d(6, 10, 3, stride=2, padding=2, dilation=2, groups=2, bias=False, neuron="lowrank:2"),
     lambda: nn.Conv2d(6, 10, 3, stride=2, padding=2, dilation=2, groups=2, bias=False), (2, 6, 9, 9)),
    (lambda: QuadConv2d(6, 10, 3, padding=0, neuron="lowrank"),  # not 'same' geometry: V takes the kernel
     lambda: nn.Conv2d(6, 10, 3, padding=0), (2, 6, 9, 9)),
    (lambda: QuadConv1d(6, 10, 4, padding="same", neuron="lowrank", rank=1),
     lambda: nn.Conv1d(6, 10, 4, padding="same"), (2, 6, 11)),
    (lambda: QuadLinear(12, 7, neuron="lowrank", rank=5), lambda: nn.Linear(12, 7), (3, 12)),
]


@pytest.mark.parametrize("make,make_twin,shape", TWINS)
def test_exact_at_init_and_trainable(make, make_twin, shape):
    layer, twin = make(), make_twin()
    twin.load_state_dict(layer.r.state_dict())
    x = torch.randn(shape)
    y = layer(x)
    assert torch.equal(y, twin(x))  # ReLinear: U_g = 0, b_g = 1, U_b = 0, c = 0 -> exactly the linear twin
    y.square().sum().backward()  # V is random, so both output maps of the bottleneck get a gradient
    assert layer.g.u.weight.grad.abs().sum() > 0
    assert layer.g.v.weight.grad is not None


def test_rank_plumbing_and_errors():
    a = QuadConv2d(8, 16, 3, padding=1, neuron="lowrank", rank=8)
    b = QuadConv2d(8, 16, 3, padding=1, neuron="lowrank:8")
    assert a.rank == b.rank == 8 and a.g.v.out_channels == 8 and b.b.in_channels == 8
    assert "rank=8" in repr(a) and "neuron='lowrank'" in repr(a)
    assert QuadConv2d(8, 16, 3, neuron="lowrank").rank == 4 and QuadConv2d(8, 16, 3).rank is None
    grouped = QuadConv2d(8, 16, 3, padding=1, groups=4, neuron="lowrank", rank=2)
    assert grouped.g.v.out_channels == 8 and grouped.g.v.groups == grouped.b.groups == 4  # rank per group
    assert a.g.v.kernel_size == (1, 1) and QuadConv2d(8, 16, 3, neuron="lowrank").g.v.kernel_size == (3, 3)
    with pytest.raises(UsageError, match="rank= applies to low-rank"):
        QuadConv2d(8, 16, 3, neuron="fan", rank=2)
    for bad in ("lowrank:0", "lowrank:x", "lowrank:2.5"):
        with pytest.raises(UsageError, match="positive integer"):
            q.get_neuron(bad)
    with pytest.raises(UsageError, match="takes no ':' argument"):
        q.get_neuron("fan:2")
    assert "lowrank" in q.list_neurons() and q.get_neuron("lowrank:2").rank == 2


def test_mac_count_is_one_plus_k_over_c():
    k, cin, cout, hw = 4, 64, 64, 8 * 8
    layer = QuadConv2d(cin, cout, 3, padding=1, bias=False, neuron="lowrank", rank=k)
    lin = cin * cout * 9 * hw
    assert q.count_macs(layer, (cin, 8, 8)) == lin + k * cin * hw + 2 * k * cout * hw  # r, V (1×1), U_g, U_b
    assert q.count_macs(layer, (cin, 8, 8)) / lin < 1 + 3 * k / (9 * cout) + 1e-9
    dense = QuadLinear(100, 50, neuron="lowrank", rank=k)
    assert q.count_macs(dense, (100,)) == 100 * 50 + k * 100 + 2 * k * 50
    relu = q.count_macs(q.create_model("resnet20", neuron="relu"), (1, 28, 28))
    ratios = [q.count_macs(q.create_model("resnet20", neuron=f"lowrank:{k}"), (1, 28, 28)) / relu for k in (1, 4, 8)]
    assert 1 < ratios[0] < ratios[1] < ratios[2] < 1.15  # ResNet20 is 16-64 channels wide


def test_relinear_treats_the_bottleneck_as_quadratic():
    model = q.create_model("resnet8", neuron="lowrank")
    groups = {g["name"]: {id(p) for p in g["params"]} for g in param_groups(model, 0.1, ReLinearConfig(mode="sg"))}
    conv = model.layer1[0].conv1
    assert id(conv.g.v.weight) in groups["g"] and id(conv.g.u.bias) in groups["g"]
    assert id(conv.b.weight) in groups["b"] and id(conv.r.weight) in groups["base"]


def test_zoo_model_equals_its_relu_twin_after_warm_start():
    relu = q.create_model("resnet20", neuron="relu").eval()
    quad = q.create_model("resnet20", neuron="lowrank").eval()
    warm_start(quad, relu.state_dict())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(quad(x), relu(x), rtol=0, atol=1e-6)


def test_checkpoint_round_trip(tmp_path):
    model = perturb(q.create_model("resnet8", neuron="lowrank:3"), 0.02, 0, (1, 28, 28))
    save_checkpoint(tmp_path / "run", model, {"input_shape": [1, 28, 28], "dataset": None})
    back = load(tmp_path / "run")
    conv = back.layer2[0].conv2
    assert conv.rank == 3 and back.quadexport_config["neuron"] == "lowrank:3"
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


# ---------------------------------------------------------------------------------------------------------------
# BatchNorm folding and export
# ---------------------------------------------------------------------------------------------------------------

def _model(neuron: str = "lowrank:3", name: str = "resnet8") -> nn.Module:
    m = perturb(q.create_model(name, neuron=neuron, in_channels=3), 0.05, 0, (3, 32, 32))
    m.quadexport_meta = {"input_shape": [3, 32, 32], "dataset": None}
    return m


class _Small(nn.Module):
    """Export test net: a 'same' conv (1×1 V), a grouped strided conv, a dense head; BN after each conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = QuadConv2d(3, 8, 3, padding=1, bias=False, neuron="lowrank", rank=2)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = QuadConv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=False, neuron="lowrank", rank=3)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = QuadLinear(8, 5, neuron="lowrank", rank=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


def _small() -> nn.Module:
    m = perturb(_Small(), 0.1, 0, (3, 16, 16))
    m.quadexport_meta = {"input_shape": [3, 16, 16], "dataset": None}
    return m


def test_bn_folds_exactly_into_primary_and_power():
    model = _model()
    assert fold_plan(q.get_neuron("lowrank")) == (("r", "b"), "b")
    x = torch.randn(4, 3, 32, 32)
    folded, rep = fold_batchnorm(model, x)
    assert rep.method == "fx" and len(rep.folded) == 7 and not rep.shifted and not rep.skipped
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    before, after = model.layer1[0].conv2, folded.layer1[0].conv2
    assert torch.equal(before.g.u.bias, after.g.u.bias) and torch.equal(before.g.v.weight, after.g.v.weight)
    assert after.b.bias is not None and before.b.bias is None  # the shift went into c
    with torch.no_grad():  # exact up to rounding the folded weights to float32 (a wrong fold is O(1) off)
        err = rel_l2(folded.double()(x.double()).numpy(), model.double()(x.double()).numpy())
    assert err < 1e-6, err


def _parity(path, model) -> None:
    rep = check(path, model, batches=(1, 3), opt_levels=("disable", "all"), verbose=False)
    assert rep.ok, "\n".join([line.format() for line in rep.lines if not line.ok] + rep.errors)


def test_export_decomposed_and_function_parity(tmp_path):
    model = _small()
    dec = q.export(model, tmp_path / "d.onnx")
    ops_d = op_counts(dec)
    assert all("::" not in k for k in ops_d) and "BatchNormalization" not in ops_d and "Pow" not in ops_d
    assert ops_d["Conv"] == 2 * 4 and ops_d["Mul"] == 3 * 2  # r, V, U_g, U_b; z*z and r*g: BN folded, no x*x
    _parity(dec, model)
    fn = q.export(model, tmp_path / "f.onnx", mode="function")
    ops_f = op_counts(fn)
    dom = lowrank_ops.DOMAIN
    assert ops_f[f"{dom}::QuadLowRankConv2d"] == 2 and ops_f[f"{dom}::QuadLowRankLinear"] == 1
    _parity(fn, model)
    lowered = lower_functions(onnx.load(str(fn)))  # the body is the decomposed graph
    ops_l = collections.Counter(n.op_type for n in lowered.graph.node)
    assert ops_l["Conv"] == ops_d["Conv"] and ops_l["Mul"] == ops_d["Mul"]
    assert not lowered.functions and all(o.domain == "" for o in lowered.opset_import)


def test_fp16_export(tmp_path):
    model = _small()
    path = q.export(model, tmp_path / "h.onnx", fp16=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    got = make_session(path).run(None, {"input": x})[0]
    assert np.isfinite(got).all() and rel_l2(got, torch_out(model, x)) < 1e-2


def test_fused_target_refuses_lowrank(tmp_path):
    with pytest.raises(UsageError, match="fan") as e:
        q.export(_small(), tmp_path / "k.onnx", mode="fused")
    assert "lowrank" in str(e.value) and "\n" not in str(e.value)
