"""Compression (issue #5): quadratic-term pruning, channel permutation, rebuild from the spec, run dirs, int8, cheap
neuron types, CLI. Small models (resnet8 / cnn / mlp on 8×8 digits), no timing assertions."""

from __future__ import annotations

import collections
import copy
import json
import random

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import quadexport.compress as qc
from quadexport.check import check
from quadexport.runs.checkpoint import load, save_checkpoint
from quadexport.compress.layers import MixedQuad, PermShortcut
from quadexport.compress.prune import LayerStats, fit_terms
from quadexport.compress.structure import describe, permutable
from quadexport.exporter import export
from quadexport.layers import QuadLayer
from quadexport.zoo import count_macs
from quadexport.transforms import create_model

SHAPE = (1, 8, 8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: with two OpenMP threads on a loaded 2-core machine small convs get ~20x slower."""
    from quadexport._torchutil import one_thread

    with one_thread():
        yield


@torch.no_grad()
def quad_model(name: str = "resnet8", neuron: str = "fan", seed: int = 0, **kw) -> nn.Module:
    """A zoo model with per-channel quadratic terms of very different sizes (some negligible, some large) and BN
    statistics from a calibration batch: like a ReLinear-trained model, some channels prune, some do not."""
    torch.manual_seed(seed)
    m = create_model(name, neuron, in_channels=1, input_size=8, **kw)
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, QuadLayer):
            c = mod.r.weight.shape[0]
            mag = torch.rand(c, generator=g) ** 4 * 0.2
            for br in ("g", "b"):
                w = getattr(mod, br).weight
                w.add_(torch.randn(w.shape, generator=g) * mag.reshape((-1,) + (1,) * (w.dim() - 1)))
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.momentum = None
            mod.reset_running_stats()
            mod.weight.copy_(1 + 0.1 * torch.randn(mod.weight.shape, generator=g))
            mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
    m.train()
    m(torch.randn(128, *SHAPE, generator=g))
    m.eval()
    m.quadexport_meta = {"input_shape": list(SHAPE)}
    return m


def op_types(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def scores_of(model: nn.Module, seed: int = 1):
    x = torch.randn(256, *SHAPE, generator=torch.Generator().manual_seed(seed))
    return qc.channel_scores(qc.collect_stats(model, x)), x


# ---------------------------------------------------------------------------------------------------------------
# scores and fits
# ---------------------------------------------------------------------------------------------------------------

def test_fit_scores_exact_cases():
    # channel 0: Y = P = 2R exactly (g constant 2, b = 0): linear fit exact; channel 1: Y has a quadratic part.
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(2, 1000, generator=gen, dtype=torch.float64)
    g = torch.stack([torch.full((1000,), 2.0, dtype=torch.float64), 1 + r[1]])
    b = torch.stack([torch.zeros(1000, dtype=torch.float64), 0.5 * r[1] ** 2])
    t = torch.stack([r, r * g, b])  # (3, C, M)
    st = LayerStats(1000, t.sum(-1), torch.einsum("icm,jcm->ijc", t, t))
    lin = fit_terms(st, ("R",))
    assert lin.score[0] < 1e-6 and abs(float(lin.coef[0, 0]) - 2.0) < 1e-9
    assert lin.score[1] > 0.3
    nob = fit_terms(st, ("P",))
    assert nob.score[0] < 1e-6
    full = fit_terms(st, ("R", "P", "B"))
    assert float(full.score.max()) < 1e-5



@pytest.mark.parametrize("const", [0.3, 5.1])
def test_fit_of_a_channel_constant_on_the_calibration_data_is_finite(const):
    """A channel whose R, P and B never vary on the calibration data (a dead input channel; a depthwise conv on a
    1x1 map, as in mobilenet_v3_small on 8x8 digits): E[X²] − E[X]² is 0 or cancellation noise of either sign.
    The refit gave NaN (0.3) or an arbitrary coefficient (5.1: -0.25) there, and the all-linear candidate of
    compress --target-ratio went NaN (issue #29). Now: coefficient 0, the shift carries the mean, score 0."""
    gen = torch.Generator().manual_seed(0)
    r = torch.stack([torch.full((1024,), const, dtype=torch.float32), torch.randn(1024, generator=gen)])
    g = torch.stack([torch.full((1024,), 1.02), 1 + 0.1 * torch.randn(1024, generator=gen)])
    t = torch.stack([r, r * g, 0.05 * r * r]).double()  # float32 branch outputs, moments in float64 (as collected)
    st = LayerStats(1024, t.sum(-1), torch.einsum("icm,jcm->ijc", t, t))
    y0 = float((t[1, 0] + t[2, 0]).mean())
    for terms in (("R",), ("P",), ("R", "B")):
        fit = fit_terms(st, terms)
        assert torch.isfinite(fit.coef).all() and torch.isfinite(fit.shift).all(), terms
        assert float(fit.coef[0].abs().max()) == 0 and abs(float(fit.shift[0]) - y0) < 1e-6 and fit.score[0] == 0
        assert float(fit.coef[1].abs().max()) > 0.5  # the varying channel is fitted as before

# ---------------------------------------------------------------------------------------------------------------
# pruning: threshold 0, everything, partial
# ---------------------------------------------------------------------------------------------------------------

def test_threshold_zero_changes_nothing(tmp_path):
    m = quad_model()
    sc, x = scores_of(m)
    pl = qc.plan(m, sc, 0.0, align=1)
    assert all(p.unchanged for p in pl.layers.values())
    cm, spec = qc.compress_model(m, pl, sc)
    assert spec["layers"] == {} and spec["shortcuts"] == {}
    with torch.no_grad():
        assert torch.equal(cm(x), m(x))
    export(m, tmp_path / "a.onnx")
    export(cm, tmp_path / "b.onnx")
    assert op_types(tmp_path / "a.onnx") == op_types(tmp_path / "b.onnx")


def test_prune_everything_gives_relu_twin_graph(tmp_path):
    m = quad_model()
    sc, _ = scores_of(m)
    pl = qc.plan(m, sc, float("inf"), align=16)
    assert all(p.k == 0 for p in pl.layers.values())
    cm, spec = qc.compress_model(m, pl, sc)
    assert not any(isinstance(mod, (QuadLayer, MixedQuad, PermShortcut)) for mod in cm.modules())
    twin = qc.twin_of(m)
    assert count_macs(cm, SHAPE) == count_macs(twin, SHAPE)
    export(cm, tmp_path / "c.onnx", input_shape=SHAPE)
    export(twin, tmp_path / "t.onnx", input_shape=SHAPE)
    assert op_types(tmp_path / "c.onnx") == op_types(tmp_path / "t.onnx")


@pytest.mark.parametrize("name", ["resnet8", "cnn", "mlp"])
def test_channel_permutation_preserves_outputs(name):
    m = quad_model(name, **({"width": 8} if name in ("cnn", "mlp") else {}))
    st = describe(m)
    assert st is not None
    rng = random.Random(0)
    perms = {}
    for grp in st.groups:
        if not permutable(m, grp):  # the classifier's output
            continue
        p = list(range(grp.channels))
        rng.shuffle(p)
        perms[grp.name] = p
    pm = qc.permute_model(copy.deepcopy(m), perms, st)
    x = torch.randn(16, *SHAPE)
    with torch.no_grad():
        ref, out = m(x), pm(x)
    assert float((out - ref).norm() / ref.norm()) < 1e-5
    if name == "resnet8":
        assert isinstance(pm.layer2[0].shortcut, PermShortcut)  # the streams changed order


@pytest.mark.parametrize("split", ["conv", "slice"])
def test_partial_pruning_exports_with_parity(tmp_path, split):
    m = quad_model()
    sc, x = scores_of(m)
    pl = qc.plan(m, sc, 0.05, align=4)
    ks = {n: p.k for n, p in pl.layers.items()}
    assert any(0 < p.k < p.channels for p in pl.layers.values()), ks
    cm, spec = qc.compress_model(m, pl, sc, split=split)
    assert any(isinstance(mod, MixedQuad) for mod in cm.modules())
    assert count_macs(cm, SHAPE) < count_macs(m, SHAPE)
    with torch.no_grad():
        before = cm(x)
        ref = m(x)
    # linearised channels move the output only a little (per-channel error < threshold)
    assert float((before - ref).norm() / ref.norm()) < 0.2
    folded = qc.fold_mixed_bn(cm, spec)
    assert folded
    with torch.no_grad():
        assert float((cm(x) - before).norm() / before.norm()) < 1e-5
    # the spec rebuilds the architecture: strict load
    rb = create_model("resnet8", "fan", in_channels=1, input_size=8, compress=cm.quadexport_config["compress"])
    rb.load_state_dict(cm.state_dict(), strict=True)
    rb.eval()
    with torch.no_grad():
        assert torch.equal(rb(x), cm(x))
    path = export(cm, tmp_path / "p.onnx", input_shape=SHAPE)
    ops = op_types(path)
    assert ops["Concat"] >= 1 and "BatchNormalization" not in ops
    if split == "slice":
        assert ops["Slice"] >= 1
    rep = check(path, cm, batches=(2,), verbose=False)
    assert rep.ok and rep.worst_rel_l2 <= 1e-5


def test_branch_drop_and_qbias(tmp_path):
    # a layer whose quadratic part is only the gate: b dropped, BN shift lands in qbias
    m = quad_model("cnn", width=8)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, QuadLayer):
                mod.b.weight.zero_()
    sc, x = scores_of(m)
    pl = qc.plan(m, sc, 1e-4, align=1)
    assert all(not p.b for p in pl.layers.values() if p.k)
    cm, spec = qc.compress_model(m, pl, sc)
    with torch.no_grad():
        before = cm(x)
    qc.fold_mixed_bn(cm, spec)
    assert any(isinstance(mod, MixedQuad) and mod.qbias is not None for mod in cm.modules())
    with torch.no_grad():
        assert float((cm(x) - before).norm() / before.norm()) < 1e-5
    path = export(cm, tmp_path / "q.onnx", input_shape=SHAPE)
    assert check(path, cm, batches=(2,), verbose=False).ok
    # the bias is a 1×1 depthwise Conv in eval and export (NCHWc-friendly), the same numbers as the Add of training
    g = onnx.load(str(path)).graph
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
    consts.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t)
                   for n in g.node if n.op_type == "Constant"})
    assert not [n for n in g.node if n.op_type == "Add" and any(consts.get(i) is not None and consts[i].ndim == 4
                                                                 and consts[i].shape[2:] == (1, 1) for i in n.input)]
    depthwise = [n for n in g.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(depthwise) == sum(1 for mod in cm.modules() if isinstance(mod, MixedQuad) and mod.qbias is not None)
    for mod in cm.modules():
        if isinstance(mod, MixedQuad) and mod.qbias is not None:
            q = torch.randn(3, mod.k, 5, 5)
            assert torch.equal(mod._add_qbias(q), q + mod.qbias.reshape(1, -1, 1, 1))
    # the TorchScript exporter of the layer selection's timed candidates takes it too (a constant kernel)
    from quadexport.compress.job import FAST_OPSET, export_onnx

    fast = export_onnx(cm, tmp_path / "fast.onnx", SHAPE, opset=FAST_OPSET)
    assert check(fast, cm, batches=(2,), verbose=False).ok


# ---------------------------------------------------------------------------------------------------------------
# run dirs, int8, CLI
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    m = quad_model("resnet8")
    d = tmp_path_factory.mktemp("run")
    meta = {"dataset": "digits", "input_shape": list(SHAPE), "num_classes": 10, "test_acc": 0.1,
            "train_config": {"model": "resnet8", "neuron": "fan", "dataset": "digits", "train_subset": 300,
                             "batch_size": 64, "lr": 0.05, "weight_decay": 1e-4, "seed": 0,
                             "relinear": {"mode": "sg", "lr_ratio_g": 0.01, "lr_ratio_b": 0.01}}}
    save_checkpoint(d, m, meta, epoch=1)
    return d


def test_compressed_run_dir_roundtrip_and_int8(run_dir, tmp_path):
    out = tmp_path / "c"
    r = qc.compress(run_dir, out, threshold=0.05, align=4, quantize="int8", keep_fp32="products", calib_samples=128,
                    finetune_epochs=1, max_drop=None, bench=False, check=False, verbose=False)
    assert 0 < r.quadratic_channels["kept"] < r.quadratic_channels["total"]
    assert len(r.finetune) == 1 and r.validation["samples"] == 60  # a fifth of the 300 training images
    assert (out / qc.REPORT_JSON).exists() and (out / qc.REPORT_MD).exists()
    assert json.loads((out / qc.REPORT_JSON).read_text())["layers"]
    model = load(out)
    assert qc.get_spec(model) is not None
    assert abs(model.quadexport_meta["test_acc"] - r.accuracy["final"]) < 1e-12
    path = export(model, tmp_path / "re.onnx")
    rep = check(path, model, batches=(1, 3), verbose=False)
    assert rep.ok and rep.worst_rel_l2 <= 1e-5
    # int8: a runnable quantised model with its accuracy in the report
    i8 = r.int8
    assert 0.0 <= i8["test_acc"] <= 1.0 and i8["excluded"]
    from quadexport.exporter import make_session

    sess = make_session(str(out / qc.INT8_ONNX))
    y = sess.run(None, {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal((2, *SHAPE))
                        .astype(np.float32)})[0]
    assert y.shape == (2, 10) and np.isfinite(y).all()
    ops = op_types(out / qc.INT8_ONNX)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    with pytest.raises(qc.CompressError):  # pruning a compressed run again is refused
        qc.compress(out, tmp_path / "again", threshold=0.1, bench=False, verbose=False)
    # ... but quantising it is a quantisation-only pass
    r2 = qc.compress(out, tmp_path / "q", quantize="int8", calib_samples=64, bench=False, check=False, verbose=False)
    assert r2.int8["test_acc"] >= 0 and qc.get_spec(load(tmp_path / "q")) == qc.get_spec(model)


def test_quadratic_node_detection(tmp_path):
    from quadexport.compress.quant import nodes_to_keep_fp32, quadratic_nodes

    m = quad_model("cnn", width=8)
    path = export(m, tmp_path / "m.onnx", input_shape=SHAPE)
    qn = quadratic_nodes(onnx.load(str(path)))
    assert len(qn["squares"]) == 3 and len(qn["products"]) == 3 and len(qn["power"]) == 3
    assert len(nodes_to_keep_fp32(onnx.load(str(path)), "quadratic")) > len(nodes_to_keep_fp32(onnx.load(str(path)),
                                                                                              "products"))


def test_cli_compress(run_dir, tmp_path):
    from quadexport.cli import main

    out = tmp_path / "cli"
    assert main(["compress", str(run_dir), "--out", str(out), "--prune-threshold", "0.05", "--align", "4",
                 "--calib-samples", "64", "--no-bench", "--no-check", "--finetune-epochs", "0", "--max-drop", "-1"]) == 0
    assert (out / "checkpoint.pt").exists() and (out / qc.FP32_ONNX).exists()
    assert main(["compress", str(run_dir), "--out", str(out), "--prune-threshold", "0.05", "--no-bench"]) == 2
    with pytest.raises(SystemExit):
        main(["compress", str(run_dir), "--out", str(tmp_path / "x"), "--prune-threshold", "-1"])


# ---------------------------------------------------------------------------------------------------------------
# cheap neuron types
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("neuron", ["fan_pw", "fan_dw"])
def test_cheap_neurons_macs_export_parity(tmp_path, neuron):
    fan = create_model("resnet8", "fan", in_channels=1, input_size=8)
    relu = create_model("resnet8", "relu", in_channels=1, input_size=8)
    m = quad_model("resnet8", neuron)
    macs = count_macs(m, SHAPE)
    assert count_macs(relu, SHAPE) < macs < count_macs(fan, SHAPE)
    if neuron == "fan_dw":
        assert macs < 1.1 * count_macs(relu, SHAPE)
    fresh = create_model("resnet8", neuron, in_channels=1, input_size=8).eval()
    twin = qc.twin_of(fresh)
    twin.load_state_dict({k.replace(".r.", "."): v for k, v in fresh.state_dict().items()
                          if ".g." not in k and ".b." not in k})
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():  # ReLinear init: computes its r branch, i.e. the ReLU twin
        assert torch.allclose(fresh(x), twin(x), atol=1e-6)
    path = export(m, tmp_path / f"{neuron}.onnx")
    assert "BatchNormalization" not in op_types(path)
    assert check(path, m, batches=(1, 5), verbose=False).ok


def test_cheap_neuron_pruning_whole_layers(tmp_path):
    # depthwise branches cannot be split or permuted: layers go all-or-nothing, and parity still holds
    m = quad_model("resnet8", "fan_dw")
    sc, x = scores_of(m)
    pl = qc.plan(m, sc, 0.05, align=1)
    assert all(p.k in (0, p.channels) for p in pl.layers.values())
    cm, spec = qc.compress_model(m, pl, sc)
    qc.fold_mixed_bn(cm, spec)
    path = export(cm, tmp_path / "dw.onnx", input_shape=SHAPE)
    assert check(path, cm, batches=(2,), verbose=False).ok


def test_lowrank_layers_prune_whole(tmp_path):
    # the low-rank neuron's rows share one bottleneck: its layers go linear or stay whole, never split or permuted
    from quadexport.compress.stats import is_fan_form, splittable

    m = quad_model("resnet8", "lowrank:4")
    quads = [mod for mod in m.modules() if isinstance(mod, QuadLayer)]
    assert quads and all(is_fan_form(q) and not splittable(q) for q in quads)
    with torch.no_grad():  # every other layer back to its ReLinear init: exactly its r branch (plus a constant)
        for q in quads[::2]:
            q.g.weight.zero_()
            q.b.weight.zero_()
    sc, x = scores_of(m)
    pl = qc.plan(m, sc, 1e-4, align=4)
    assert all(p.k in (0, p.channels) and (p.k == 0 or p.unchanged) for p in pl.layers.values())
    assert [p.k == 0 for p in pl.layers.values()] == [i % 2 == 0 for i in range(len(quads))]
    assert not any(p != list(range(len(p))) for p in pl.perms.values())
    cm, spec = qc.compress_model(m, pl, sc)
    qc.fold_mixed_bn(cm, spec)
    kept = {n for n, mod in cm.named_modules() if isinstance(mod, QuadLayer)}
    assert kept == {n for n, p in pl.layers.items() if p.k} and all(spec["layers"][n]["type"] == "linear"
                                                                    for n in set(pl.layers) - kept)
    with torch.no_grad():  # the layers that went linear had no quadratic terms: the same function
        ref = m(x)
        assert float((cm(x) - ref).norm() / ref.norm()) < 1e-5
    path = export(cm, tmp_path / "lr.onnx", input_shape=SHAPE)
    assert check(path, cm, batches=(2,), verbose=False).ok


# ---------------------------------------------------------------------------------------------------------------
# layer selection by measured cost per accuracy (--select layers)
# ---------------------------------------------------------------------------------------------------------------

def test_greedy_takes_best_benefit_per_cost_and_upgrades():
    from quadexport.compress.select import Option, _greedy, _keep_of

    opts = [Option("a", "whole", 16, benefit=0.10, cost=0.10), Option("a", "mixed", 4, benefit=0.08, cost=0.02),
            Option("b", "whole", 16, benefit=0.05, cost=0.05), Option("c", "whole", 16, benefit=-0.01, cost=0.0)]
    # budget 0.07: a-mixed (eff 4) first, then b-whole (eff 1; the upgrade a→whole has eff 0.25) -> spent 0.07
    assert _keep_of(_greedy(opts, 0.07)) == {"a": 4, "b": 16}
    # budget 0.2: everything with a positive benefit fits, a upgraded to whole; c (no benefit) never taken
    assert _keep_of(_greedy(opts, 0.2)) == {"a": 16, "b": 16}
    assert _keep_of(_greedy(opts, 0.0)) == {}


def test_selection_never_takes_a_cost_below_the_macs_it_adds():
    # timings that read every option as free (a loaded machine); the MAC increase is the floor of each cost
    from quadexport.compress.select import select_layers

    loss = {(): 1.0, ("a", 16): 0.8, ("a", 8): 0.9, ("b", 16): 0.7}
    def measure(keep):  # (validation loss, MAC ratio)
        return loss[tuple(*keep.items())], 1 + sum(0.08 if k == 16 else 0.03 for k in keep.values())

    sel = select_layers({"a": 16, "b": 16}, 8, 1.1, measure, lambda keeps: [1.0] * len(keeps), splittable={"a"},
                        log=lambda m: None)
    costs = {(o.layer, o.k): o.cost for o in sel.options}
    assert costs == pytest.approx({("a", 16): 0.08, ("a", 8): 0.03, ("b", 16): 0.08})
    # budget 0.1: b whole (0.3 saved per 0.08) first, then a mixed (0.1 per 0.03) would exceed it: only b
    assert sel.keep == {"b": 16} and sel.cost == 1.0 and [o.chosen for o in sel.options] == [False, False, True]


def test_select_layers_keeps_only_chosen_layers(run_dir, tmp_path):
    r = qc.compress(run_dir, tmp_path / "sel", target_ratio=1.6, align=4, calib_samples=128, val_samples=60,
                    finetune_epochs=0, max_drop=None, batches=(1,), min_seconds=0.05, bench=False, check=False,
                    verbose=False)
    sel = r.layer_selection
    assert sel is not None and not r.threshold_search
    layers = {d["layer"]: d for d in r.layers}
    assert {o["layer"] for o in sel["options"]} == set(layers)
    assert all(np.isfinite(o["cost"]) and np.isfinite(o["benefit"]) for o in sel["options"])
    for name, d in layers.items():  # chosen layers keep at least what was asked for; the others are linear
        assert (d["k"] >= sel["keep"][name]) if name in sel["keep"] else d["k"] == 0
    if sel["keep"]:
        assert sel["verify"] and sel["cost"] == sel["verify"][-1]["cost"]
    assert "Layer selection by measured cost per accuracy" in (tmp_path / "sel" / qc.REPORT_MD).read_text()
    with pytest.raises(qc.CompressError, match="needs --target-ratio"):
        qc.CompressConfig(select="layers")


def test_lowrank_run_compresses_end_to_end(run_dir, tmp_path):
    # a lowrank run: layer selection (no mixed options: its layers cannot split), fine-tuning, parity, reload
    src = tmp_path / "lr"
    meta = json.loads(json.dumps(load(run_dir).quadexport_meta))
    meta["train_config"]["neuron"] = "lowrank:4"
    save_checkpoint(src, quad_model("resnet8", "lowrank:4"), meta, epoch=1)
    r = qc.compress(src, tmp_path / "c", target_ratio=1.5, align=4, calib_samples=128, val_samples=60,
                    finetune_epochs=1, max_drop=None, batches=(1,), min_seconds=0.05, bench=False, verbose=False)
    assert {o["kind"] for o in r.layer_selection["options"]} == {"whole"}
    assert all(d["k"] in (0, d["channels"]) for d in r.layers)
    assert r.parity["ok"] and r.parity["worst_rel_l2"] <= 1e-5 and len(r.finetune) == 1
    model = load(tmp_path / "c")
    kept = {n for n, m in model.named_modules() if isinstance(m, QuadLayer)}
    assert kept == {d["layer"] for d in r.layers if d["k"]}


def test_threshold_search_on_measured_latency(run_dir, tmp_path):
    # a loose target: the unpruned model (threshold 0) already meets it after one measured step
    r = qc.compress(run_dir, tmp_path / "thr", target_ratio=50, select="threshold", align=4, calib_samples=128,
                    val_samples=60, finetune_epochs=0, max_drop=None, batches=(1,), min_seconds=0.05, bench=False,
                    check=False, verbose=False)
    assert r.layer_selection is None and r.threshold_search
    assert len(r.threshold_search) == 1 and 1 < r.threshold_search[0]["cost"] < 50
    assert r.plan["threshold"] == 0 and r.quadratic_channels["kept"] == r.quadratic_channels["total"]
