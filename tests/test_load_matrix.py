"""Every run dir the tool writes loads (issue #25): the load matrix over each origin of a run.

Each run is made through the CLI (``python -m quadexport ...`` in a subprocess), as a user makes it: zoo,
``torchvision:``, ``timm:`` (at ``--image-size 32``), ``quadratize``, ``train --from``, ``--warm-start``, a cheap
neuron, ``adopt`` (a research-style QResNet from a DataParallel checkpoint) and its fine-tuning, and ``compress`` of each of these with every compress option (a threshold, ``--select layers``, the threshold
search, int8, int8 of a ReLU run). Then each run

* loads in a fresh process (one interpreter loads them all) with outputs bitwise equal to an in-process load on the
  run's own test images (same thread count);
* equals the model that wrote it: its test accuracy equals what the writing process recorded (and its test loss, for
  training runs); a quadratized run gives its ReLU source's outputs; a compressed run agrees with the ``model.onnx``
  its writer exported from the model in memory;
* exports (decomposed, opset 17) in that fresh process and runs under onnxruntime with parity (rel L2 <= 1e-5).

Tiny models, one epoch, 200 training images, two CLI runs at a time: ~260 CPU-seconds in all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import quadexport as q
from quadexport.data import open_run_dataset
from quadexport.training.loop import evaluate_batches

pytestmark = pytest.mark.slow  # ~260 CPU-seconds (about 2.5 min on 2 idle cores): 16 CLI runs, one fresh interpreter

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "OMP_NUM_THREADS": "1", "QUADEXPORT_DATA_WORKERS": "0"}
DATA = ["--dataset", "digits", "--train-subset", "200", "--test-subset", "100", "--epochs", "1"]
ZOO = ["--model", "cnn", "--width", "8"]
TIMM = ["--model", "timm:test_convnext", "--image-size", "32"]  # ConvNeXt needs >= 32x32: digits resized
QUIET = ["-q"]
# every compress here: no latency report, no budget to miss (exit 3), no parity report (the matrix checks parity)
COMPRESS = ["--no-bench", "--no-check", "--max-drop", "-1"]

# The origins of a run dir, in the order they are made: name -> the CLI arguments after `quadexport` ({name} is the
# run dir of an origin made before). Each is loaded, compared with its writer and exported by the tests below.
ORIGINS: dict[str, list[str]] = {
    "zoo_relu": ["train", *ZOO, "--neuron", "relu", *DATA],
    "zoo": ["train", *ZOO, "--neuron", "fan", *DATA],
    "warm_start": ["train", *ZOO, "--neuron", "fan", "--warm-start", "{zoo_relu}", *DATA],
    "cheap_neuron": ["train", *ZOO, "--neuron", "fan_pw", *DATA],
    "torchvision_relu": ["train", "--model", "torchvision:resnet18", "--neuron", "relu", *DATA],
    # MNASNet checks its state dict's module versions, which a checkpoint's plain dict does not carry
    "torchvision_mnasnet": ["train", "--model", "torchvision:mnasnet0_5", "--neuron", "relu", "--lr", "0.01", *DATA],
    "timm": ["train", *TIMM, "--neuron", "fan", *DATA],
    "quadratize": ["quadratize", "{torchvision_relu}", "--neuron", "fan"],
    "from": ["train", "--from", "{quadratize}", "--epochs", "1"],  # data: the source run's
    # compress of each origin, each with another option
    "compress_zoo_select_layers": ["compress", "{zoo}", "--target-ratio", "1.5", "--select", "layers",
                                   "--min-seconds", "0.02", "--batch", "1", *COMPRESS],
    "compress_warm_start": ["compress", "{warm_start}", "--prune-threshold", "0.1", *COMPRESS],
    "compress_cheap_neuron": ["compress", "{cheap_neuron}", *COMPRESS],
    "compress_timm_search": ["compress", "{timm}", "--target-ratio", "2", "--cost", "macs", *COMPRESS],
    "compress_quadratize_int8": ["compress", "{quadratize}", "--quantize", "int8", *COMPRESS],
    "compress_from": ["compress", "{from}", *COMPRESS],  # the chain of issue #25: torchvision -> quadratize -> from
    "compress_zoo_relu_int8": ["compress", "{zoo_relu}", "--quantize", "int8", *COMPRESS],
    # a research-style quadratic network (tests/adopt_models.py, inline three-conv neurons) from a DataParallel
    # checkpoint ({ckpt}, written by the fixture), then fine-tuned and compressed like any run
    "adopt": ["adopt", f"{ROOT / 'tests' / 'adopt_models.py'}:qresnet", "--model-arg", "depth=8", "--model-arg",
              "in_channels=1", "--weights", "{ckpt}", "--input-shape", "1,8,8", "--dataset", "digits"],
    "from_adopt": ["train", "--from", "{adopt}", "--epochs", "1", "--train-subset", "200"],
    "compress_adopt": ["compress", "{from_adopt}", *COMPRESS],
}
TRAINED = {n for n, argv in ORIGINS.items() if argv[0] == "train"}
# a --target-ratio met by measured latency: on a busy machine it may be missed (exit 3, the run still written); the
# matrix is about loading what was written, so either outcome is taken
MEASURED_TARGET = {"compress_zoo_select_layers"}

_FRESH = r"""
import sys, numpy as np, onnxruntime as ort, torch
import quadexport as q
torch.set_num_threads(int(sys.argv[1]))
out_dir = sys.argv[2]
for i in range(3, len(sys.argv), 2):
    name, run = sys.argv[i], sys.argv[i + 1]
    model = q.load(run)
    x = torch.from_numpy(np.load(f"{out_dir}/{name}.x.npy"))
    with torch.no_grad():
        y = model(x).numpy()
    path = q.export(model, f"{out_dir}/{name}.onnx", opset=17, example_input=x[:2])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    o = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.save(f"{out_dir}/{name}.torch.npy", y)
    np.save(f"{out_dir}/{name}.ort.npy", o)
