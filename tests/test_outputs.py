"""Beyond classifiers: outputs of any structure (named ONNX outputs, recorded structure, rebuilt from onnxruntime),
``export(dynamic_size=True)`` / ``export --dynamic-size``, ``check`` at several sizes with one row per output.

Each model is exported with a dynamic size, run under onnxruntime at another size than the one it was traced at
(parity <= 1e-5 against torch) and passes ``check``. The torchvision segmentation model (DeepLabV3-MobileNetV3 with
its auxiliary head: a dict with two dense heads) goes through the CLI as a user types it: ``quadratize --weights
--input-shape`` makes the run dir, then ``info``, ``export --dynamic-size``, ``check`` and ``compress`` (refused).
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import quadexport as q
from quadexport.runs.checkpoint import read_checkpoint, save_checkpoint
from quadexport.exporter.dynamic import DynamicSizeError
from quadexport.exporter.outputs import flatten, rebuild_outputs, structure_of
from test_cpp_client import client  # noqa: F401  (fixture; tests/ is on sys.path)
from test_export import perturb

ROOT = Path(__file__).resolve().parents[1]
PARITY = 1e-5


def _cli(*args: str | Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "quadexport", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env=env)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


def _leaves(x) -> list[np.ndarray]:
    return [x] if isinstance(x, np.ndarray) else [a for v in x for a in _leaves(v)]


def _parity_at(path: Path, model: nn.Module, shape: tuple[int, ...]) -> dict[str, float]:
    """rel_l2 per output of the ONNX file vs torch on a random batch of 2 at ``shape`` (C, *spatial)."""
    x = np.random.default_rng(1).standard_normal((2, *shape)).astype(np.float32)
    sess = q.make_session(path)
    got = rebuild_outputs(sess, sess.run(None, {"input": x}))
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x))
    if isinstance(ref, torch.Tensor):
        return {"output": _rel(got, ref.numpy())}
    if isinstance(ref, dict):
        assert isinstance(got, dict) and list(got) == list(ref)
        return {k: max(_rel(g, r.numpy()) for g, r in zip(_leaves(got[k]), flatten(ref[k]))) for k in ref}
    assert type(got) is type(ref) and len(got) == len(ref)
    return {str(i): _rel(g, r.numpy()) for i, (g, r) in enumerate(zip(got, ref))}


# ---------------------------------------------------------------------------------------------------------------
# small models of every output structure
# ---------------------------------------------------------------------------------------------------------------

def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(q.QuadConv2d(cin, cout, 3, stride=stride, padding=1, neuron="fan"), nn.BatchNorm2d(cout),
                         nn.ReLU())


class UNet(nn.Module):
    """A small U-Net-like denoiser: image in, image out (two downsamplings, skip connections)."""

    def __init__(self, c: int = 3, w: int = 8) -> None:
        super().__init__()
        self.e1, self.e2, self.e3 = _block(c, w), _block(w, 2 * w, 2), _block(2 * w, 4 * w, 2)
        self.u2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.d2 = _block(4 * w, 2 * w)
        self.u1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.d1 = _block(2 * w, w)
        self.out = nn.Conv2d(w, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.e1(x)
        b = self.e2(a)
        y = self.d2(torch.cat([self.u2(self.e3(b)), b], 1))
        return x - self.out(self.d1(torch.cat([self.u1(y), a], 1)))


class TwoHeads(nn.Module):
    """A shared trunk, a dense class-map head and a classifier head: ``{"seg": [N,5,H,W], "cls": [N,10]}``."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(_block(3, 8), _block(8, 8))
        self.seg = q.QuadConv2d(8, 5, 1, neuron="fan")
        self.cls = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.trunk(x)
        return {"seg": self.seg(f), "cls": self.cls(f.mean((2, 3)))}


