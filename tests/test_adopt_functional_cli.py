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
