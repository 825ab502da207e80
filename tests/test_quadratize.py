"""Quadratize any model (issue #12): exact conversion of conv/linear layers, selection, report, metadata, foreign
architectures (torchvision:/timm:), export parity, the CLI round trip."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quadexport
from quadexport import create_model, quadratize
from quadexport.errors import UsageError
from quadexport.layers import QuadConv1d, QuadConv2d, QuadLayer, QuadLinear
from quadexport.layers.convert import to_quadratic, unsupported_reason


def _perturb(model: nn.Module, rel: float = 1e-3, seed: int = 0) -> None:
    """Make the quadratic terms live: W_g, W_b += N(0, (rel * std(W_r))²)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, QuadLayer):
                s = float(m.r.weight.std())
                for br in m.neuron_type.quadratic_branches:
                    w = getattr(m, br).weight
                    w.add_(torch.randn(w.shape, generator=g, dtype=w.dtype) * rel * s)


def _calibrate_bn(model: nn.Module, shape: tuple[int, ...]) -> None:
    """BatchNorm statistics from one train-mode pass over N(0, 1) inputs, as a trained model has them (untrained
    running stats let activations grow through depth)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for b in bns:
        b.reset_running_stats()
        b.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn((64, *shape), generator=torch.Generator().manual_seed(1)))
    model.eval()


# ------------------------------------------------------------------------------------------------------------------
# one layer
# ------------------------------------------------------------------------------------------------------------------

CONV_CASES = [
    ("grouped", dict(in_channels=8, out_channels=12, kernel_size=3, padding=1, groups=4)),
    ("depthwise", dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8)),
    ("depthwise-mult", dict(in_channels=4, out_channels=8, kernel_size=5, padding=2, groups=4)),
    ("no-bias", dict(in_channels=3, out_channels=6, kernel_size=3, bias=False)),
    ("dilated-strided", dict(in_channels=3, out_channels=5, kernel_size=3, padding=2, dilation=2, stride=2)),
    ("same", dict(in_channels=3, out_channels=4, kernel_size=4, padding="same")),
    ("asym", dict(in_channels=3, out_channels=4, kernel_size=(1, 3), padding=(0, 1), stride=(2, 1))),
] + [(f"pad-{mode}", dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, padding_mode=mode))
     for mode in ("zeros", "reflect", "replicate", "circular")]


@pytest.mark.parametrize("neuron", ["fan", "compact", "qres", "lowrank:2"])
@pytest.mark.parametrize("case,kw", CONV_CASES, ids=[c for c, _ in CONV_CASES])
def test_conv2d_exact(case: str, kw: dict, neuron: str) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(**kw)
    if conv.bias is not None:
        nn.init.normal_(conv.bias)
    q = to_quadratic(conv, neuron)
    assert isinstance(q, QuadConv2d) and q.groups == conv.groups and q.padding_mode == conv.padding_mode
    x = torch.randn(2, kw["in_channels"], 9, 11)
    assert torch.equal(q(x), conv(x))
    assert torch.equal(q.r.weight, conv.weight) and q.r.weight is not conv.weight
    _perturb(q, rel=0.1)  # the quadratic terms are live: the output moves
    assert not torch.allclose(q(x), conv(x))


def test_linear_conv1d_subclass_dtype_and_grad_flags() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(6, 4).double()
    lin.weight.requires_grad_(False)
    q = to_quadratic(lin, "fan")
    assert isinstance(q, QuadLinear) and q.r.weight.dtype == torch.float64 and not q.r.weight.requires_grad
    x = torch.randn(3, 5, 6, dtype=torch.float64)  # inputs of rank 3 (token sequences)
    assert torch.equal(q(x), lin(x))
    c1 = nn.Conv1d(3, 4, 3, padding=1, padding_mode="reflect").eval()
    q1 = to_quadratic(c1, "t4")
    assert isinstance(q1, QuadConv1d) and not q1.training
    x1 = torch.randn(2, 3, 7)
    assert torch.equal(q1(x1), c1(x1))
    # a subclass keeping nn.Linear.forward (like MHA's NonDynamicallyQuantizableLinear) is converted
    sub = nn.modules.linear.NonDynamicallyQuantizableLinear(4, 4)
    assert unsupported_reason(sub) is None
    assert torch.equal(to_quadratic(sub)(x[..., :4].float()), sub(x[..., :4].float()))


class _StdConv(nn.Conv2d):
    def forward(self, x):  # weight standardisation: not a plain conv
        w = (self.weight - self.weight.mean()) / (self.weight.std() + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


@pytest.mark.parametrize("module,needle", [
    (nn.Conv3d(2, 2, 1), "Conv3d is not supported"),
    (nn.ConvTranspose2d(2, 2, 3), "ConvTranspose2d is not supported"),
    (nn.LazyConv2d(4, 3), "lazy"),
    (_StdConv(2, 2, 3), "overrides Conv2d.forward"),
    (nn.utils.parametrizations.weight_norm(nn.Linear(3, 3)), "parametrized"),
])
def test_unsupported_layers_are_named(module: nn.Module, needle: str) -> None:
    assert needle in unsupported_reason(module)
    with pytest.raises(UsageError, match="cannot quadratize"):
        to_quadratic(module)


def test_neuron_and_rank_errors() -> None:
    with pytest.raises(UsageError, match="no linear branch.*fan"):
        to_quadratic(nn.Linear(3, 3), "t2")
    with pytest.raises(UsageError, match="unknown neuron type"):
        to_quadratic(nn.Linear(3, 3), "fna")
    with pytest.raises(UsageError, match="rank"):
        to_quadratic(nn.Linear(3, 3), "fan", rank=2)
    with pytest.raises(UsageError, match="rank must be"):
        quadratize(nn.Sequential(nn.Linear(3, 3)), rank=0)


# ------------------------------------------------------------------------------------------------------------------
# whole models: selection, report, metadata
# ------------------------------------------------------------------------------------------------------------------

class _Net(nn.Module):
    """A user's own network: stem, a depthwise/grouped body with odd layers, an attention block, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False, padding_mode="reflect")
        self.pw = nn.Conv2d(8, 16, 1)
        self.bn = nn.BatchNorm2d(16)
        self.vol = nn.Conv3d(1, 1, 1)
        self.up = nn.ConvTranspose2d(16, 16, 2, stride=2)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.pw(F.relu(self.dw(self.stem(x))))))
        x = self.up(x) + self.vol(x.unsqueeze(1)).squeeze(1).repeat_interleave(2, -1).repeat_interleave(2, -2)
        t = x.flatten(2).transpose(1, 2)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        t = t + self.mlp(t)
        return self.head(t.mean(1))


