"""ONNX export: parity of every mode under onnxruntime, graph contents, BN folding, odd layer configs, lowering,
onnx.reference, fp16 islands and the session helper.

Models are untrained but not trivial: ReLinear init, then the quadratic branches (g, b) perturbed with N(0, std²)
(std 0.02; smaller for the deep ResNets, whose quadratic layers otherwise overflow on random inputs), BatchNorm given
random affine parameters and running statistics from one calibration batch.

Matrix (``slow``, still part of ``make test``), cut to fit the ~4 min budget on 2 cores (an export costs 1-9 s of
CPU): mlp/cnn/resnet8 (fan) × 3 modes × opsets 18/20/23; resnet14/resnet20 (fan) × 3 modes at opset 20; the ReLU
twins of all five decomposed at opset 20 (cnn also at 18/23), and resnet8's twin in function/fused mode (a twin has
no quadratic layer, so those files are its decomposed graph); resnet56/110 decomposed at opset 20. Every case is
checked at batch 1/3/5 under ORT_DISABLE_ALL and ORT_ENABLE_ALL (function/fused: with the bodies and the kernel).
"""

from __future__ import annotations

import collections
import copy
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import quadexport as q
from quadexport.check import check
from quadexport.exporter import export, lower_functions, make_session, strip_functions
from quadexport.exporter import ops
from quadexport.exporter.fold import ChannelShift, fold_batchnorm, fold_plan
from quadexport.errors import UsageError
from quadexport.exporter import check_opset, get_export_target, list_export_targets, register_export_target
from quadexport.exporter.session import KernelLibraryNotFound
from quadexport.layers import QuadConv1d, QuadConv2d, QuadLayer, QuadLinear

PERTURB_STD = {"resnet14": 0.005, "resnet20": 0.005, "resnet32": 0.005, "resnet56": 0.005, "resnet110": 0.002}
SHAPES = {"mlp": (1, 28, 28), "cnn": (1, 28, 28)}
FLOAT_RTOL = 1e-5


# ---------------------------------------------------------------------------------------------------------------
# helpers (also used by test_check.py)
# ---------------------------------------------------------------------------------------------------------------

def input_shape(name: str) -> tuple[int, int, int]:
    return SHAPES.get(name, (3, 32, 32))


