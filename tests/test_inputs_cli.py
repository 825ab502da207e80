"""Model inputs through the CLI as a user types it (issue #30 items 3, 4, 7): a QRes PINN with ``forward(x, t)``
goes ``adopt --input-shape 1 --input-shape 1`` -> ``export`` -> ``check`` -> ``bench`` (two ONNX inputs named x and
t, parity in plain onnxruntime); a log-domain autoencoder of [0, 1] images adopts with ``--input-range 0,1``, which
the run records and ``check`` reuses; the user mistakes are one line each (exit 2, no traceback)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import input_models  # noqa: E402  (research-style models of the project's own writing)

from quadexport.cli import main  # noqa: E402

WARNINGS = ("no --weights", "unpickling ")
"""Log lines a refused adopt may print before its error (the run keeps the builder's weights; trusted unpickling)."""


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> SimpleNamespace:
    """A user's directory: their model file and a PINN checkpoint (a bare state dict of seeded random weights)."""
    d = tmp_path_factory.mktemp("inputs-cli")
    shutil.copy(Path(input_models.__file__), d / "models.py")
    torch.manual_seed(0)
    pinn = input_models.qres_pinn().eval()
    torch.save(pinn.state_dict(), d / "pinn.pt")
    return SimpleNamespace(dir=d, pinn=pinn)


def _run(capsys, *args: str | Path) -> str:
    code = main([*map(str, args), "-q"])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    return out.out


def _error(capsys, *args: str | Path) -> str:
    """The one line a refused command prints (exit 2, no traceback)."""
    assert main([*map(str, args), "-q"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "bug in quadexport" not in err, err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(WARNINGS)]
    assert len(lines) == 1 and lines[0].startswith(f"quadexport {args[0]}: error: "), lines
    return lines[0]


@pytest.mark.slow
def test_pinn_with_two_inputs_adopt_export_check_bench(user, tmp_path, capsys):
    run = tmp_path / "pinn-run"
    out = _run(capsys, "adopt", user.dir / "models.py:qres_pinn", "--weights", user.dir / "pinn.pt",
               "--input-shape", "1", "--input-shape", "1", "--out", run)
    assert "(3 qres)" in out and "inputs: x 1, t 1" in out, out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["inputs"] == [{"name": "x", "shape": [1]}, {"name": "t", "shape": [1]}] and "input_range" not in cfg
    assert "inputs: x 1, t 1" in _run(capsys, "info", run)
    import quadexport as q

    loaded = q.load(run)  # the run rebuilds the two-input model from the user's file and the adopt spec
    x, t = torch.rand(4, 1), torch.rand(4, 1)
    with torch.no_grad():
        assert torch.equal(loaded(x, t), user.pinn(x, t))

    path = tmp_path / "pinn.onnx"
    out = _run(capsys, "export", run, path, "--mode", "fused")  # exports, then checks parity on both inputs
    assert "all 12 checks passed" in out, out
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["x", "t"]
    assert sum(n.domain == "quadexport" for n in proto.graph.node) == 3  # one custom node per qres neuron
    # plain onnxruntime (the function bodies) against the user's own torch model, at a batch never traced
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    x, t = rng.uniform(-1, 1, (33, 1)).astype(np.float32), rng.uniform(0, 1, (33, 1)).astype(np.float32)
    with torch.no_grad():
        ref = user.pinn(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    got = sess.run(None, {"x": x, "t": t})[0]
    assert float(np.linalg.norm(got - ref) / np.linalg.norm(ref)) <= 1e-5

    _run(capsys, "check", path, run, "--batch", "1", "7", "--json", tmp_path / "parity.json")
    rep = json.loads((tmp_path / "parity.json").read_text())
    assert rep["ok"] and rep["lines"] and all(ln["source"] == "random" for ln in rep["lines"])

    bench = tmp_path / "bench"
    _run(capsys, "bench", run, "--batch", "1", "--mode", "decomposed", "--no-torch-eager", "--warmup", "1",
         "--min-iters", "3", "--min-seconds", "0", "--out", bench)
    rep = json.loads((bench / "bench.json").read_text())
    roles = {m["role"]: m for m in rep["models"]}
    assert roles["quadratic"]["inputs"] == ["x 1", "t 1"] and roles["twin"]["neuron"] == "relu"
    assert roles["quadratic"]["macs"] > roles["twin"]["macs"] > 0
    assert {r["role"] for r in rep["rows"]} == {"quadratic", "twin"}


def test_unit_range_autoencoder_records_and_reuses_the_range(user, tmp_path, capsys):
    """log(x + 1e-3) is NaN on most N(0, 1) inputs: without --input-range the adoption cannot be verified (refused,
    exit 2); with --input-range 0,1 it adopts both neurons, the run records the range and check draws from it."""
    target = user.dir / "models.py:log_autoencoder"
    _error(capsys, "adopt", target, "--input-shape", "1,16,16", "--out", tmp_path / "nan-run")
    run = tmp_path / "ae-run"
    out = _run(capsys, "adopt", target, "--input-shape", "1,16,16", "--input-range", "0,1", "--out", run)
    assert "(2 fan)" in out and "input 1x16x16 in [0, 1]" in out, out
    assert json.loads((run / "config.json").read_text())["input_range"] == [[0.0, 1.0]]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["meta"]["input_range"] == [[0.0, 1.0]]
    assert "input: 1x16x16 in [0, 1]" in _run(capsys, "info", run)
    path = tmp_path / "ae.onnx"
    _run(capsys, "export", run, path)
    _run(capsys, "check", path, run, "--batch", "2", "64", "--json", tmp_path / "parity.json")
    rep = json.loads((tmp_path / "parity.json").read_text())
    assert rep["ok"] and {ln["source"] for ln in rep["lines"]} == {"random U[0,1]"}
    assert all(ln["nan_inf"] == 0 for ln in rep["lines"])


def test_user_mistakes_are_one_line(user, tmp_path, capsys):
    models = user.dir / "models.py"
    # a wrong channel count: the layer that expected other channels is named
    err = _error(capsys, "adopt", f"{models}:log_autoencoder", "--input-shape", "3,16,16", "--out", tmp_path / "a")
    assert "layer enc.conv_r (Conv2d) expects 1 input channel(s), got 3" in err
    # forward(x, t) given one shape; given shapes that do not fit
    err = _error(capsys, "adopt", f"{models}:qres_pinn", "--input-shape", "1", "--out", tmp_path / "b")
    assert "forward takes 2 input(s) (x, t) but 1 input shape(s) were given" in err and "--input-shape" in err
    err = _error(capsys, "adopt", f"{models}:qres_pinn", "--input-shape", "1", "--input-shape", "2",
                 "--out", tmp_path / "c")
    assert "layer w1.0 (Linear) expects 2 input feature(s)" in err and "x 1, t 2" in err
    err = _error(capsys, "adopt", f"{models}:qres_pinn", "--input-shape", "1", "--input-shape", "1",
                 "--input-range", "0,1", "--input-range", "0,1", "--input-range", "0,1", "--out", tmp_path / "d")
    assert "3 --input-range for 2 --input-shape" in err
    # a module torch.fx cannot trace
    err = _error(capsys, "adopt", f"{models}:untraceable_net", "--input-shape", "4", "--out", tmp_path / "e")
    assert "torch.fx can trace" in err and "control flow" in err
    # --trust-checkpoint on a pickle whose class cannot be imported here
    mod = tmp_path / "pkg"
    mod.mkdir()
    (mod / "trainmeta.py").write_text("class Meta:\n    best = 0.5\n")
    code = (f"import sys, torch; sys.path.insert(0, {str(mod)!r}); import trainmeta; "
            f"torch.save({{'state_dict': torch.load({str(user.dir / 'pinn.pt')!r}), 'meta': trainmeta.Meta()}}, "
            f"{str(tmp_path / 'odd.pt')!r})")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    err = _error(capsys, "adopt", f"{models}:qres_pinn", "--weights", tmp_path / "odd.pt", "--trust-checkpoint",
                 "--input-shape", "1", "--input-shape", "1", "--out", tmp_path / "f")
    assert "pickles a class that cannot be imported here" in err and "trainmeta" in err
    assert not [p for p in tmp_path.iterdir() if p.is_dir() and p.name != "pkg"], "a refused adopt left a run dir"