def test_default_selection_report_and_exactness(caplog) -> None:
    torch.manual_seed(0)
    net = _Net().eval()
    x = torch.randn(2, 3, 6, 6)
    with caplog.at_level("DEBUG", logger="quadexport.transforms.quadratizer"):
        q, rep = quadratize(net, "fan", input_shape=(3, 6, 6), return_report=True)
    assert rep.converted == ["dw", "pw", "mlp.0", "mlp.2"]
    reasons = {s.name: s.reason for s in rep.skipped}
    assert set(reasons) == {"stem", "vol", "up", "attn.out_proj", "head"}
    assert "stem" in reasons["stem"] and "head" in reasons["head"]
    assert "MultiheadAttention" in reasons["attn.out_proj"] and "Conv3d" in reasons["vol"]
    assert isinstance(q.dw, QuadConv2d) and isinstance(net.dw, nn.Conv2d)  # not in place: the original is intact
    assert torch.equal(q(x), net(x)) and rep.max_rel_diff == 0.0
    assert rep.params_after > rep.params_before and rep.macs_after > rep.macs_before
    assert "4 layer(s) quadratic" in caplog.text
    assert rep.to_dict()["input_shape"] == [3, 6, 6]


def test_include_exclude_globs_and_predicate() -> None:
    net = _Net()
    q, rep = quadratize(net, include=["stem", "mlp.*"], exclude="mlp.2", return_report=True)
    assert rep.converted == ["stem", "mlp.0"] and rep.max_rel_diff is None  # no input shape: not verified
    assert {s.reason for s in rep.skipped if s.name == "mlp.2"} == {"excluded"}
    q2, rep2 = quadratize(net, include=lambda n, m: isinstance(m, nn.Linear), return_report=True)
    assert rep2.converted == ["mlp.0", "mlp.2", "head"]  # an explicit include may take the head
    with pytest.raises(UsageError, match="matches no conv/linear layer; did you mean 'stem'"):
        quadratize(net, include=["stme"])