@torch.no_grad()
def perturb(model: nn.Module, std: float = 0.02, seed: int = 0,
            calib_shape: tuple[int, ...] | None = None) -> nn.Module:
    """Perturb the quadratic branches, randomise BN affine and running stats; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, QuadLayer):
            for n in m.neuron_type.quadratic_branches:
                br = getattr(m, n)
                br.weight.add_(torch.randn(br.weight.shape, generator=g) * std)
                if br.bias is not None:
                    br.bias.add_(torch.randn(br.bias.shape, generator=g) * std)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.normal_(0.0, 0.1, generator=g)
    if calib_shape is not None and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model.train()
        model(torch.randn((8, *calib_shape), generator=g))
    return model.eval()


def make_model(name: str, neuron: str = "fan", seed: int = 0) -> nn.Module:
    """A zoo model, perturbed and checked finite on random inputs."""
    torch.manual_seed(seed)
    shape = input_shape(name)
    m = q.create_model(name, neuron=neuron, in_channels=shape[0], input_size=shape[1])
    perturb(m, PERTURB_STD.get(name, 0.02), seed, shape)
    m.quadexport_meta = {"input_shape": list(shape), "dataset": None}
    with torch.no_grad():
        assert torch.isfinite(m(torch.randn(2, *shape))).all(), f"{name}/{neuron} not finite on random inputs"
    return m


def op_counts(path: str | Path) -> collections.Counter:
    proto = onnx.load(str(path))
    return collections.Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in proto.graph.node)


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


def torch_out(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def run_onnx(path: str | Path, x: np.ndarray, **kw) -> np.ndarray:
    return make_session(path, **kw).run(None, {"input": x})[0]


_MODELS: dict = {}
_EXPORTS: dict = {}


def cached_model(name: str, neuron: str = "fan") -> nn.Module:
    key = (name, neuron)
    if key not in _MODELS:
        _MODELS[key] = make_model(name, neuron)
    return _MODELS[key]


def cached_export(tmp_root: Path, name: str, neuron: str, mode: str, opset: int = 20) -> Path:
    key = (name, neuron, mode, opset)
    if key not in _EXPORTS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            _EXPORTS[key] = export(cached_model(name, neuron), tmp_root / f"{name}-{neuron}-{mode}-{opset}.onnx",
                                   mode=mode, opset=opset)
    return _EXPORTS[key]


@pytest.fixture(scope="session")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="session")
def kernel_lib() -> Path:
    """The built kernel library; tries to build it once; skips the test if that is impossible."""
    from quadexport.exporter.session import find_kernel_library

    lib = find_kernel_library()
    if lib is None:
        try:
            from quadexport.exporter.kernel_lib import build_library

            lib = build_library()
        except Exception as e:  # noqa: BLE001 - no compiler, no headers, no network...
            pytest.skip(f"kernel library not built and cannot be built here: {e}")
    return Path(lib)


def _assert_parity(path: Path, model: nn.Module, **kw) -> None:
    rep = check(path, model, batches=(1, 3, 5), opt_levels=("disable", "all"), verbose=False, **kw)
    bad = [line.format() for line in rep.lines if not line.ok] + rep.errors
    assert rep.ok, "\n".join(bad)
    for line in rep.lines:
        assert line.nan_inf == 0


# ---------------------------------------------------------------------------------------------------------------
# the matrix
# ---------------------------------------------------------------------------------------------------------------

MODES = tuple(list_export_targets())  # the registry: decomposed, function, fused
MATRIX = ([(n, "fan", mode, o) for n in ("mlp", "cnn", "resnet8") for mode in MODES for o in (18, 20, 23)]
          + [(n, "fan", mode, 20) for n in ("resnet14", "resnet20") for mode in MODES]
          + [(n, "relu", "decomposed", 20) for n in ("mlp", "cnn", "resnet8", "resnet14", "resnet20")]
          + [("cnn", "relu", "decomposed", o) for o in (18, 23)])


@pytest.mark.slow
@pytest.mark.parametrize("name,neuron,mode,opset", MATRIX, ids=lambda v: str(v))
def test_matrix_parity(out_dir, request, name, neuron, mode, opset):
    if mode == "fused":
        request.getfixturevalue("kernel_lib")
    model = cached_model(name, neuron)
    path = cached_export(out_dir, name, neuron, mode, opset)
    ops_ = op_counts(path)
    assert "Pow" not in ops_
    assert "BatchNormalization" not in ops_
    proto = onnx.load(str(path))
    assert {o.domain: o.version for o in proto.opset_import}[""] == opset
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    n_quad = sum(isinstance(m, QuadLayer) for m in model.modules())
    n_nodes = sum(v for k, v in ops_.items() if k.startswith(f"{ops.DOMAIN}::"))
    assert n_nodes == (n_quad if mode != "decomposed" else 0)
    _assert_parity(path, model)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet56", "resnet110"])
def test_deep_resnets_decomposed(out_dir, name):
    model = make_model(name)
    path = export(model, out_dir / f"{name}.onnx")
    ops_ = op_counts(path)
    assert "BatchNormalization" not in ops_ and "Pow" not in ops_
    rep = check(path, model, batches=(2,), opt_levels=("all",), verbose=False)
    assert rep.ok and rep.lines, "\n".join(line.format() for line in rep.lines)


def test_function_mode_with_and_without_kernel(out_dir, kernel_lib):
    model = cached_model("cnn")
    path = cached_export(out_dir, "cnn", "fan", "function")
    x = np.random.default_rng(1).standard_normal((3, *input_shape("cnn"))).astype(np.float32)
    ref = torch_out(model, x)
    s_body = make_session(path, kernel_library="never")
    s_kern = make_session(path, kernel_library="always")
    assert s_body.quadexport_kernel is None and s_kern.quadexport_kernel == kernel_lib
    assert rel_l2(s_body.run(None, {"input": x})[0], ref) < FLOAT_RTOL
    assert rel_l2(s_kern.run(None, {"input": x})[0], ref) < FLOAT_RTOL
    # the kernel-only (no bodies) file runs with the kernel library
    bare = out_dir / "cnn-bare.onnx"
    onnx.save(strip_functions(onnx.load(str(path))), str(bare))
    assert rel_l2(run_onnx(bare, x), ref) < FLOAT_RTOL


def test_fused_mode_registers_kernel(out_dir, kernel_lib):
    path = cached_export(out_dir, "mlp", "fan", "fused")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["quadexport.runtime"] == "fused" and props["quadexport.export_mode"] == "fused"
    assert make_session(path).quadexport_kernel == kernel_lib
    assert make_session(path, kernel_library="never").quadexport_kernel is None


def test_missing_kernel_library_errors(out_dir, monkeypatch):
    import quadexport.exporter.session as session

    path = cached_export(out_dir, "mlp", "fan", "fused")
    bare = out_dir / "mlp-bare.onnx"
    onnx.save(strip_functions(onnx.load(str(path))), str(bare))
    monkeypatch.setattr(session, "find_kernel_library", lambda: None)
    with pytest.raises(KernelLibraryNotFound, match=r"domain 'quadexport' v1.*QuadLinear.*make kernels"):
        make_session(bare)
    with pytest.raises(KernelLibraryNotFound, match="quadexport"):
        make_session(bare, kernel_library="never")
    with pytest.warns(RuntimeWarning, match="function bodies"):
        sess = make_session(path)  # fused with bodies: runs the bodies
    assert sess.quadexport_kernel is None


def test_cuda_provider_fails_clearly_without_gpu(out_dir):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu installed")
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        make_session(cached_export(out_dir, "mlp", "fan", "decomposed"), provider="cuda")


def test_reference_evaluator_runs_function_model(out_dir):
    from onnx.reference import ReferenceEvaluator

    model = cached_model("cnn")
    path = cached_export(out_dir, "cnn", "fan", "function")
    x = np.random.default_rng(2).standard_normal((2, *input_shape("cnn"))).astype(np.float32)
    ref = torch_out(model, x)
    got = ReferenceEvaluator(str(path)).run(None, {"input": x})[0]
    assert rel_l2(got, ref) < FLOAT_RTOL
    # without bodies, with the NumPy reference ops
    bare = strip_functions(onnx.load(str(path)))
    got = ReferenceEvaluator(bare, new_ops=ops.reference_ops()).run(None, {"input": x})[0]
    assert rel_l2(got, ref) < FLOAT_RTOL


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_lower_functions(out_dir, name):
    path = cached_export(out_dir, name, "fan", "function")
    proto = onnx.load(str(path))
    lowered = lower_functions(proto)
    assert not [n for n in lowered.graph.node if n.domain == ops.DOMAIN]
    assert not lowered.functions
    assert ops.DOMAIN not in {o.domain for o in lowered.opset_import}
    onnx.checker.check_model(lowered, full_check=True)
    x = np.random.default_rng(3).standard_normal((5, *input_shape(name))).astype(np.float32)
    a = run_onnx(path, x, kernel_library="never")
    b = make_session(lowered, kernel_library="never").run(None, {"input": x})[0]
    assert rel_l2(b, a) < 1e-6
    assert rel_l2(b, torch_out(cached_model(name), x)) < FLOAT_RTOL
    props = {p.key: p.value for p in lowered.metadata_props}
    assert props["quadexport.export_mode"] == "decomposed" and props["quadexport.lowered_from"] == "function"


def test_checker_full_check_passes_in_fresh_process(out_dir):
    """The exported function-mode file is valid for onnx.checker even where the schemas are not registered."""
    import subprocess
    import sys

    path = cached_export(out_dir, "cnn", "fan", "function")
    code = f"import onnx; onnx.checker.check_model(onnx.load({str(path)!r}), full_check=True); print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


# ---------------------------------------------------------------------------------------------------------------
# odd layer configurations, every neuron type
# ---------------------------------------------------------------------------------------------------------------

class OddNet(nn.Module):
    """stride 2, dilation 2 + groups, 'same' with an even kernel (asymmetric pads), 1×1 without bias, 5×5,
    reflect padding (stays decomposed in function mode), Conv1d, QuadLinear on a 3-D input."""

    def __init__(self, neuron: str) -> None:
        super().__init__()
        self.c1 = QuadConv2d(4, 8, 3, stride=2, padding=1, neuron=neuron)
        self.c2 = QuadConv2d(8, 8, 3, padding=2, dilation=2, groups=2, neuron=neuron)
        self.c3 = QuadConv2d(8, 8, 4, padding="same", neuron=neuron)
        self.c4 = QuadConv2d(8, 6, 1, bias=False, neuron=neuron)
        self.c5 = QuadConv2d(6, 6, 5, padding=2, neuron=neuron)
        self.c6 = QuadConv2d(6, 6, 3, padding=1, padding_mode="reflect", neuron=neuron)
        self.c7 = QuadConv1d(6, 6, 3, stride=2, dilation=2, padding=2, neuron=neuron)
        self.c8 = QuadConv1d(6, 6, 2, padding="same", neuron=neuron)
        self.fc = QuadLinear(6, 5, neuron=neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c in (self.c1, self.c2, self.c3, self.c4, self.c5, self.c6):
            x = torch.tanh(c(x))
        x = torch.tanh(self.c8(torch.tanh(self.c7(x.flatten(2)))))
        return self.fc(x.transpose(1, 2)).mean(1)


# Neuron types whose branches all have the layer's own geometry (fan_pw/fan_dw constrain padding and groups: their
# export is covered in test_compress).
FULL_NEURONS = [n for n in q.list_neurons() if all(b.kind == "full" for b in q.get_neuron(n).branches)]
ODD_CASES = [(n, "function") for n in FULL_NEURONS] + [("fan", "decomposed"), ("quadralib", "decomposed")]


@pytest.mark.parametrize("neuron,mode", ODD_CASES)
def test_odd_layers_every_neuron(out_dir, neuron, mode):
    """Function mode for every neuron (QuadraLib and the reflect-padded conv stay decomposed there, so the
    decomposed forms of all layer kinds are exercised too); decomposed mode once for the Fan and QuadraLib nets."""
    torch.manual_seed(0)
    model = perturb(OddNet(neuron), 0.05)
    x = torch.randn(2, 4, 12, 12)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        path = export(model, out_dir / f"odd-{neuron}-{mode}.onnx", mode=mode, example_input=x)
    ops_ = op_counts(path)
    assert "Pow" not in ops_
    n_nodes = sum(v for k, v in ops_.items() if k.startswith(f"{ops.DOMAIN}::"))
    if mode == "function":
        fan = q.get_neuron(neuron).fan_form is not None
        assert n_nodes == (8 if fan else 0)  # all but the reflect-padded conv
        assert ops_[f"{ops.DOMAIN}::QuadConv1d"] == (2 if fan else 0)
        assert any("stay decomposed" in str(i.message) for i in w)
        if fan:  # asymmetric 'same' pads of the even kernel made it into the node
            proto = onnx.load(str(path))
            pads = [list(a.ints) for n in proto.graph.node if n.op_type == "QuadConv2d" for a in n.attribute
                    if a.name == "pads"]
            assert [1, 1, 2, 2] in pads
    else:
        assert n_nodes == 0
    _assert_parity(path, model)
    # onnx.reference agrees too (function bodies with attribute references, or plain ops)
    from onnx.reference import ReferenceEvaluator

    xn = np.random.default_rng(0).standard_normal((3, 4, 12, 12)).astype(np.float32)
    got = ReferenceEvaluator(str(path)).run(None, {"input": xn})[0]
    assert rel_l2(got, torch_out(model, xn)) < FLOAT_RTOL


def test_numpy_reference_matches_torch_ops():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 8, generator=g)
    ws = [torch.randn(6, 2, 3, 2, generator=g) * 0.3 for _ in range(3)]
    bs = [torch.randn(6, generator=g) for _ in range(3)]
    args = (ws[0], bs[0], ws[1], bs[1], ws[2], bs[2])
    attrs = dict(strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2], group=2)
    y = torch.ops.quadexport.quad_conv2d(x, *args, attrs["strides"], attrs["pads"], attrs["dilations"], 2)
    r = ops.reference("QuadConv2d", x.numpy(), *[a.numpy() for a in args], **attrs)
    assert y.shape == r.shape and rel_l2(y.numpy(), r) < 1e-6
    x2 = torch.randn(5, 7, generator=g)
    wl = [torch.randn(3, 7, generator=g) for _ in range(3)]
    yl = torch.ops.quadexport.quad_linear(x2, wl[0], bs[0][:3], wl[1], bs[1][:3], wl[2], bs[2][:3])
    rl = ops.reference("QuadLinear", x2.numpy(), wl[0].numpy(), bs[0][:3].numpy(), wl[1].numpy(), bs[1][:3].numpy(),
                       wl[2].numpy(), bs[2][:3].numpy())
    assert rel_l2(yl.numpy(), rl) < 1e-6


def test_schemas_and_function_bodies():
    ops.register_schemas()
    for t in ops.OP_TYPES:
        assert onnx.defs.has(t, ops.DOMAIN)
        fp = ops.function_proto(t, 20)
        assert fp.domain == ops.DOMAIN and list(fp.input) == list(ops.INPUT_NAMES)
        assert {n.op_type for n in fp.node} <= {"Gemm", "Conv", "Mul", "Add"}


# ---------------------------------------------------------------------------------------------------------------
# BatchNorm folding
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("neuron", q.list_neurons() + ["relu"])
def test_fold_batchnorm_every_neuron(neuron):
    model = make_model("cnn", neuron)
    x = torch.randn(2, *input_shape("cnn"))
    folded, rep = fold_batchnorm(model, x)
    assert rep.method == "fx" and len(rep.folded) == 3 and not rep.skipped
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    plan = fold_plan(q.get_neuron(neuron)) if neuron != "relu" else (("r",), "r")
    assert bool(rep.shifted) == (plan[1] is None)
    with torch.no_grad():
        assert rel_l2(folded(x).numpy(), model(x).numpy()) < 1e-5
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the input is untouched


def test_fold_plans():
    assert fold_plan(q.get_neuron("fan")) == (("g", "b"), "b")
    assert fold_plan(q.get_neuron("compact")) == (("r", "b"), "b")
    assert fold_plan(q.get_neuron("t4"))[1] is None
    assert fold_plan(q.get_neuron("qres")) == (("r",), None)


class _Untraceable(nn.Module):
    """fx cannot trace the shape test; conv1/bn1 are declared adjacently but a ReLU sits between them (must not
    fold); conv2/bn2 follow each other (must fold)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = QuadConv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = QuadConv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = self.bn1(torch.relu(self.conv1(x)))
        return self.bn2(self.conv2(x)).mean((2, 3))


