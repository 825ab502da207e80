"""``compress --task-loss`` (issue #23): a run that is not a classifier is refused in one line naming ``--task-loss``,
and compresses with ``--task-loss distill-mse``. The run is a tiny multi-output model made through the CLI as a user
would (``quadratize timm:test_resnet --input-shape`` with ``features_only``: a list of two feature maps, no dataset,
so compress feeds random inputs), compressed through the CLI, then loaded in a fresh process and exported with
parity."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import quadexport as q
from quadexport.runs.checkpoint import read_checkpoint, save_checkpoint
from quadexport.compress.config import CompressConfig, CompressError
from quadexport.compress.taskloss import TaskLoss, get_task_loss, list_task_losses, register_task_loss

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from compress_models import give_quadratic_terms  # noqa: E402


def _cli(*args: str | Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "quadexport", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory) -> Path:
    """``quadratize timm:test_resnet --input-shape 3 32 32`` with ``features_only`` (two feature maps out), its
    quadratic terms then given per-channel sizes from negligible to large (some channels prune, some do not)."""
    run = tmp_path_factory.mktemp("task") / "run"
    r = _cli("quadratize", "timm:test_resnet", "--input-shape", "3", "32", "32", "--model-arg", "features_only=true",
             "--model-arg", "out_indices=[1,2]", "--out", run)
    assert r.returncode == 0, r.stderr
    ckpt = read_checkpoint(run)
    model = q.load(run)
    give_quadratic_terms(model, torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    save_checkpoint(run, model, ckpt["meta"], run_id=ckpt.get("run_id"))
    return run


def test_task_loss_registry():
    assert "distill-mse" in list_task_losses()
    with pytest.raises(ValueError, match="already registered"):
        register_task_loss(TaskLoss("distill-mse", lambda o, r, y: o, False, "again"))
    loss = get_task_loss("distill-mse")
    a = {"seg": torch.ones(2, 3, 4, 4), "cls": torch.zeros(2, 5)}
    b = {"seg": torch.zeros(2, 3, 4, 4), "cls": torch.full((2, 5), 3.0)}
    assert float(loss(a, b, torch.zeros(2))) == pytest.approx((1.0 + 9.0) / 2)  # mean over the outputs
    with pytest.raises(CompressError, match="distill-mse") as e:
        CompressConfig(task_loss="nope")
    assert "\n" not in str(e.value)


def test_non_classifier_refused_naming_task_loss(feature_run, tmp_path):
    r = _cli("compress", feature_run, "--out", tmp_path / "c")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "multi-output run" in r.stderr and "--task-loss distill-mse" in r.stderr
    r = _cli("compress", feature_run, "--out", tmp_path / "c", "--task-loss", "distill-mse", "--quantize", "int8")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "without --quantize" in r.stderr, r.stderr
    assert not (tmp_path / "c").exists()


FRESH = """
import json, sys, numpy as np, torch
import quadexport as q
from quadexport.compress import get_spec
from quadexport.exporter.outputs import flatten, rebuild_outputs
m = q.load(sys.argv[1])
x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
with torch.no_grad():
    ref = m(x)
rel = {}
for name, path in (("run", sys.argv[1] + "/model.onnx"), ("export", q.export(m, sys.argv[2], dynamic_size=True))):
    s = q.make_session(path)
    got = rebuild_outputs(s, s.run(None, {s.get_inputs()[0].name: x.numpy()}))
    rel[name] = max(float(np.linalg.norm(g - r.numpy()) / np.linalg.norm(r.numpy()))
                    for g, r in zip(got, flatten(ref)))
print(json.dumps({"rel": rel, "n": len(got), "compressed": get_spec(m) is not None}))
"""


def test_cli_compress_non_classifier_with_distill_mse(feature_run, tmp_path):
    out = tmp_path / "c"
    r = _cli("compress", feature_run, "--out", out, "--task-loss", "distill-mse", "--calib-samples", "64",
             "--val-samples", "32", "--align", "4", "--batch", "1", "--min-seconds", "0.05")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no accuracy: not a classifier" in r.stdout and "latency ×" in r.stdout
    rep = json.loads((out / "compress_report.json").read_text())
    acc, val = rep["accuracy"], rep["validation"]
    assert acc["original"] is None and acc["final"] is None and acc["delta_pp"] is None  # absent, not 0
    assert val["task_loss"] == "distill-mse" and val["original_loss"] == 0.0 and math.isfinite(val["final_loss"])
    assert 0 < rep["quadratic_channels"]["kept"] < rep["quadratic_channels"]["total"]
    assert rep["macs"]["compressed_ratio"] < rep["macs"]["original_ratio"]
    assert rep["macs"]["relu_twin"] < rep["macs"]["compressed"]  # the twin is the plain ReLU model
    assert rep["parity"]["ok"] and rep["latency_ratios"][0]["compressed_ms"] > 0
    assert len(rep["finetune"]) == 1 and math.isfinite(rep["finetune"][0]["train_loss"])
    p = subprocess.run([sys.executable, "-c", FRESH, str(out), str(tmp_path / "again.onnx")], capture_output=True,
                       text=True, timeout=300, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["compressed"] and res["n"] == 2
    assert max(res["rel"].values()) <= 1e-5, res


def test_cli_bench_of_a_multi_output_run_against_its_twin(feature_run, tmp_path):
    """``bench RUN`` on a run whose model returns a list of feature maps (options holding lists): both the run and
    its ReLU twin export and time, and the ratio row names the pair."""
    out = tmp_path / "bench"
    r = _cli("bench", feature_run, "--batch", "1", "--min-iters", "5", "--min-seconds", "0.05", "--warmup", "2",
             "--opset", "17", "--no-torch-eager", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((out / "bench.json").read_text())
    text = json.dumps(report)
    assert "timm:test_resnet-relu" in text and "timm:test_resnet-fan" in text
    assert "timm:test_resnet-fan / timm:test_resnet-relu" in r.stdout
