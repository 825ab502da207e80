"""The runtime registry (quadexport.runtimes): built-ins listed with what they support, duplicates refused, a runtime
of the tests' own (onnx's reference evaluator, tests/reference_runtime.py) registered and used by ``check`` and
``bench`` through the API, and by ``quadexport check --runtime MODULE:CLASS`` through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import quadexport as q
from quadexport.bench import BenchError, bench
from quadexport.check import check
from quadexport.runs.checkpoint import save_checkpoint
from quadexport.errors import UsageError
from quadexport.exporter import export
from quadexport.runtimes import (OnnxruntimeCPU, RuntimeUnavailable, Support, get_runtime, register_runtime,
                                 unregister_runtime)

from reference_runtime import ReferenceRuntime
from test_export import perturb  # noqa: F401  (tests/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> tuple[torch.nn.Module, dict[str, Path]]:
    """A perturbed 8×8 CNN and its files in each mode."""
    torch.manual_seed(0)
    m = perturb(q.create_model("cnn", in_channels=1, input_size=SHAPE[1]), 0.02, calib_shape=SHAPE)
    m.quadexport_meta = {"input_shape": list(SHAPE)}
    d = tmp_path_factory.mktemp("runtimes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # fused without the kernel library: bodies
        return m, {mode: export(m, d / f"cnn-{mode}.onnx", mode=mode) for mode in ("decomposed", "function", "fused")}


@pytest.fixture
def reference():
    rt = register_runtime(ReferenceRuntime())
    yield rt
    unregister_runtime(rt.name)


def test_builtins_listed_with_what_they_support():
    import onnxruntime as ort

    names = q.list_runtimes()
    assert names[:4] == ["onnxruntime", "onnxruntime-cuda", "openvino", "cpp"]
    for name in names:
        sup = get_runtime(name).supports()
        assert isinstance(sup, Support) and sup.modes and sup.dtypes
        assert sup.available or sup.reason, f"{name} is unavailable without saying why"
    cpu = get_runtime("onnxruntime").supports()
    assert cpu.available and cpu.version == ort.__version__ and cpu.kernel_library
    assert set(cpu.modes) == set(q.exporter.list_export_targets())
    assert get_runtime("openvino").supports().modes == ("decomposed",)
    cuda = get_runtime("onnxruntime-cuda").supports()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert not cuda.available and "onnxruntime-gpu" in cuda.reason
    with pytest.raises(UsageError, match="unknown runtime 'openvin'; did you mean 'openvino'"):
        get_runtime("openvin")


def test_duplicate_registration_raises(reference):
    with pytest.raises(UsageError, match="'onnxruntime' is already registered"):
        register_runtime(OnnxruntimeCPU())
    with pytest.raises(UsageError, match="'onnx-reference' is already registered"):
        register_runtime(ReferenceRuntime())
    with pytest.raises(UsageError, match="Runtime instance"):
        register_runtime(ReferenceRuntime)  # the class, not an instance
    assert q.list_runtimes().count("onnx-reference") == 1


def test_unavailable_runtime_says_why(cnn):
    model, files = cnn
    cuda = get_runtime("onnxruntime-cuda")
    if cuda.supports().available:
        pytest.skip("CUDA is available here")
    for kw in ({"runtime": "onnxruntime-cuda"}, {"provider": "cuda"}):
        with pytest.raises(RuntimeUnavailable, match="'onnxruntime-cuda' is not available here: "):
            check(files["decomposed"], model, batches=(1,), verbose=False, **kw)
    with pytest.raises(BenchError, match="not available here"):
        bench(["mlp"], runtime="onnxruntime-cuda")


def test_custom_runtime_checks_through_the_api(cnn, reference):
    model, files = cnn
    rep = check(files["decomposed"], model, runtime="onnx-reference", batches=(1, 3), dataset=False, verbose=False)
    assert rep.ok, rep.format()
    assert [(line.opt_level, line.batch) for line in rep.lines] == [("onnx-reference", 1), ("onnx-reference", 3)]
    assert reference.runs == 2 and rep.env["runtime"] == "onnx-reference"
    assert rep.format().splitlines()[0].startswith("-[✓] onnx-reference batch 1 random: rel_l2")
    fn = check(files["function"], model, runtime=reference, batches=(2,), dataset=False, verbose=False)
    assert fn.ok and reference.runs == 3  # the bodies inlined by the evaluator; no kernel variant
    with pytest.raises(UsageError, match="fused-mode file .* which onnx.reference cannot run .*decomposed, function"):
        check(files["fused"], model, runtime=reference, dataset=False, verbose=False)
    other = perturb(q.create_model("cnn", in_channels=1, input_size=SHAPE[1]), 0.02, seed=5, calib_shape=SHAPE)
    wrong = check(files["decomposed"], other, runtime=reference, batches=(2,), dataset=False, verbose=False)
    assert not wrong.ok and "err_fp64 >" in wrong.lines[0].reason  # its outputs really are compared


def test_bench_takes_any_runtime(reference):
    rep = bench(["mlp"], runtime="onnx-reference", modes=("decomposed",), baselines=False, torch_eager=False,
                batches=(2,), warmup=1, min_iters=3, min_seconds=0.0)
    (row,) = rep.rows
    assert row.runtime == "onnx-reference" and row.mode == "decomposed" and row.iters >= 3
    assert reference.runs >= 1 + 3  # warm-up and timed runs went through it
    assert rep.config["runtime"] == "onnx-reference" and rep.environment["runtime"] == "onnx-reference"
    assert rep.environment["ep"] == ["onnx.reference"]
    with pytest.raises(BenchError, match="does not run fused files"):
        bench(["mlp"], runtime=reference, modes=("fused",))


def _cli(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "COLUMNS": "400"}
    return subprocess.run([sys.executable, "-m", "quadexport", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)


@pytest.mark.slow  # two subprocesses (each imports torch and onnxruntime)
def test_cli_check_runtime_module_class(cnn, tmp_path):
    model, files = cnn
    run = tmp_path / "run"
    save_checkpoint(run, model, dict(model.quadexport_meta))
    r = _cli("check", files["decomposed"], run, "--runtime", "reference_runtime:ReferenceRuntime", "--batch", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "-[✓] onnx-reference batch 2 random: rel_l2" in r.stdout and "all 1 checks passed" in r.stdout
    r = _cli("check", files["fused"], run, "--runtime", "reference_runtime:ReferenceRuntime")
    assert r.returncode == 2 and "onnx.reference cannot run" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("check", "--help")
    assert r.returncode == 0 and ", ".join(q.list_runtimes()[:4]) in r.stdout and "MODULE:CLASS" in r.stdout