def test_lowrank_rank_flows_through() -> None:
    net = _Net().eval()
    q, rep = quadratize(net, "lowrank", rank=2, input_shape=(3, 6, 6), return_report=True)
    assert rep.max_rel_diff == 0.0 and q.pw.rank == 2 and q.mlp[0].rank == 2
    r8 = quadratize(create_model("resnet8", neuron="relu"), "lowrank", rank=3)
    assert r8.quadexport_config["quadratize"]["layers"]["layer1.0.conv1"] == {"neuron": "lowrank", "rank": 3}
    rebuilt = create_model(**copy.deepcopy(r8.quadexport_config))
    rebuilt.load_state_dict(r8.state_dict())
    assert rebuilt.layer1[0].conv1.rank == 3


def test_inplace_keeps_device_dtype_and_mode() -> None:
    net = _Net().double().train()
    out = quadratize(net, "compact", inplace=True, input_shape=(3, 6, 6))
    assert out is net and isinstance(net.pw, QuadLayer) and net.training
    assert all(p.dtype == torch.float64 for p in net.parameters())


def test_zoo_rebuild_and_metadata_does_not_leak(tmp_path) -> None:
    torch.manual_seed(0)
    relu = create_model("resnet8", neuron="relu", in_channels=1, input_size=12)
    relu.quadexport_meta = {"dataset": "digits", "input_shape": [1, 12, 12], "test_acc": 0.93,
                            "relinear": {"mode": "sg"}}
    _calibrate_bn(relu, (1, 12, 12))
    q, rep = quadratize(relu, "fan", return_report=True)
    assert rep.macs_before is not None and rep.max_rel_diff == 0.0
    cfg = q.quadexport_config
    assert cfg["neuron"] == "fan" and relu.quadexport_config["neuron"] == "relu"
    assert sorted(cfg["quadratize"]["layers"]) == sorted(rep.converted)
    assert "test_acc" not in q.quadexport_meta and q.quadexport_meta["source"]["test_acc"] == 0.93
    # loading = create_model(**config) + load_state_dict
    rebuilt = create_model(**copy.deepcopy(cfg))
    rebuilt.load_state_dict(q.state_dict())
    # the default selection matches the zoo's own quadratic ResNet (stem and head conventional)
    assert set(create_model("resnet8").state_dict()) == set(q.state_dict())
    path = quadexport.export(q, tmp_path / "q.onnx")
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["quadexport.neuron"] == "fan" and "quadexport.test_acc" not in props


def test_weights_file_maps_plain_keys_and_names_mismatches(tmp_path) -> None:
    from quadexport.transforms.weights import WeightsError, load_weights

    torch.manual_seed(0)
    relu = create_model("cnn", neuron="relu")
    torch.save(relu.state_dict(), tmp_path / "w.pt")
    quad = create_model("cnn", neuron="fan")
    load_weights(quad, tmp_path / "w.pt")  # conv1.weight -> conv1.r.weight; g/b keep their init
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(quad.eval()(x), relu.eval()(x), rtol=0, atol=0)
    torch.save({"state_dict": create_model("cnn", neuron="relu", width=8).state_dict()}, tmp_path / "w8.pt")
    with pytest.raises(WeightsError, match="of another shape: conv1.weight"):
        load_weights(quad, tmp_path / "w8.pt")
    torch.save({"fc.weight": torch.zeros(10, 32)}, tmp_path / "part.pt")
    with pytest.raises(WeightsError, match="missing: conv1.r.weight"):
        load_weights(quad, tmp_path / "part.pt")


# ------------------------------------------------------------------------------------------------------------------
# foreign architectures
# ------------------------------------------------------------------------------------------------------------------

FOREIGN = [("torchvision:resnet18", {}), ("torchvision:mobilenet_v3_small", {}),
           ("timm:vit_tiny_patch16_224", {"patch_size": 8, "depth": 2}),
           ("timm:convnext_atto", {"depths": [1, 1, 1, 1]})]


