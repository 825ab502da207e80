"""quadexport.check and the export/check CLI: passing and failing reports, JSON, non-zero exit on a miss."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from quadexport.check import TOLERANCES, check, compare
from quadexport.runs.checkpoint import save_checkpoint
from quadexport.exporter import export, strip_functions

from test_export import cached_export, cached_model, kernel_lib, make_model  # noqa: F401  (tests/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("check")


def test_check_passes_and_saves_json(out_dir, caplog):
    model = cached_model("cnn")
    path = cached_export(out_dir, "cnn", "fan", "decomposed")
    with caplog.at_level(logging.INFO, logger="quadexport"):
        rep = check(path, model, batches=(1, 3, 5, 64), opt_levels=("disable", "all"),
                    json_path=out_dir / "rep.json")
    printed = caplog.text
    assert printed.strip().splitlines()[-1].endswith(rep.format().splitlines()[-1])
    assert rep.ok and rep.rtol == TOLERANCES["float32"]
    assert len(rep.lines) == 2 * 4
    assert "-[✓] ORT_DISABLE_ALL batch 3 random: rel_l2" in printed and "top1 100.00%" in printed
    assert "all 8 checks passed" in printed
    saved = json.loads((out_dir / "rep.json").read_text())
    assert saved["ok"] is True and len(saved["lines"]) == 8 and saved["env"]["onnxruntime"]
    assert saved == json.loads(json.dumps(rep.to_dict()))


def test_check_fails_on_perturbed_model(out_dir, caplog):
    model = make_model("cnn")
    path = export(model, out_dir / "cnn-before.onnx")
    with torch.no_grad():
        model.conv2.g.weight[0, 0, 1, 1] += 0.5  # after export: torch and ONNX now differ
    with caplog.at_level(logging.INFO, logger="quadexport"):
        rep = check(path, model, batches=(1, 3), opt_levels=("disable",))
    printed = rep.format()
    assert "-[✗] ORT_DISABLE_ALL batch 1 random" in caplog.text
    assert not rep.ok
    assert all(not line.ok and "err_fp64 >" in line.reason and line.rule == "rtol" for line in rep.lines)
    assert "-[✗] ORT_DISABLE_ALL batch 1 random" in printed and "checks failed" in printed


def test_check_atol_and_rtol(out_dir):
    model = cached_model("cnn")
    path = cached_export(out_dir, "cnn", "fan", "decomposed")
    assert not check(path, model, batches=(3,), opt_levels=("all",), atol=0.0, verbose=False).ok
    strict = check(path, model, batches=(3,), opt_levels=("all",), rtol=0.0, verbose=False)
    # rtol 0: only the model's own float32 floor (x K) bounds the error against float64
    assert strict.lines and all(line.rule == "floor" and line.threshold == strict.k * line.floor
                                and line.ok == (line.err_fp64 <= line.threshold) for line in strict.lines)
    assert check(path, model, batches=(3,), opt_levels=("all",), atol=1e-2, verbose=False).ok


def test_check_runs_function_models_both_ways(out_dir, kernel_lib):
    model = cached_model("mlp")
    path = cached_export(out_dir, "mlp", "fan", "function")
    rep = check(path, model, batches=(1, 5), opt_levels=("disable", "all"), verbose=False)
    assert rep.ok
    assert {line.runtime for line in rep.lines} == {"bodies", "kernel"}
    assert len(rep.lines) == 2 * 2 * 2


def test_check_reports_missing_kernel_as_failure(out_dir, monkeypatch):
    import quadexport.check  # noqa: F401
    import quadexport.exporter.session as session

    path = cached_export(out_dir, "mlp", "fan", "fused")
    bare = out_dir / "mlp-bare.onnx"
    onnx.save(strip_functions(onnx.load(str(path))), str(bare))
    monkeypatch.setattr(session, "find_kernel_library", lambda: None)
    rep = check(bare, cached_model("mlp"), batches=(1,), verbose=False)
    assert not rep.ok and rep.errors and "make kernels" in rep.errors[0]


def test_compare_nan_handling():
    ref = np.array([[1.0, 2.0], [np.nan, 4.0]], np.float32)
    same = compare(ref.copy(), ref, 1e-5)  # NaN where torch has NaN is no match: comparisons with NaN are false
    assert not same["ok"] and same["nan_inf"] == 1 and same["nan_inf_torch"] == 1 and "NaN/Inf" in same["reason"]
    finite = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    worse = finite.copy()
    worse[0, 0] = np.inf
    bad = compare(worse, finite, 1e-5, ref64=finite.astype(np.float64))
    assert not bad["ok"] and bad["rule"] == "nonfinite" and "1 NaN/Inf in the output" in bad["reason"]
    assert compare(finite.copy(), finite, 1e-5, ref64=finite.astype(np.float64))["ok"]
    assert not compare(ref[:1], ref, 1e-5)["ok"]  # shape mismatch


def test_check_dataset_lines(out_dir):
    """The real-data check runs on the model's dataset (digits: offline, from scikit-learn)."""
    import quadexport as q
    from test_export import perturb

    model = perturb(q.create_model("cnn", in_channels=1, input_size=8), 0.02, calib_shape=(1, 8, 8))
    model.quadexport_meta = {"dataset": "digits", "input_shape": [1, 8, 8]}
    path = export(model, out_dir / "digits-cnn.onnx")
    rep = check(path, model, batches=(1, 64), opt_levels=("all",), verbose=False)
    assert rep.ok
    ds = [line for line in rep.lines if line.source.startswith("digits")]
    assert len(ds) == 1 and ds[0].source == "digits[360]" and ds[0].accuracy is not None and 0 <= ds[0].accuracy <= 1  # a fraction, like metrics.json


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quadexport", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


@pytest.mark.slow
def test_cli_export_and_check_exit_codes(out_dir):
    import quadexport as q
    from test_export import perturb

    model = perturb(q.create_model("cnn", in_channels=1, input_size=8), 0.02, calib_shape=(1, 8, 8))
    meta = {"dataset": "digits", "input_shape": [1, 8, 8], "test_acc": 0.5, "relinear": {"mode": "sg"}}
    good, bad = out_dir / "run-good", out_dir / "run-bad"
    save_checkpoint(good, model, meta)
    onnx_path = out_dir / "cli.onnx"
    r = _cli("export", str(good), str(onnx_path), "--mode", "function", "--opset", "20")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "wrote" in r.stdout and "quadexport::QuadConv2d 3" in r.stdout and "checks passed" in r.stdout

    r = _cli("check", str(onnx_path), str(good), "--json", str(out_dir / "cli.json"), "--batches", "1", "3",
             "--opt-levels", "all")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "-[✓]" in r.stdout and "digits[360]" in r.stdout
    assert json.loads((out_dir / "cli.json").read_text())["ok"] is True

    with torch.no_grad():
        model.conv1.b.weight.add_(0.05)  # the run dir now disagrees with the exported file
    save_checkpoint(bad, model, meta)
    r = _cli("check", str(onnx_path), str(bad), "--batches", "1", "3", "--opt-levels", "disable")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "-[✗]" in r.stdout and "checks failed" in r.stdout

    r = _cli("check", str(onnx_path), str(out_dir / "no-such-run"))
    assert r.returncode == 2 and "no checkpoint" in r.stderr