print("compress imported:", "quadexport.compress" in sys.modules)
"""


def _cli(argv: list[str], cwd: Path, codes: tuple[int, ...] = (0,)) -> None:
    r = subprocess.run([sys.executable, "-m", "quadexport", *argv], capture_output=True, text=True, cwd=cwd,
                       env=ENV, timeout=600)
    assert r.returncode in codes, f"quadexport {' '.join(argv)}: exit {r.returncode}\n{r.stderr[-3000:]}"
    if r.returncode == 3:  # a missed latency target is reported, and the run is written all the same
        assert "MISSED --target-ratio" in r.stdout + r.stderr


def _deps(argv: list[str]) -> list[str]:
    return [a[1:-1] for a in argv if a.startswith("{") and a.endswith("}") and a[1:-1] in ORIGINS]


def _adopt_source(ckpt: Path | None = None) -> torch.nn.Module:
    """The research-style network the `adopt` origin starts from (seeded), saved as a DataParallel checkpoint with
    training arguments and numpy scalars when ``ckpt`` is given."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import adopt_models
    finally:
        sys.path.remove(str(ROOT / "tests"))
    model = adopt_models.build("qresnet", input_shape=(1, 8, 8), depth=8)
    if ckpt is not None:
        adopt_models.save_dataparallel_checkpoint(model, ckpt, with_args=True, numpy_scalars=True)
    return model


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Every origin made through the CLI, two commands at a time (one thread each); each starts once the runs it
    reads are made (submitted in dependency order, so a waiting command's sources are already running)."""
    base = tmp_path_factory.mktemp("origins")
    made = {name: base / name for name in ORIGINS}
    files = {"ckpt": base / "qresnet8.th"}
    _adopt_source(files["ckpt"])
    futures: dict[str, Future] = {}

    def make(name: str) -> None:
        for dep in _deps(ORIGINS[name]):
            futures[dep].result()
        argv = [a.format(**{k: str(v) for k, v in {**made, **files}.items()}) for a in ORIGINS[name]]
        _cli([*argv, "--out", str(made[name]), *QUIET], base, (0, 3) if name in MEASURED_TARGET else (0,))

    with ThreadPoolExecutor(max_workers=2) as pool:
        for name in ORIGINS:
            futures[name] = pool.submit(make, name)
        for f in futures.values():
            f.result()
    return made


def _inputs(run: Path) -> torch.Tensor:
    """The first 16 images of the run's own test split (at its input size, normalised as it was trained)."""
    src = open_run_dataset(q.load(run).quadexport_meta, workers=0)
    return next(iter(src.loader("test", 16)))[0]


@pytest.fixture(scope="module")
def fresh(runs, tmp_path_factory) -> Path:
    """One fresh interpreter loads every run, runs it on its inputs and exports it (outputs saved as .npy)."""
    d = tmp_path_factory.mktemp("fresh")
    for name, run in runs.items():
        np.save(d / f"{name}.x.npy", _inputs(run).numpy())
    args = [str(torch.get_num_threads()), str(d)] + [s for n, r in runs.items() for s in (n, str(r))]
    r = subprocess.run([sys.executable, "-c", _FRESH, *args], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "compress imported: False" in r.stdout, "loading a run must not need quadexport.compress"
    return d


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)  # float32 norms of large logits overflow
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("origin", list(ORIGINS))
def test_loads_in_a_fresh_process_bitwise_equal_to_an_in_process_load(origin, runs, fresh):
    model = q.load(runs[origin])
    x = torch.from_numpy(np.load(fresh / f"{origin}.x.npy"))
    with torch.no_grad():
        y = model(x).numpy()
    assert np.isfinite(y).all()
    assert np.array_equal(np.load(fresh / f"{origin}.torch.npy"), y)


@pytest.mark.parametrize("origin", list(ORIGINS))
def test_equals_the_model_that_wrote_it(origin, runs, fresh):
    run = runs[origin]
    model = q.load(run)
    meta = model.quadexport_meta
    metrics = json.loads((run / "metrics.json").read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the writer ran (OMP_NUM_THREADS=1)
    try:
        loss, acc = evaluate_batches(model, open_run_dataset(meta, workers=0).loader("test", 512),
                                     torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    if origin in TRAINED:  # the writer evaluated the same weights on the same test split after its last epoch
        last = metrics["epochs"][-1]
        assert acc == last["test_acc"] == metrics["test_acc"]
        assert loss == pytest.approx(last["test_loss"], rel=1e-5)
    elif origin == "adopt":  # adopted: the research network it came from, with the checkpoint's weights
        assert acc == metrics["test_acc"]
        x = torch.from_numpy(np.load(fresh / f"{origin}.x.npy"))
        with torch.no_grad():
            assert np.array_equal(model(x).numpy(), _adopt_source().eval()(x).numpy())
    elif origin == "quadratize":  # ReLinear: the quadratized model computes its ReLU source exactly
        src = q.load(runs["torchvision_relu"])
        x = torch.from_numpy(np.load(fresh / f"{origin}.x.npy"))
        with torch.no_grad():
            assert _rel_l2(model(x).numpy(), src(x).numpy()) <= 1e-6
    else:  # compressed: its accuracy as the writer measured it, and the writer's own export of the model in memory
        assert ORIGINS[origin][0] == "compress"
        assert acc == pytest.approx(metrics["test_acc"], abs=1.5 / 100)  # its own split/batches: one image at most
        import onnxruntime as ort

        x = np.load(fresh / f"{origin}.x.npy")
        sess = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
        written = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        assert _rel_l2(written, np.load(fresh / f"{origin}.torch.npy")) <= 1e-5


@pytest.mark.parametrize("origin", list(ORIGINS))
def test_exports_with_parity(origin, fresh):
    y, o = np.load(fresh / f"{origin}.torch.npy"), np.load(fresh / f"{origin}.ort.npy")
    assert o.shape == y.shape and np.isfinite(o).all()
    assert _rel_l2(o, y) <= 1e-5
    assert (o.argmax(1) == y.argmax(1)).all()
