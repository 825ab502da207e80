"""The fused onnxruntime kernel library (custom-op domain ``quadexport`` v1): build, lookup and numerical parity.

Models are built by hand with ``onnx.helper`` (one ``quadexport`` node, random ReLinear-like weights as initializers)
and run in onnxruntime with the library registered. References are float64 numpy (and torch for convolutions);
the acceptance bound is a relative L2 error of 1e-5 at batches 1, 3 and 64.
"""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from quadexport.exporter import kernel_lib  # noqa: E402

BATCHES = (1, 3, 64)
REL_TOL = 1e-5
WEIGHT_NAMES = ("W_r", "b_r", "W_g", "b_g", "W_b", "c")


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def lib() -> Path:
    """The built library (built here if needed; skipped only when no C++ compiler is available)."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: the fused kernel library cannot be built")
    return kernel_lib.build_library()


def relinear_weights(rng: np.random.Generator, w_shape: tuple[int, ...]) -> list[np.ndarray]:
    """ReLinear-like magnitudes: W_r Kaiming-ish, W_g and W_b small (~0.05), b_g ≈ 1, small biases."""
    m, fan_in = w_shape[0], int(np.prod(w_shape[1:]))
    f32 = np.float32
    return [rng.normal(0, 1 / np.sqrt(fan_in), w_shape).astype(f32), rng.normal(0, 0.1, m).astype(f32),
            rng.normal(0, 0.05, w_shape).astype(f32), (1 + rng.normal(0, 0.05, m)).astype(f32),
            rng.normal(0, 0.05, w_shape).astype(f32), rng.normal(0, 0.05, m).astype(f32)]


def make_model(op: str, x_shape: list, weights: list[np.ndarray], as_inputs: bool = False, **attrs) -> bytes:
    """One ``quadexport::<op>`` node; weights as initializers (or as graph inputs with ``as_inputs``)."""
    node = helper.make_node(op, ["x", *WEIGHT_NAMES], ["y"], domain=kernel_lib.DOMAIN, **attrs)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    inits = []
    for name, w in zip(WEIGHT_NAMES, weights):
        if as_inputs:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(w.shape)))
        else:
            inits.append(numpy_helper.from_array(w, name))
    graph = helper.make_graph([node], op, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                     helper.make_opsetid(kernel_lib.DOMAIN, kernel_lib.DOMAIN_VERSION)])
    return model.SerializeToString()


def session(model: bytes, lib_path: Path, threads: int = 2) -> "ort.InferenceSession":
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.register_custom_ops_library(str(lib_path))
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def rel_l2(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(y.astype(np.float64) - ref) / np.linalg.norm(ref))


def quad_linear_ref(x: np.ndarray, w: list[np.ndarray]) -> np.ndarray:
    x, (wr, br, wg, bg, wb, c) = x.astype(np.float64), [a.astype(np.float64) for a in w]
    return (x @ wr.T + br) * (x @ wg.T + bg) + (x * x) @ wb.T + c


def conv2d_numpy(x: np.ndarray, w: np.ndarray, b: np.ndarray, strides, pads, dilations, group: int) -> np.ndarray:
    """float64 grouped 2-D convolution: zero padding (top, left, bottom, right), strides, dilations."""
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = strides, dilations, pads
    n, c, _, _ = x.shape
    m, cg, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    win = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # [n, c, oh, ow, kh, kw]
    oh, ow = win.shape[2], win.shape[3]
    win = win.reshape(n, group, cg, oh, ow, kh, kw)
    wg = w.astype(np.float64).reshape(group, m // group, cg, kh, kw)
    y = np.einsum("ngchwij,gmcij->ngmhw", win, wg, optimize=True).reshape(n, m, oh, ow)
    return y + b.astype(np.float64)[None, :, None, None]


def quad_conv_ref(x: np.ndarray, w: list[np.ndarray], conv) -> np.ndarray:
    """y = (conv(x, W_r) + b_r) ⊙ (conv(x, W_g) + b_g) + conv(x², W_b) + c for a conv(x, w, b) function."""
    wr, br, wg, bg, wb, c = w
    return conv(x, wr, br) * conv(x, wg, bg) + conv(x.astype(np.float64) ** 2, wb, c)


def torch_conv(strides, pads, dilations, group: int, dims: int):
    """A float64 torch conv(x, w, b) with ONNX-style pads (begins..., ends...)."""
    fn = torch.nn.functional.conv2d if dims == 2 else torch.nn.functional.conv1d
    pad = (pads[1], pads[3], pads[0], pads[2]) if dims == 2 else (pads[0], pads[1])

    def conv(x, w, b):
        t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64))  # noqa: E731
        xp = torch.nn.functional.pad(t(x), pad)
        return fn(xp, t(w), t(b), stride=tuple(strides), dilation=tuple(dilations), groups=group).numpy()

    return conv


# ---------------------------------------------------------------------------------------------------------------------
# Library lookup
# ---------------------------------------------------------------------------------------------------------------------
def test_domain_constants() -> None:
    assert kernel_lib.DOMAIN == "quadexport" and kernel_lib.DOMAIN_VERSION == 1
    assert set(kernel_lib.OPS) == {"QuadLinear", "QuadConv1d", "QuadConv2d"}


def test_missing_library_gives_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUADEXPORT_KERNEL_LIB", str(tmp_path / "nope" / "libquadexport_ops.so"))
    assert kernel_lib.find_library() is None
    with pytest.raises(kernel_lib.KernelLibraryNotFound) as info:
        kernel_lib.require_library()
    assert isinstance(info.value, FileNotFoundError)
    msg = str(info.value)
    for needle in ("quadexport", "version 1", "QuadLinear", "QuadConv2d", "tools/build_kernels.sh", "make kernels",
                   str(tmp_path / "nope")):
        assert needle in msg, needle


def test_env_override_and_build(lib: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert lib.is_file() and lib.name == kernel_lib.LIBRARY_NAME
    assert kernel_lib.build_library() == lib  # idempotent: up to date, no rebuild
    monkeypatch.setenv("QUADEXPORT_KERNEL_LIB", str(lib))
    assert kernel_lib.find_library() == lib
    assert kernel_lib.require_library() == lib


# ---------------------------------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k,m", [(512, 512), (37, 21), (5, 100)])
def test_quad_linear(lib: Path, k: int, m: int) -> None:
    rng = np.random.default_rng(k * 1000 + m)
    w = relinear_weights(rng, (m, k))
    sess = session(make_model("QuadLinear", ["N", k], w), lib)
    for n in BATCHES:
        x = rng.normal(size=(n, k)).astype(np.float32)
        (y,) = sess.run(None, {"x": x})
        assert y.shape == (n, m)
        assert rel_l2(y, quad_linear_ref(x, w)) <= REL_TOL


def test_quad_linear_rank3_input(lib: Path) -> None:
    rng = np.random.default_rng(7)
    w = relinear_weights(rng, (24, 40))
    x = rng.normal(size=(3, 5, 40)).astype(np.float32)
    (y,) = session(make_model("QuadLinear", [3, 5, 40], w), lib).run(None, {"x": x})
    assert y.shape == (3, 5, 24)
    assert rel_l2(y, quad_linear_ref(x.reshape(15, 40), w).reshape(3, 5, 24)) <= REL_TOL


CONV2D_CASES = {
    # name: (C, M, H, W, kernel, strides, pads (t, l, b, r), dilations, group)
    "3x3-s2-asym-pads": (8, 16, 13, 11, (3, 3), (2, 2), (1, 0, 2, 1), (1, 1), 1),
    "3x3-dilation2": (6, 20, 12, 12, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1),
    "3x3-groups2": (8, 32, 10, 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2),
    "3x3-groups2-narrow": (6, 8, 9, 10, (3, 3), (1, 2), (0, 1, 1, 0), (1, 1), 2),
    "1x1": (32, 48, 7, 7, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "5x5": (8, 16, 14, 14, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 1),
    "5x5-s2-d2-g2": (4, 6, 17, 15, (5, 3), (2, 1), (3, 0, 1, 2), (2, 1), 2),
    "depthwise": (16, 16, 8, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 16),
}


@pytest.mark.parametrize("case", list(CONV2D_CASES))
def test_quad_conv2d(lib: Path, case: str) -> None:
    c, m, h, w_, kernel, strides, pads, dil, group = CONV2D_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    w = relinear_weights(rng, (m, c // group, *kernel))
    model = make_model("QuadConv2d", ["N", c, h, w_], w, strides=list(strides), pads=list(pads),
                       dilations=list(dil), group=group)
    sess = session(model, lib)
    numpy_conv = lambda x, wt, b: conv2d_numpy(x, wt, b, strides, pads, dil, group)  # noqa: E731
    for n in BATCHES:
        x = rng.normal(size=(n, c, h, w_)).astype(np.float32)
        (y,) = sess.run(None, {"x": x})
        ref = quad_conv_ref(x, w, numpy_conv)
        assert y.shape == ref.shape
        assert rel_l2(y, ref) <= REL_TOL
        if n == 3:  # the numpy reference itself agrees with torch
            ref_t = quad_conv_ref(x, w, torch_conv(strides, pads, dil, group, dims=2))
            assert rel_l2(y, ref_t) <= REL_TOL and rel_l2(ref, ref_t) <= 1e-12


CONV1D_CASES = {
    "k3-pad1": (8, 24, 50, 3, 1, (1, 1), 1, 1),
    "k5-s2-d2-g2-asym": (8, 6, 33, 5, 2, (3, 1), 2, 2),
}


@pytest.mark.parametrize("case", list(CONV1D_CASES))
def test_quad_conv1d(lib: Path, case: str) -> None:
    c, m, length, k, s, pads, d, group = CONV1D_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    w = relinear_weights(rng, (m, c // group, k))
    model = make_model("QuadConv1d", ["N", c, length], w, strides=[s], pads=list(pads), dilations=[d], group=group)
    sess = session(model, lib)

    def numpy_conv(x, wt, b):  # 1-D as 2-D with a unit height
        y = conv2d_numpy(x[:, :, None, :], wt[:, :, None, :], b, (1, s), (0, pads[0], 0, pads[1]), (1, d), group)
        return y[:, :, 0, :]

    for n in BATCHES:
        x = rng.normal(size=(n, c, length)).astype(np.float32)
        (y,) = sess.run(None, {"x": x})
        ref = quad_conv_ref(x, w, numpy_conv)
        assert y.shape == ref.shape
        assert rel_l2(y, ref) <= REL_TOL
        assert rel_l2(y, quad_conv_ref(x, w, torch_conv((s,), pads, (d,), group, dims=1))) <= REL_TOL


def test_weights_as_graph_inputs(lib: Path) -> None:
    """Non-constant weights are packed per call (no stale cache when they change between runs)."""
    rng = np.random.default_rng(3)
    w1, w2 = relinear_weights(rng, (16, 8, 3, 3)), relinear_weights(rng, (16, 8, 3, 3))
    sess = session(make_model("QuadConv2d", ["N", 8, 9, 9], w1, as_inputs=True, pads=[1, 1, 1, 1]), lib)
    conv = torch_conv((1, 1), (1, 1, 1, 1), (1, 1), 1, dims=2)
    x = rng.normal(size=(3, 8, 9, 9)).astype(np.float32)
    for w in (w1, w2):
        (y,) = sess.run(None, {"x": x, **dict(zip(WEIGHT_NAMES, w))})
        assert rel_l2(y, quad_conv_ref(x, w, conv)) <= REL_TOL


def _isas() -> list[str]:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    isas = ["base"]
    if " avx2 " in flags and " fma " in flags:
        isas.append("avx2")
    if " avx512f " in flags and " fma " in flags:
        isas.append("avx512")
    return isas


@pytest.mark.parametrize("isa", _isas())
def test_every_isa_kernel_set(lib: Path, isa: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each compiled kernel set (forced with QUADEXPORT_KERNEL_ISA) matches the reference."""
    monkeypatch.setenv("QUADEXPORT_KERNEL_ISA", isa)
    rng = np.random.default_rng(11)
    wl = relinear_weights(rng, (40, 33))
    wc = relinear_weights(rng, (24, 12, 3, 3))
    lin = session(make_model("QuadLinear", ["N", 33], wl), lib)
    conv = session(make_model("QuadConv2d", ["N", 12, 11, 11], wc, strides=[2, 2], pads=[1, 1, 1, 1]), lib)
    ref_conv = torch_conv((2, 2), (1, 1, 1, 1), (1, 1), 1, dims=2)
    for n in (1, 5):
        x = rng.normal(size=(n, 33)).astype(np.float32)
        assert rel_l2(lin.run(None, {"x": x})[0], quad_linear_ref(x, wl)) <= REL_TOL
        x = rng.normal(size=(n, 12, 11, 11)).astype(np.float32)
        assert rel_l2(conv.run(None, {"x": x})[0], quad_conv_ref(x, wc, ref_conv)) <= REL_TOL


def test_unknown_isa_is_an_error(lib: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUADEXPORT_KERNEL_ISA", "sse9")
    w = relinear_weights(np.random.default_rng(0), (4, 4))
    with pytest.raises(Exception, match="QUADEXPORT_KERNEL_ISA"):
        session(make_model("QuadLinear", ["N", 4], w), lib)


def test_shape_mismatch_is_reported(lib: Path) -> None:
    w = relinear_weights(np.random.default_rng(0), (8, 6, 3, 3))
    sess = session(make_model("QuadConv2d", ["N", "C", 9, 9], w, pads=[1, 1, 1, 1]), lib)
    with pytest.raises(Exception, match="quadexport: QuadConv2d: x has 5 channels"):
        sess.run(None, {"x": np.zeros((1, 5, 9, 9), np.float32)})