def test_fold_batchnorm_heuristic_is_verified(out_dir):
    model = perturb(_Untraceable(), 0.05, calib_shape=(3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(RuntimeWarning, match="left unfolded"):
        folded, rep = fold_batchnorm(model, x)
    assert rep.method == "module-order"
    assert rep.folded == [("conv2", "bn2")]
    assert rep.skipped and rep.skipped[0][:2] == ("conv1", "bn1")
    with torch.no_grad():
        assert rel_l2(folded(x).numpy(), model(x).numpy()) < 1e-5
    with pytest.warns(RuntimeWarning):
        path = export(model, out_dir / "untraceable.onnx", example_input=x)
    assert op_counts(path)["BatchNormalization"] == 1
    _assert_parity(path, model)


def test_t4_fold_leaves_channel_add(out_dir):
    model = make_model("cnn", "t4")
    folded, rep = fold_batchnorm(model, torch.randn(2, *input_shape("cnn")))
    assert len(rep.shifted) == 3 and sum(isinstance(m, ChannelShift) for m in folded.modules()) == 3
    path = cached_export(out_dir, "cnn", "t4", "decomposed")
    assert "BatchNormalization" not in op_counts(path)
    _assert_parity(path, model)


def test_no_fold_keeps_batchnorm(out_dir):
    model = cached_model("cnn")
    path = export(model, out_dir / "cnn-nofold.onnx", fold_bn=False, opset=20)
    # the exporter's own optimizer may fuse BN into plain convs, never into the quadratic ones
    assert op_counts(path)["BatchNormalization"] >= 1
    _assert_parity(path, model)


# ---------------------------------------------------------------------------------------------------------------
# API behaviour
# ---------------------------------------------------------------------------------------------------------------

def test_export_does_not_modify_model(out_dir):
    model = make_model("cnn")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export(model, out_dir / "untouched.onnx", opset=20)
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())


def test_metadata(out_dir):
    model = make_model("mlp")
    model.quadexport_config = {"name": "mlp", "neuron": "fan", "num_classes": 10, "in_channels": 1,
                               "input_size": [28, 28]}
    model.quadexport_meta = {"dataset": "fashion-mnist", "input_shape": [1, 28, 28], "test_acc": 0.91,
                             "relinear": {"mode": "sg", "lr_ratio_g": 0.01},
                             "normalization": {"mean": 0.286, "std": 0.353}}
    path = export(model, out_dir / "meta.onnx", mode="function", metadata={"owner": "tests"})
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["quadexport.version"] == q.__version__
    assert props["quadexport.model"] == "mlp" and props["quadexport.neuron"] == "fan"
    assert props["quadexport.export_mode"] == "function" and props["quadexport.opset"] == "20"
    assert props["quadexport.dataset"] == "fashion-mnist" and float(props["quadexport.test_acc"]) == 0.91
    assert '"lr_ratio_g": 0.01' in props["quadexport.relinear"]
    assert '"mean": 0.286' in props["quadexport.normalization"]
    assert props["owner"] == "tests"


def test_input_shape_sources(out_dir):
    model = make_model("mlp")
    del model.quadexport_meta
    path = export(model, out_dir / "shape-cfg.onnx", fold_bn=False)  # from quadexport_config
    assert rel_l2(run_onnx(path, np.ones((1, 1, 28, 28), np.float32)),
                  torch_out(model, np.ones((1, 1, 28, 28), np.float32))) < FLOAT_RTOL
    plain = nn.Sequential(nn.Flatten(), QuadLinear(12, 3))
    with pytest.raises(ValueError, match="input_shape"):
        export(plain, out_dir / "noshape.onnx")
    path = export(plain, out_dir / "shape-arg.onnx", input_shape=(3, 4))
    assert make_session(path).get_inputs()[0].shape[1:] == [3, 4]


def test_bad_arguments(out_dir):
    model = cached_model("mlp")
    with pytest.raises(UsageError, match="unknown export mode 'fast'.*choose from decomposed, function, fused"):
        export(model, out_dir / "x.onnx", mode="fast")
    with pytest.raises(UsageError, match="did you mean 'fused'"):
        export(model, out_dir / "x.onnx", mode="fuse")
    with pytest.raises(UsageError, match="opset"):
        export(model, out_dir / "x.onnx", mode="function", opset=17)
    for opset in (24, 12, 7):
        with pytest.raises(UsageError, match="out of range"):
            export(model, out_dir / "x.onnx", opset=opset)
    assert not (out_dir / "x.onnx").exists()


def test_export_target_registry():
    """The modes are listed once: the registry holds exactly the three targets, each says how it runs."""
    assert list_export_targets() == ["decomposed", "function", "fused"]
    targets = {n: get_export_target(n) for n in list_export_targets()}
    assert all(t.name == n for n, t in targets.items())
    assert [n for n, t in targets.items() if t.legacy_opsets] == ["decomposed"]
    assert [n for n, t in targets.items() if t.supports_fp16] == ["decomposed"]
    assert targets["fused"].metadata() == {"quadexport.runtime": "fused"} and not targets["function"].metadata()
    with pytest.raises(UsageError, match="already registered"):
        register_export_target(targets["fused"])
    assert check_opset("13", "decomposed") == 13 and check_opset(23, "fused") == 23
    with pytest.raises(UsageError, match="needs opset >= 18"):
        check_opset(17, "fused")


def test_fused_target_session_registers_kernel(out_dir, kernel_lib):
    path = cached_export(out_dir, "cnn", "fan", "fused")
    assert get_export_target("fused").open_session(path).quadexport_kernel == kernel_lib
    func = cached_export(out_dir, "cnn", "fan", "function")
    assert get_export_target("function").open_session(func).quadexport_kernel is None  # runs the bodies
    dec = cached_export(out_dir, "cnn", "fan", "decomposed")
    assert get_export_target("decomposed").open_session(dec).quadexport_kernel is None


@pytest.mark.slow
def test_torchscript_fallback_below_opset_18(out_dir):
    model = cached_model("cnn")
    for opset in (17, 13):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = export(model, out_dir / f"cnn-{opset}.onnx", opset=opset)
        proto = onnx.load(str(path))
        assert {o.domain: o.version for o in proto.opset_import}[""] == opset
        assert "Pow" not in op_counts(path)
        _assert_parity(path, model)


def test_stacked_and_naive_dense_agree(out_dir):
    model = cached_model("mlp")
    x = np.random.default_rng(4).standard_normal((3, 1, 28, 28)).astype(np.float32)
    a = export(model, out_dir / "mlp-stacked.onnx", stack_linear=True)
    b = export(model, out_dir / "mlp-naive.onnx", stack_linear=False)
    assert op_counts(a)["Split"] == 2 and op_counts(b)["Split"] == 0
    ref = torch_out(model, x)
    assert rel_l2(run_onnx(a, x), ref) < FLOAT_RTOL and rel_l2(run_onnx(b, x), ref) < FLOAT_RTOL


# ---------------------------------------------------------------------------------------------------------------
# fp16
# ---------------------------------------------------------------------------------------------------------------

def test_fp16_export_resnet8(out_dir):
    model = cached_model("resnet8")
    path = export(model, out_dir / "resnet8-fp16.onnx", fp16=True)
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # keep_io_types
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["quadexport.dtype"] == "float16" and "overflow_count" in props["quadexport.fp16"]
    rep = check(path, model, batches=(1, 3), opt_levels=("disable", "all"), verbose=False)  # rtol 1e-2 (fp16)
    assert rep.rtol == 1e-2 and rep.ok, "\n".join(line.format() for line in rep.lines)


class _BigSquare(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = QuadLinear(8, 4)
        with torch.no_grad():
            self.fc.b.weight.fill_(1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x * 300.0)  # x*x reaches ~1e6: overflows float16, the output does not


def test_fp16_islands_prevent_overflow(out_dir):
    model = _BigSquare().eval()
    calib = torch.randn(64, 8)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    ref = torch_out(model, x)
    with pytest.warns(RuntimeWarning, match="exceed 65504"):
        island = export(model, out_dir / "island.onnx", fp16=True, calibration_data=calib, input_shape=(8,))
    props = {p.key: p.value for p in onnx.load(str(island)).metadata_props}
    assert '"islands": ["fc"]' in props["quadexport.fp16"]
    # onnx.reference computes float16 nodes in float16; onnxruntime's CPU EP upcasts most of them to float32
    # (InsertCastTransformer), so it would hide the overflow.
    from onnx.reference import ReferenceEvaluator

    for out in (run_onnx(island, x), ReferenceEvaluator(str(island)).run(None, {"input": x})[0]):
        assert np.isfinite(out).all() and rel_l2(out, ref) < 1e-2
    with pytest.warns(RuntimeWarning):
        plain = export(model, out_dir / "no-island.onnx", fp16=True, calibration_data=calib, input_shape=(8,),
                       fp16_safety=float("inf"))
    assert '"islands": []' in {p.key: p.value for p in onnx.load(str(plain)).metadata_props}["quadexport.fp16"]
    assert not np.isfinite(ReferenceEvaluator(str(plain)).run(None, {"input": x})[0]).all()


def test_fp16_only_decomposed(out_dir):
    with pytest.raises(ValueError, match="fp16"):
        export(cached_model("mlp"), out_dir / "x.onnx", mode="function", fp16=True)


def test_public_api(out_dir):
    """``quadexport.export`` is the plain export function (the subpackage is ``quadexport.exporter``), also after the
    subpackage is imported; ``make_session`` is top-level."""
    import types

    import quadexport.exporter.fold  # noqa: F401

    assert isinstance(q.export, types.FunctionType) and q.export is export
    assert q.make_session is make_session
    path = q.export(cached_model("mlp"), out_dir / "api.onnx")
    assert q.make_session(path).get_outputs()[0].name == "logits"
