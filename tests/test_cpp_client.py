"""The C++ onnxruntime client (examples/cpp, built by tools/build_cpp_client.sh) and the self-check files it reads
(quadexport.deploy.save_io).

The client runs a quadratic ResNet20 (quadratic branches perturbed, so its outputs are not the ReLU twin's) exported
in decomposed and fused mode on input.npy (batch 4 of 1×28×28) and must reproduce torch's expected.npy to
rel_l2 ≤ 1e-5; the fused file must get the kernel library registered, a file without function bodies must be refused
without it. The client is skipped only where cmake or a C++ compiler is missing. The save_io tests use a small CNN.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import quadexport as q
from quadexport.deploy import load_io, save_io, verify_io
from quadexport.errors import UsageError
from quadexport.exporter import export, strip_functions
from quadexport.layers import QuadLayer

from test_export import kernel_lib, perturb  # noqa: F401  (tests/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 28, 28)
RTOL = 1e-5


def _fields(stdout: str) -> dict[str, str]:
    """The client's ``key: value`` lines."""
    return dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)


@pytest.fixture(scope="module")
def client() -> Path:
    missing = [t for t in ("cmake", os.environ.get("CXX", "g++")) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"no {' or '.join(missing)} on this machine: the C++ client cannot be built")
    proc = subprocess.run(["bash", str(ROOT / "tools" / "build_cpp_client.sh"), "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"build_cpp_client.sh failed:\n{proc.stderr[-4000:]}"
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.is_file() and os.access(path, os.X_OK), path
    return path


def run_client(client: Path, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(client), *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def resnet20() -> torch.nn.Module:
    torch.manual_seed(0)
    m = q.create_model("resnet20", neuron="fan", in_channels=SHAPE[0], input_size=SHAPE[1])
    perturb(m, 0.005, 0, SHAPE)
    m.quadexport_meta = {"input_shape": list(SHAPE)}
    return m


@pytest.fixture(scope="module")
def files(resnet20, tmp_path_factory) -> dict[str, Path]:
    """mode -> exported file (ResNet20, decomposed and fused)."""
    d = tmp_path_factory.mktemp("cpp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {mode: export(resnet20, d / f"resnet20-{mode}.onnx", mode=mode) for mode in ("decomposed", "fused")}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["decomposed", "fused"])
def test_client_matches_torch(client, files, resnet20, kernel_lib, mode, tmp_path):
    io = save_io(resnet20, files[mode], tmp_path / "io", batch=4)
    out = tmp_path / "out.npy"
    proc = run_client(client, files[mode], io.input_path, out, "--kernel-lib", kernel_lib)
    assert proc.returncode == 0, proc.stderr
    f = _fields(proc.stdout)
    assert f["kernel"] == ("none" if mode == "decomposed" else str(kernel_lib))
    assert f["output"].startswith("logits [4,10]")
    (row,) = verify_io(io.directory, np.load(out), runtime="cpp")
    assert row.ok and row.rel_l2 <= RTOL, row.format()
    # not trivially the ReLU twin: the same network with its quadratic terms at the ReLinear init (W_g=0, b_g=1,
    # W_b=0, c=0: only the linear r branch) gives other outputs
    linear = copy.deepcopy(resnet20)
    with torch.no_grad():
        for layer in (m for m in linear.modules() if isinstance(m, QuadLayer)):
            for br in layer.neuron_type.branches:
                if br.name in layer.neuron_type.quadratic_branches:
                    getattr(layer, br.name).weight.zero_()
                    if getattr(layer, br.name).bias is not None:
                        getattr(layer, br.name).bias.fill_(1.0 if br.init == "one" else 0.0)
        linear_out = linear(torch.from_numpy(np.load(io.input_path))).numpy()
    assert verify_io(io.directory, linear_out)[0].rel_l2 > 100 * RTOL


@pytest.mark.slow
def test_client_fused_without_bodies_needs_the_kernel(client, files, resnet20, kernel_lib, tmp_path):
    stripped = tmp_path / "stripped.onnx"
    onnx.save(strip_functions(onnx.load(str(files["fused"]))), str(stripped))
    io = save_io(resnet20, files["fused"], tmp_path / "io", batch=2, seed=1)
    refused = run_client(client, stripped, io.input_path, tmp_path / "x.npy", "--kernel", "never")
    assert refused.returncode == 1 and "kernel library" in refused.stderr and not (tmp_path / "x.npy").exists()
    ran = run_client(client, stripped, io.input_path, tmp_path / "y.npy", "--kernel-lib", kernel_lib)
    assert ran.returncode == 0, ran.stderr
    assert verify_io(io.directory, np.load(tmp_path / "y.npy"))[0].ok
    bodies = run_client(client, files["fused"], io.input_path, tmp_path / "z.npy", "--kernel", "never")
    assert bodies.returncode == 0 and _fields(bodies.stdout)["kernel"] == "none"
    assert verify_io(io.directory, np.load(tmp_path / "z.npy"))[0].ok


@pytest.mark.slow
def test_check_runtime_cpp(client, files, resnet20, kernel_lib, monkeypatch):
    """``quadexport.check(runtime="cpp")`` runs the client per batch: bodies and kernel for the fused file."""
    from quadexport.check import check
    from quadexport.runtimes import get_runtime

    monkeypatch.setenv("QUADEXPORT_CPP_CLIENT", str(client))
    assert get_runtime("cpp").supports().available
    rep = check(files["fused"], resnet20, runtime="cpp", batches=(1, 4), opt_levels=("all",), dataset=False,
                verbose=False)
    assert rep.ok, rep.format()
    assert {(line.opt_level, line.runtime) for line in rep.lines} == {("cpp ORT_ENABLE_ALL", "bodies"),
                                                                      ("cpp ORT_ENABLE_ALL", "kernel")}
    assert max(line.rel_l2 for line in rep.lines) <= RTOL
    assert "-[✓] cpp ORT_ENABLE_ALL [kernel] batch 4 random: rel_l2" in rep.format()
    rt = get_runtime("cpp")
    sess = rt.open(files["fused"])  # kernel_library="auto": the client registers the library for a fused file
    x = np.random.default_rng(0).standard_normal((2, *SHAPE)).astype(np.float32)
    (out,) = sess.run(x)
    assert sess.kernel == kernel_lib and out.shape == (2, 10)
    monkeypatch.setenv("QUADEXPORT_CPP_CLIENT", str(client.parent / "missing"))
    assert "make cpp" in rt.supports().reason


@pytest.mark.slow
def test_client_times_runs(client, files, resnet20, tmp_path):
    io = save_io(resnet20, files["decomposed"], tmp_path / "io", batch=4)
    proc = run_client(client, files["decomposed"], io.input_path, tmp_path / "o.npy", "--repeat", "5",
                      "--warmup", "1", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    f = _fields(proc.stdout)
    assert f["runs"].startswith("5 ")
    assert 0 < float(f["min_ms"]) <= float(f["p50_ms"]) <= float(f["p90_ms"])
    bad = run_client(client, files["decomposed"], tmp_path / "missing.npy", tmp_path / "o2.npy")
    assert bad.returncode == 1 and "missing.npy" in bad.stderr


# ---------------------------------------------------------------------------------------------------------------
# save_io / load_io / verify_io (small CNN, no C++)
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    m = perturb(q.create_model("cnn", in_channels=1, input_size=8), 0.02, calib_shape=(1, 8, 8))
    return m, export(m, tmp_path_factory.mktemp("saveio") / "cnn.onnx")


def test_save_io_writes_a_self_check(cnn, tmp_path):
    model, path = cnn
    model.train()
    saved = save_io(model, path, tmp_path / "io", batch=3, seed=5)
    assert model.training  # state restored
    meta = json.loads((tmp_path / "io" / "io.json").read_text())
    assert meta["input"] == {"name": "input", "file": "input.npy", "shape": [3, 1, 8, 8], "dtype": "float32"}
    assert meta["outputs"][0]["name"] == "logits" and meta["outputs"][0]["shape"] == [3, 10]
    assert meta["rtol"] == RTOL and meta["onnxruntime_rel_l2"] <= RTOL
    again, x, (expected,) = load_io(saved.directory)
    assert again == saved and x.dtype == np.float32 and x.shape == (3, 1, 8, 8)
    with torch.no_grad():
        np.testing.assert_array_equal(expected, model.eval()(torch.from_numpy(x)).numpy())
    ort_out = q.make_session(path).run(None, {"input": x})[0]
    assert verify_io(saved.directory, ort_out)[0].ok
    assert not verify_io(saved.directory, ort_out + 1e-2 * np.abs(ort_out).max())[0].ok
    assert not verify_io(saved.directory, ort_out[:2])[0].ok  # shape mismatch


def test_save_io_real_data_and_mistakes(cnn, tmp_path):
    model, path = cnn
    data = torch.rand(2, 1, 8, 8)
    saved = save_io(model, path, tmp_path / "real", batch=4, data=data)
    assert saved.source == "data" and saved.input_shape == [2, 1, 8, 8]
    np.testing.assert_array_equal(np.load(saved.input_path), data.numpy())
    with pytest.raises(UsageError, match="shape"):
        save_io(model, path, tmp_path / "bad", data=np.zeros((2, 1, 9, 9), np.float32))
    other = perturb(q.create_model("cnn", in_channels=1, input_size=8), 0.02, seed=3, calib_shape=(1, 8, 8))
    with pytest.raises(UsageError, match="does not reproduce"):
        save_io(other, path, tmp_path / "other")
    with pytest.raises(UsageError, match="no ONNX file"):
        save_io(model, tmp_path / "nope.onnx", tmp_path / "x")
    with pytest.raises(UsageError, match="io.json"):
        load_io(tmp_path / "x")
