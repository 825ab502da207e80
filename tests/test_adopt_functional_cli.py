"""``quadexport adopt`` as a user types it on the functional style and on a model already built from quadexport layers
(issue #30 items 1 and 6): each command a ``python -m quadexport`` subprocess; the run then loads with ``q.load``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

import quadexport as q
from quadexport.layers import QuadLayer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import adopt_functional_models as fm  # noqa: E402


def _cli(*args, cwd: Path) -> str:
    r = subprocess.run([sys.executable, "-m", "quadexport", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _user(tmp_path: Path, name: str) -> tuple[Path, torch.nn.Module]:
    d = tmp_path / "user"
    d.mkdir()
    shutil.copy(Path(fm.__file__), d / "qnets.py")
    model = fm.build(name, seed=4)
    fm.save_checkpoint(name, model, d / "ckpt.pth")
    return d, model


@pytest.mark.slow  # three CLI processes: ~40 s on the shared 2-core machine
def test_model_of_quadexport_layers_becomes_a_run_that_export_and_check_take(tmp_path):
    d, model = _user(tmp_path, "qx_heads")
    run = tmp_path / "run"
    out = _cli("adopt", "qnets.py:qx_heads", "--weights", "ckpt.pth", "--input-shape", "1,12,12", "--out", run,
               cwd=d)
    assert "0 neuron(s) rewritten (none), 3 already quadexport" in out and "already quadexport: c1, c2, head" in out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["command"] == "adopt" and cfg["model_file"] == "qnets.py" and (run / "qnets.py").exists()
    assert json.loads((run / "metrics.json").read_text())["adopt"]["already"] == ["c1", "c2", "head"]
    fused = tmp_path / "q.onnx"
    _cli("export", run, fused, "--mode", "fused", "--no-check", "-q", cwd=tmp_path)
    assert sum(n.domain not in ("", "ai.onnx") for n in onnx.load(str(fused)).graph.node) == 3
    assert "fail" not in _cli("check", fused, run, "--batch", "2", cwd=tmp_path).lower()
    x = fm.example("qx_heads")
    with torch.no_grad():
        assert torch.equal(q.load(run)(x), model(x))


def test_functional_qcnn_run_loads_by_replaying_the_spec(tmp_path):
    d, model = _user(tmp_path, "qcnn1d")
    run = tmp_path / "run"
    out = _cli("adopt", "qnets.py:qcnn1d", "--weights", "ckpt.pth", "--input-shape", "1,256", "--out", run, cwd=d)
    assert "6 neuron(s) rewritten (6 fan)" in out and "q1: r=q1.weight_r + g=q1.weight_g + b=q1.weight_b" in out
    loaded = q.load(run)
    assert not any("weight_r" in k for k in loaded.state_dict())
    x = fm.example("qcnn1d")
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.slow  # four CLI processes: ~40 s on the shared 2-core machine
def test_ct_autoencoder_of_conv_and_transposed_neurons_adopts_on_unit_range_inputs(tmp_path):
    # issue #30 done-when: 5 conv + 5 ConvTranspose2d neurons fed [0, 1] images, all adopted through the CLI with
    # --input-range 0,1; the range is recorded, and export and check draw their inputs from it
    d, model = _user(tmp_path, "qae")
    run = tmp_path / "run"
    out = _cli("adopt", "qnets.py:qae", "--weights", "ckpt.pth", "--input-shape", "1,24,24", "--input-range", "0,1",
               "--out", run, cwd=d)
    assert "10 neuron(s) rewritten (10 fan)" in out, out
    loaded = q.load(run)
    assert loaded.quadexport_meta["input_range"] == [[0.0, 1.0]]
    kinds = sorted(type(m).__name__ for m in loaded.modules() if isinstance(m, QuadLayer))
    assert kinds == ["QuadConv2d"] * 5 + ["QuadConvTranspose2d"] * 5
    x = torch.rand(3, 1, 24, 24, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref, got = model(x), loaded(x)
    assert torch.isfinite(got).all() and torch.allclose(got, ref, rtol=1e-5, atol=1e-6)
    onnx_path = tmp_path / "ae.onnx"
    _cli("export", run, onnx_path, cwd=tmp_path)  # export's own check passes on U[0,1] inputs or writes nothing
    assert onnx_path.exists()
    report = _cli("check", onnx_path, run, "--batch", "2", cwd=tmp_path)
    assert "U[0,1]" in report and "fail" not in report.lower(), report