@pytest.mark.parametrize("name,kw", FOREIGN, ids=[n for n, _ in FOREIGN])
def test_foreign_exact_at_init_and_rebuild(name: str, kw: dict) -> None:
    torch.manual_seed(0)
    relu = create_model(name, neuron="relu", num_classes=10, in_channels=3, input_size=32, **kw).eval()
    q, rep = quadratize(relu, "fan", return_report=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(q(x), relu(x))
    assert len(rep.converted) > 0 and {s.reason.split(" (")[0] for s in rep.skipped} == {"stem", "classifier head"}
    # create_model with the neuron quadratizes the same layers; the config rebuilds it
    direct = create_model(name, neuron="fan", num_classes=10, in_channels=3, input_size=32, **kw)
    assert set(direct.state_dict()) == set(q.state_dict())
    create_model(**copy.deepcopy(q.quadexport_config)).load_state_dict(q.state_dict())


def test_foreign_adapts_stem_head_and_refuses_downloads() -> None:
    m = create_model("torchvision:resnet18", neuron="relu", num_classes=7, in_channels=1, input_size=16)
    assert m(torch.randn(2, 1, 16, 16)).shape == (2, 7)
    with pytest.raises(UsageError, match="nothing is downloaded"):
        create_model("timm:convnext_atto", pretrained=True)
    with pytest.raises(UsageError, match="did you mean 'resnet18'"):
        create_model("torchvision:resnt18")
    with pytest.raises(UsageError, match="unknown timm model"):
        create_model("timm:not_a_model_at_all")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["decomposed", "function"])
@pytest.mark.parametrize("name,kw", FOREIGN, ids=[n for n, _ in FOREIGN])
def test_foreign_export_parity(name: str, kw: dict, mode: str, tmp_path) -> None:
    from quadexport.check import check

    torch.manual_seed(0)
    relu = create_model(name, neuron="relu", num_classes=10, in_channels=3, input_size=32, **kw)
    _calibrate_bn(relu, (3, 32, 32))
    q = quadratize(relu, "fan")
    _perturb(q)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        moved = float((q(x) - relu(x)).norm() / relu(x).norm())
    assert 1e-3 < moved and torch.isfinite(q(x)).all()  # the quadratic terms matter, the outputs stay finite
    path = quadexport.export(q, tmp_path / "q.onnx", mode=mode)
    rep = check(path, q, batches=(2,), dataset=False, opt_levels=("disable", "all"), verbose=False, threads=1,
                rtol=3e-5)
    assert rep.ok and not rep.errors, rep.summary()
    # stock onnxruntime (decomposed graph, or the function bodies inlined): <= 1e-5. The optional fused kernel sums
    # in another order; on the untrained ResNet-18 (ReLU twin alone: 4e-6) it measures ~1e-5, so it gets 3e-5.
    stock = [ln.rel_l2 for ln in rep.lines if ln.runtime != "kernel"]
    assert stock and max(stock) <= 1e-5, rep.summary()


# ------------------------------------------------------------------------------------------------------------------
# adapter-only fine-tuning, the CLI round trip, bench pairing
# ------------------------------------------------------------------------------------------------------------------

def test_train_only_parts() -> None:
    from quadexport.training.adapter import parse_train_only, set_trainable
    from quadexport.training.relinear import ReLinearConfig, param_groups

    m = quadratize(create_model("cnn", neuron="relu", width=4))
    s = set_trainable(m, "quadratic")
    assert not m.conv2.r.weight.requires_grad and m.conv2.g.weight.requires_grad and m.conv2.b.weight.requires_grad
    assert not m.bn2.weight.requires_grad and not m.fc.weight.requires_grad and not m.conv1.weight.requires_grad
    assert s.trainable == sum(p.numel() for p in m.parameters() if p.requires_grad) and s.frozen > 0
    groups = {g["name"]: g for g in param_groups(m, 0.1, ReLinearConfig())}
    assert groups["base"]["params"] == [] and groups["g"]["lr"] == pytest.approx(1e-3)  # sg ratios still apply
    set_trainable(m, "quadratic+bn+head")
    assert m.bn2.weight.requires_grad and m.fc.bias.requires_grad and not m.conv3.r.weight.requires_grad
    set_trainable(m, "all")
    assert all(p.requires_grad for p in m.parameters())
    for bad in ("bn+tail", "bn+bn", ""):
        with pytest.raises(UsageError, match="'\\+'-joined parts of quadratic, bn, head"):
            parse_train_only(bad)
    with pytest.raises(UsageError, match="quadratize it first"):
        set_trainable(create_model("cnn", neuron="relu"), "quadratic+bn")
    relu = create_model("cnn", neuron="relu", width=4)  # bn+head: the ReLU control of adapter-only fine-tuning
    s = set_trainable(relu, "bn+head")
    on = {n for n, p in relu.named_parameters() if p.requires_grad}
    assert on == {n for n, _ in relu.named_parameters() if n.startswith(("bn", "fc."))} and s.frozen > 0
    assert parse_train_only("bn+head") == ("bn", "head")


