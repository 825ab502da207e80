"""External data (models past 2 GB, quadexport.exporter.extdata), forced on a small model: the export writes
``<name>.onnx.data`` beside the file (relative location) in every mode, with fp16 and with the legacy exporter, BN
folded; every reader opens it: plain onnxruntime, ``check`` (API, also one session at a time, and CLI), ``save_io``,
OpenVINO, int8 quantisation and the C++ client; the pair is staged together (discarded: neither file). The > 2 GB
case itself is ``tools/bigmodel_bench.py`` (numbers in docs/export.md)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import quadexport as q
from quadexport.runs.atomicfile import StagedFile
from quadexport.check import check
from quadexport.runs.checkpoint import save_checkpoint
from quadexport.deploy import load_io, save_io, verify_io
from quadexport.exporter import export, extdata

from test_export import perturb  # noqa: F401  (tests/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 8, 8)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = perturb(q.create_model("cnn", in_channels=1, input_size=SHAPE[1]), 0.02, 0, SHAPE)
    m.quadexport_meta = {"input_shape": list(SHAPE), "dataset": "digits"}
    return m


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    m, d = _model(), tmp_path_factory.mktemp("extdata")
    return m, export(m, d / "cnn.onnx", external_data=True)


def _external(path: Path) -> list[str]:
    proto = onnx.load(str(path), load_external_data=False)
    return sorted({extdata.external_files(path, proto)[0].name} if extdata.uses_external_data(proto) else set())


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


def test_export_writes_one_data_file_and_plain_onnxruntime_reads_it(cnn):
    model, path = cnn
    assert sorted(p.name for p in path.parent.iterdir()) == ["cnn.onnx", "cnn.onnx.data"]  # no staging left over
    assert _external(path) == ["cnn.onnx.data"]
    proto = onnx.load(str(path), load_external_data=False)
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)  # folded
    big = [t for t in proto.graph.initializer if extdata.external_data_helper.uses_external_data(t)]
    assert big and all(dict((e.key, e.value) for e in t.external_data)["location"] == "cnn.onnx.data" for t in big)
    assert path.stat().st_size < extdata.model_files(path)[1].stat().st_size
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # by path: the data is found
    x = np.random.default_rng(0).standard_normal((3, *SHAPE)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert _rel(sess.run(None, {"input": x})[0], ref) <= 1e-5
    onnx.checker.check_model(str(path), full_check=True)


@pytest.mark.parametrize("mode,fp16,opset", [("function", False, 20), ("fused", False, 20), ("decomposed", True, 20),
                                             ("decomposed", False, 17)])
def test_every_mode_fp16_and_the_legacy_exporter(tmp_path, mode, fp16, opset):
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # fused without the kernel library
        path = export(model, tmp_path / "m.onnx", mode=mode, fp16=fp16, opset=opset, external_data=True)
    assert _external(path) == ["m.onnx.data"]
    report = check(path, model, batches=(1, 3), opt_levels=("all",), dataset=False, verbose=False)
    assert report.ok, report.format()


def test_check_one_session_at_a_time_gives_the_same_lines(cnn, monkeypatch):
    model, path = cnn
    eager = check(path, model, batches=(1, 3), dataset=False, verbose=False)
    monkeypatch.setattr(extdata, "BIG_FILE_BYTES", 0)  # every file is "big": sessions open one at a time
    lazy = check(path, model, batches=(1, 3), dataset=False, verbose=False)
    assert eager.ok and lazy.ok, lazy.format()
    assert [(ln.opt_level, ln.batch, ln.rel_l2) for ln in lazy.lines] == [(ln.opt_level, ln.batch, ln.rel_l2)
                                                                      for ln in eager.lines]


def test_save_io_openvino_and_int8(cnn, tmp_path):
    model, path = cnn
    saved = save_io(model, path, tmp_path / "io", batch=2)
    assert saved.onnxruntime_rel_l2 is not None and saved.onnxruntime_rel_l2 <= 1e-5
    _, x, _ = load_io(saved.directory)
    assert Path(saved.onnx_path) == path
    from quadexport.compress.quant import onnx_accuracy, quantize_int8

    out = tmp_path / "int8.onnx"
    quantize_int8(path, out, np.random.default_rng(1).standard_normal((32, *SHAPE)).astype(np.float32))
    assert _external(out) == ["int8.onnx.data"]
    acc, logits = onnx_accuracy(out, x, np.zeros(len(x), dtype=np.int64))
    assert logits.shape == (2, 10) and np.isfinite(logits).all()
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out), load_external_data=False).graph.node)
    pytest.importorskip("openvino")
    from quadexport.deploy import check_openvino

    report = check_openvino(path, model, batches=(1, 3), bf16=False)
    assert report.ok, report.format()
    outs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    assert all(r.ok for r in verify_io(saved.directory, outs))


def test_staged_pair_discarded_leaves_neither_file(tmp_path):
    model = _model()
    (tmp_path / "m.onnx").write_bytes(b"old")
    with StagedFile(tmp_path / "m.onnx") as f:
        export(model, f.path, external_data=True)
        assert sorted(p.name for p in f.path.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
        f.discard()  # what `quadexport export` does when the parity check fails
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"] and (tmp_path / "m.onnx").read_bytes() == b"old"


def _cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quadexport", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def test_cli_export_check_and_save_io(tmp_path):
    model = _model()
    run = tmp_path / "run"
    save_checkpoint(run, model, dict(model.quadexport_meta))
    out = tmp_path / "out" / "m.onnx"
    r = _cli("export", run, out, "--external-data", "--save-io", tmp_path / "io")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "m.onnx.data" in r.stdout and "checks passed" in r.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "io" / "expected.npy").is_file()
    r = _cli("check", out, run, "--batches", "1", "3", "--opt-levels", "disable", "all")
    assert r.returncode == 0 and "-[✓]" in r.stdout and "digits[" in r.stdout, r.stdout + r.stderr
    try:
        import openvino  # noqa: F401
    except ImportError:
        return
    r = _cli("check", out, run, "--runtime", "openvino")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_cpp_client_reads_external_data(cnn, tmp_path):
    model, path = cnn
    saved = save_io(model, path, tmp_path / "io", batch=3)
    exe = _build_client()
    proc = subprocess.run([str(exe), str(path), str(saved.input_path), str(tmp_path / "out.npy")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = verify_io(saved.directory, np.load(tmp_path / "out.npy"), runtime="cpp")
    assert all(r.ok for r in rows), [r.format() for r in rows]


def _build_client() -> Path:
    import os
    import shutil

    if shutil.which("cmake") is None or shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no cmake or C++ compiler: the C++ client cannot be built")
    proc = subprocess.run(["bash", str(ROOT / "tools" / "build_cpp_client.sh"), "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Path(proc.stdout.strip().splitlines()[-1])


# -- memory: the export shares the caller's weights; BN folding verifies each pair on its own layer ------------------

def test_export_leaves_the_shared_weights_alone_and_folds_per_layer(tmp_path):
    from quadexport.exporter.fold import fold_batchnorm

    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {k: p.requires_grad for k, p in model.named_parameters()}
    export(model, tmp_path / "m.onnx", fp16=True)
    export(model, tmp_path / "f.onnx", mode="function")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {k: p.requires_grad for k, p in model.named_parameters()} == grads
    # a BatchNorm1d that normalises the token axis of a [N, T, F] Linear output (T == F): fx pairs it with the
    # Linear, but folding would scale features; the per-layer check on the real input undoes it
    seq = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)).eval()
    seq[1].running_var.uniform_(0.5, 2.0)
    seq[1].running_mean.normal_()
    x = torch.randn(2, 4, 4)
    with pytest.warns(RuntimeWarning, match="left unfolded"):
        folded, rep = fold_batchnorm(seq, x)
    assert rep.method == "fx" and not rep.folded and rep.skipped
    assert torch.allclose(folded(x), seq(x))
    ok, rep = fold_batchnorm(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)).eval(),
                             torch.randn(2, 4))
    assert rep.folded == [("0", "1")] and rep.rel_change <= 1e-5


def test_make_session_refuses_an_external_data_proto_with_one_line(cnn):
    from quadexport.errors import UsageError
    from quadexport.exporter import make_session

    _, path = cnn
    with pytest.raises(UsageError, match="external data.*path") as e:
        make_session(onnx.load(str(path), load_external_data=False))
    assert "\n" not in str(e.value)
    assert make_session(onnx.load(str(path))).get_inputs()[0].name == "input"  # weights loaded: bytes are fine