class TupleNet(nn.Module):
    """Returns ``(logits, features)``."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = _block(3, 6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.trunk(x)
        return self.fc(f.mean((2, 3))), f


class Conv1dNet(nn.Module):
    """1-D signal in, per-step class scores out: ``[N, 2, L] -> [N, 4, L]``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(q.QuadConv1d(2, 8, 5, padding=2, neuron="fan"), nn.BatchNorm1d(8), nn.ReLU(),
                                  q.QuadConv1d(8, 4, 3, padding=1, neuron="fan"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class FixedSize(nn.Module):
    """Bakes its input size in: a Linear after flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


CASES = {  # name: (model, traced shape, another shape, expected output names, task)
    "unet": (UNet, (3, 16, 16), (3, 24, 20), ["output"], "dense"),
    "two_heads": (TwoHeads, (3, 8, 8), (3, 12, 10), ["seg", "cls"], "multi-output"),
    "tuple": (TupleNet, (3, 8, 8), (3, 11, 7), ["output_0", "output_1"], "multi-output"),
    "conv1d": (Conv1dNet, (2, 32), (2, 50), ["output"], "segmentation"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_dynamic_size_any_structure(tmp_path, name):
    build, shape, other, names, task = CASES[name]
    model = perturb(build(), 0.05, calib_shape=shape)
    path = q.export(model, tmp_path / f"{name}.onnx", input_shape=shape, dynamic_size=True)
    sess = q.make_session(path)
    assert [o.name for o in sess.get_outputs()] == names
    assert [d for d in sess.get_inputs()[0].shape[2:]] == (["length"] if len(shape) == 2 else ["height", "width"])
    s = structure_of(path)
    assert s.names == names and s.task == task
    for rel in _parity_at(path, model, other).values():
        assert rel <= PARITY
    report = q.check(path, model, batches=(1, 3), verbose=False)
    assert report.ok, report.format()
    sources = {line.source for line in report.lines}
    assert f"random {'x'.join(str(2 * d) for d in shape[1:])}" in sources  # the second size
    assert {line.output for line in report.lines} == set(names)


@pytest.mark.parametrize("mode", ["function", "fused"])
def test_function_and_fused_modes_take_a_dynamic_size(tmp_path, mode):
    model = perturb(TwoHeads(), 0.05)
    path = q.export(model, tmp_path / f"{mode}.onnx", input_shape=(3, 8, 8), mode=mode, dynamic_size=True)
    assert max(_parity_at(path, model, (3, 12, 10)).values()) <= PARITY
    assert q.check(path, model, batches=(2,), opt_levels=("all",), verbose=False).ok


def test_check_rows_per_output_kind(tmp_path):
    """top-1 only for 2-D logits, pixel-wise argmax only for the class map."""
    model = perturb(TwoHeads(), 0.05, calib_shape=(3, 8, 8))
    path = q.export(model, tmp_path / "two.onnx", input_shape=(3, 8, 8), dynamic_size=True)
    report = q.check(path, model, batches=(2,), opt_levels=("all",), verbose=False)
    assert report.ok
    seg = [line for line in report.lines if line.output == "seg"]
    cls = [line for line in report.lines if line.output == "cls"]
    assert seg and all(line.argmax is not None and line.top1 is None for line in seg)
    assert cls and all(line.top1 is not None and line.argmax is None for line in cls)
    assert "argmax" in seg[0].format() and " seg:" in seg[0].format()


def test_nested_structure_and_legacy_exporter(tmp_path):
    """Nested dict/tuple outputs flatten in torch's order; the legacy exporter (opset 17) names them the same."""

    class Nested(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = q.QuadConv2d(3, 4, 3, padding=1, neuron="fan")

        def forward(self, x):
            y = self.conv(x)
            return {"main": y, "aux": (y.mean((2, 3)), y * 2)}

    model = perturb(Nested(), 0.05)
    for opset in (20, 17):
        path = q.export(model, tmp_path / f"n{opset}.onnx", input_shape=(3, 8, 8), opset=opset, dynamic_size=True)
        assert structure_of(path).names == ["main", "aux.0", "aux.1"]
        rels = _parity_at(path, model, (3, 10, 6))
        assert list(rels) == ["main", "aux"]
        got = rebuild_outputs(path, q.make_session(path).run(None, {"input": np.zeros((1, 3, 8, 8), np.float32)}))
        assert isinstance(got["aux"], tuple) and len(got["aux"]) == 2
        assert q.check(path, model, batches=(2,), opt_levels=("all",), verbose=False).ok


Pair = collections.namedtuple("Pair", ["mask", "score"])


def test_namedtuple_output_rebuilds_as_namedtuple(tmp_path):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = q.QuadConv2d(3, 2, 3, padding=1, neuron="fan")

        def forward(self, x):
            y = self.conv(x)
            return Pair(y, y.mean((1, 2, 3)))

    model = perturb(Net(), 0.05)
    path = q.export(model, tmp_path / "nt.onnx", input_shape=(3, 8, 8), dynamic_size=True)
    assert structure_of(path).names == ["mask", "score"]
    sess = q.make_session(path)
    got = rebuild_outputs(sess, sess.run(None, {"input": np.ones((1, 3, 9, 9), np.float32)}))
    assert type(got).__name__ == "Pair" and got._fields == ("mask", "score") and got.mask.shape == (1, 2, 9, 9)
    assert q.check(path, model, batches=(2,), opt_levels=("all",), verbose=False).ok


def test_a_classifier_keeps_logits_and_fixed_size(tmp_path):
    model = perturb(q.create_model("cnn", "fan", in_channels=1, input_size=8, width=4), 0.05)
    path = q.export(model, tmp_path / "c.onnx", input_shape=(1, 8, 8))
    sess = q.make_session(path)
    assert [o.name for o in sess.get_outputs()] == ["logits"] and sess.get_inputs()[0].shape[2:] == [8, 8]
    assert structure_of(path).task == "classification"


def test_a_model_that_bakes_its_size_in_is_refused_naming_the_op(tmp_path):
    with pytest.raises(DynamicSizeError) as e:
        q.export(FixedSize(), tmp_path / "f.onnx", input_shape=(3, 8, 8), dynamic_size=True)
    msg = str(e.value)
    assert "\n" not in msg and "Linear 'fc'" in msg and "without dynamic_size" in msg
    assert not (tmp_path / "f.onnx").exists()
    q.export(FixedSize(), tmp_path / "f.onnx", input_shape=(3, 8, 8))  # fixed size: fine


def test_bn_folding_verifies_dict_outputs():
    """Folding is verified on every output of a dict model (not skipped as 'no tensor')."""
    from quadexport.exporter.fold import fold_batchnorm

    model = perturb(TwoHeads(), 0.05, calib_shape=(3, 8, 8))
    folded, report = fold_batchnorm(model, torch.randn(2, 3, 8, 8))
    assert len(report.folded) == 2 and 0 < report.rel_change <= 1e-5
    x = torch.randn(2, 3, 12, 10)
    with torch.no_grad():
        a, b = model(x), folded(x)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_raw_input_with_dynamic_size(tmp_path):
    """``input="raw"``: the preprocessing is per channel, so it works at any size; check feeds raw pixels."""
    from quadexport.data.preprocess import Preprocessing, RawInput, preprocessing_metadata

    prep = Preprocessing(channels=3, size=(8, 8), scale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    model = perturb(TwoHeads(), 0.05, calib_shape=(3, 8, 8))
    model.quadexport_meta = {"input_shape": [3, 8, 8], "preprocessing": prep.to_dict()}
    raw = RawInput(model, prep)
    path = q.export(raw, tmp_path / "raw.onnx", dynamic_size=True,
                    metadata=preprocessing_metadata(prep, raw_input=True))
    px = np.random.default_rng(0).integers(0, 256, (2, 3, 12, 10)).astype(np.float32)
    sess = q.make_session(path)
    got = rebuild_outputs(sess, sess.run(None, {"input": px}))
    with torch.no_grad():
        ref = raw(torch.from_numpy(px))
    assert all(_rel(got[k], ref[k].numpy()) <= PARITY for k in ref)
    assert q.check(path, model, batches=(2,), opt_levels=("all",), verbose=False).ok


def test_check_uses_recorded_input_statistics(tmp_path):
    from quadexport.check import _random

    model = TwoHeads()
    model.quadexport_meta = {"input_stats": {"mean": [10.0, 0.0, -10.0], "std": [1.0, 2.0, 3.0]}}
    x = _random(model, np.random.default_rng(0), (64, 3, 8, 8))
    assert np.allclose(x.mean((0, 2, 3)), [10, 0, -10], atol=0.3)
    assert np.allclose(x.std((0, 2, 3)), [1, 2, 3], rtol=0.1)


# ---------------------------------------------------------------------------------------------------------------
# a quadratized torchvision segmentation model with two heads, through the CLI
# ---------------------------------------------------------------------------------------------------------------

SEG = "torchvision:deeplabv3_mobilenet_v3_large"


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """``quadratize --weights`` (a ReLU state dict, no dataset) → run dir, its quadratic terms then perturbed (as a
    fine-tuned run's are), exported with ``export --dynamic-size``."""
    d = tmp_path_factory.mktemp("seg")
    relu = q.create_model(SEG, "relu", num_classes=4, in_channels=3, input_size=32, aux_loss=True)
    torch.save(relu.state_dict(), d / "w.pt")
    run = d / "run"
    r = _cli("quadratize", SEG, "--weights", d / "w.pt", "--input-shape", "3", "32", "32", "--model-arg",
             "num_classes=4", "--model-arg", "aux_loss=true", "--include", "backbone.1.*", "classifier.*",
             "aux_classifier.*", "--out", run)
    assert r.returncode == 0, r.stderr
    ckpt = read_checkpoint(run)
    model = q.load(run)
    perturb(model, 0.05)  # no BN recalibration: at 32x32 the dilated backbone's last stages see 2x2 maps
    save_checkpoint(run, model, ckpt["meta"], run_id=ckpt.get("run_id"))
    onnx_path = d / "seg.onnx"
    exported = _cli("export", run, onnx_path, "--dynamic-size")
    return run, onnx_path, exported


def test_seg_cli_export_names_outputs_and_checks_two_sizes(seg_run):
    run, onnx_path, r = seg_run
    assert r.returncode == 0, r.stdout + r.stderr
    assert "outputs (multi-output): out Nx4x32x32 classes, aux Nx4x32x32 classes" in r.stdout
    assert "random 64x64 out:" in r.stdout and "random 64x64 aux:" in r.stdout and "argmax" in r.stdout
    sess = q.make_session(onnx_path)
    assert [o.name for o in sess.get_outputs()] == ["out", "aux"]
    assert sess.get_inputs()[0].shape == ["batch", 3, "height", "width"]


def test_seg_cli_check_and_info(seg_run):
    run, onnx_path, _ = seg_run
    r = _cli("check", onnx_path, run, "--batch", "2", "--opt-level", "all")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "random 64x64 aux:" in r.stdout and "all 4 checks passed" in r.stdout
    info = _cli("info", run)
    assert info.returncode == 0, info.stderr
    assert "task: multi-output" in info.stdout and "no dataset" in info.stdout
    assert all(re.search(rf"^\s+{n}\s+Nx4x32x32\s+classes$", info.stdout, re.M) for n in ("out", "aux"))


def test_seg_api_at_another_size(seg_run):
    run, onnx_path, _ = seg_run
    model = q.load(run)
    rels = _parity_at(onnx_path, model, (3, 48, 40))
    assert list(rels) == ["out", "aux"] and max(rels.values()) <= PARITY
    assert q.check(onnx_path, model, batches=(1,), opt_levels=("all",), verbose=False).ok


def test_compress_refuses_a_non_classifier_run(seg_run, tmp_path):
    run, _, _ = seg_run
    r = _cli("compress", run, "--out", tmp_path / "c")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "multi-output run" in r.stderr and "classifier runs only" in r.stderr


def _torchvision_ops_load() -> bool:
    from quadexport._compat import import_torchvision

    tv = import_torchvision()
    try:
        tv.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
    except RuntimeError:
        return False
    return True


@pytest.mark.skipif(_torchvision_ops_load(), reason="torchvision's compiled ops load here: the detector runs")
def test_a_detector_with_post_processing_is_refused_in_one_line(tmp_path):
    """A torchvision detector's forward ends in nms, which cannot run beside this torch build: quadratize and export
    say so in one line (the backbone and head without post-processing export: docs/export.md, 'Detection')."""
    from quadexport.errors import UsageError

    det = q.create_model("torchvision:ssdlite320_mobilenet_v3_large", "relu", num_classes=3, in_channels=3,
                         input_size=320).eval()
    for call in (lambda: q.quadratize(det, "fan", input_shape=(3, 64, 64)),
                 lambda: q.export(det, tmp_path / "det.onnx", input_shape=(3, 64, 64))):
        with pytest.raises(UsageError) as e:
            call()
        assert "\n" not in str(e.value) and "nms/roi_align" in str(e.value) and "backbone and head" in str(e.value)
    assert not (tmp_path / "det.onnx").exists()


def test_info_of_a_classifier_run_without_recorded_outputs(tmp_path):
    """Runs that do not record their outputs (older runs, trained classifiers): info computes them from the model."""
    run = tmp_path / "run"
    save_checkpoint(run, q.create_model("mlp", "fan", in_channels=1, input_size=8, width=8),
                    {"dataset": "digits", "input_shape": [1, 8, 8]})
    r = _cli("info", run)
    assert r.returncode == 0, r.stderr
    assert "task: classification" in r.stdout and "(dataset digits)" in r.stdout
    assert re.search(r"^\s+logits\s+Nx10\s+logits$", r.stdout, re.M)
    bad = _cli("info", tmp_path / "nothing")
    assert bad.returncode == 2 and "neither a run dir nor one of" in bad.stderr


def test_cpp_client_and_save_io_write_one_npy_per_output(tmp_path, client):  # noqa: F811 (fixture)
    """The C++ client runs a dict-output file at another size and writes OUT.npy, OUT_1.npy in graph order; save_io
    writes expected.npy, expected_1.npy for the same outputs, and verify_io compares them."""
    from quadexport.deploy import save_io, verify_io

    model = perturb(TwoHeads(), 0.05)
    path = q.export(model, tmp_path / "two.onnx", input_shape=(3, 8, 8), dynamic_size=True)
    saved = save_io(model, path, tmp_path / "io", batch=2)
    assert saved.output_names == ["seg", "cls"] and saved.expected_files == ["expected.npy", "expected_1.npy"]
    r = subprocess.run([str(client), str(path), str(tmp_path / "io" / "input.npy"), str(tmp_path / "y.npy")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    outs = [np.load(tmp_path / "y.npy"), np.load(tmp_path / "y_1.npy")]
    assert all(row.ok for row in verify_io(tmp_path / "io", outs))
    x = np.random.default_rng(3).standard_normal((1, 3, 12, 10)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = subprocess.run([str(client), str(path), str(tmp_path / "x.npy"), str(tmp_path / "z.npy")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    assert _rel(np.load(tmp_path / "z.npy"), ref["seg"].numpy()) <= PARITY
    assert _rel(np.load(tmp_path / "z_1.npy"), ref["cls"].numpy()) <= PARITY