def _cli(*argv) -> None:
    from quadexport.cli import main

    assert main([str(a) for a in argv]) == 0, argv


def _state(run) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)


def test_cli_round_trip(tmp_path, capsys) -> None:
    """train relu → quadratize → train --from --train-only quadratic → export → check; bench pairs the source."""
    relu, q, ft = tmp_path / "relu", tmp_path / "q", tmp_path / "ft"
    _cli("train", "--model", "cnn", "--width", "8", "--neuron", "relu", "--dataset", "digits", "--epochs", "1",
         "--train-subset", "300", "--out", relu)
    _cli("quadratize", relu, "--out", q, "--neuron", "fan")
    assert "2 layer(s) quadratic" in capsys.readouterr().out
    src_model, q_model = quadexport.load(relu), quadexport.load(q)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(src_model(x), q_model(x))
    assert q_model.quadexport_config["neuron"] == "fan" and "test_acc" not in q_model.quadexport_meta
    assert q_model.quadexport_meta["source"]["run"] == str(relu)
    assert json.loads((q / "metrics.json").read_text())["source"]["test_acc"] == _state(relu)["meta"]["test_acc"]
    _cli("train", "--from", q, "--epochs", "1", "--train-only", "quadratic", "--lr", "0.5", "--relinear", "none",
         "--out", ft)
    a, b = _state(q), _state(ft)
    assert b["meta"]["train_config"]["train_subset"] == 300  # the source's data settings
    assert torch.equal(a["model"]["conv2.r.weight"], b["model"]["conv2.r.weight"])  # primary weights frozen
    assert torch.equal(a["model"]["fc.weight"], b["model"]["fc.weight"])
    assert not torch.equal(a["model"]["conv2.g.weight"], b["model"]["conv2.g.weight"])  # quadratic terms trained
    _cli("export", ft, tmp_path / "ft.onnx", "--mode", "function")
    _cli("check", tmp_path / "ft.onnx", ft)
    from quadexport.bench.baselines import resolve_models

    models, pairs, _ = resolve_models([str(ft)], "fan", None, True, torch.Generator().manual_seed(0))
    twin = next(m for m in models if m.role == "twin")
    assert twin.source == str(relu) and (models[0].id, twin.id, "twin") in pairs


def test_cli_errors(tmp_path) -> None:
    from quadexport.cli import main

    run = tmp_path / "relu"
    _cli("train", "--model", "mlp", "--width", "8", "--neuron", "relu", "--epochs", "1", "--train-subset", "100",
         "--out", run)
    assert main(["quadratize", str(run), "--out", str(tmp_path / "q"), "--include", "fx1"]) == 2
    assert main(["quadratize", str(run), "--out", str(tmp_path / "q"), "--exclude", "fc2"]) == 2  # nothing left
    assert main(["train", "--from", str(run), "--model", "cnn", "--out", str(tmp_path / "x")]) == 2
    assert main(["train", "--from", str(run), "--weights", "w.pt", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "q").exists() and not (tmp_path / "x").exists()
    # weights trained elsewhere: SOURCE is a model name, the data comes from --dataset
    torch.save(quadexport.load(run).state_dict(), tmp_path / "w.pt")
    assert main(["quadratize", "mlp", "--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path / "q")]) == 2
    _cli("quadratize", "mlp", "--model-arg", "width=8", "--weights", tmp_path / "w.pt", "--dataset", "digits",
         "--out", tmp_path / "q", "--include", "fc1", "fc2")
    q = quadexport.load(tmp_path / "q")
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(q(x), quadexport.load(run)(x)) and isinstance(q.fc1, QuadLinear)
    assert q.quadexport_meta["source"]["weights"] == str(tmp_path / "w.pt")
    assert q.quadexport_meta["train_config"]["dataset"] == "digits"
