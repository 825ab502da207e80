"""OpenVINO CPU parity (quadexport.deploy.check_openvino): decomposed files match torch at f32 (rel_l2 ≤ 1e-5), with
a looser bf16 row where the CPU supports bfloat16; function/fused files are refused with the hint to decompose or
lower them, and a lowered file passes. Skipped only when openvino is not importable."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import quadexport as q
from quadexport.deploy import BF16_RTOL, bf16_supported, check_openvino, save_io
from quadexport.errors import UsageError
from quadexport.exporter import export, lower_functions

from test_export import perturb  # noqa: F401  (tests/ is on sys.path)

pytest.importorskip("openvino")

SHAPE = (1, 8, 8)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = q.create_model("cnn", in_channels=1, input_size=SHAPE[1])
    perturb(m, 0.02, seed, SHAPE)
    m.quadexport_meta = {"input_shape": list(SHAPE)}
    return m


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> tuple[torch.nn.Module, dict[str, Path]]:
    m, d = _model(), tmp_path_factory.mktemp("openvino")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return m, {mode: export(m, d / f"cnn-{mode}.onnx", mode=mode) for mode in ("decomposed", "function")}


def test_decomposed_matches_torch(cnn):
    model, files = cnn
    report = check_openvino(files["decomposed"], model, batches=(1, 3), threads=1)
    f32 = [r for r in report.rows if r.precision == "f32"]
    assert [r.batch for r in f32] == [1, 3]
    assert all(r.ok and r.rel_l2 <= 1e-5 and r.runtime == "openvino-cpu" for r in f32), report.format()
    bf16 = [r for r in report.rows if r.precision == "bf16"]
    if bf16_supported():
        assert [r.batch for r in bf16] == [1, 3] and all(r.rtol == BF16_RTOL for r in bf16)
        assert all(r.ok for r in bf16), report.format()
        assert max(r.rel_l2 for r in bf16) > max(r.rel_l2 for r in f32)  # really computed in bf16
    else:
        assert not bf16 and any("bf16 not measured" in n for n in report.notes)
    assert report.ok


def test_saved_io_and_a_mismatch(cnn, tmp_path):
    model, files = cnn
    saved = save_io(model, files["decomposed"], tmp_path / "io", batch=2)
    report = check_openvino(files["decomposed"], io_dir=saved.directory, bf16=False)
    assert [(r.precision, r.batch) for r in report.rows] == [("f32", 2)] and report.ok
    wrong = check_openvino(files["decomposed"], _model(seed=7), bf16=False)  # not the model the file came from
    assert not wrong.ok and all("rel_l2 >" in r.reason for r in wrong.rows)
    with pytest.raises(UsageError, match="model="):
        check_openvino(files["decomposed"])


def test_function_mode_refused_lowered_passes(cnn, tmp_path):
    model, files = cnn
    with pytest.raises(UsageError, match="custom-domain.*mode='decomposed'.*lower_functions") as e:
        check_openvino(files["function"], model)
    assert "\n" not in str(e.value)
    lowered = tmp_path / "lowered.onnx"
    onnx.save(lower_functions(onnx.load(str(files["function"]))), str(lowered))
    report = check_openvino(lowered, model, batches=(2,), bf16=False)
    assert report.ok and np.isfinite(report.rows[0].rel_l2), report.format()


def test_check_runtime_openvino_through_the_registry(cnn, tmp_path):
    """``quadexport.check(runtime="openvino")``: the same f32 (and bf16) settings, as check lines."""
    from quadexport.check import check

    model, files = cnn
    rep = check(files["decomposed"], model, runtime="openvino", batches=(1, 3), dataset=False, threads=1,
                verbose=False)
    assert rep.ok, rep.format()
    f32 = [line for line in rep.lines if line.opt_level == "openvino-cpu f32"]
    assert [line.batch for line in f32] == [1, 3] and all(line.rel_l2 <= 1e-5 for line in f32)
    assert "-[✓] openvino-cpu f32 batch 3 random: rel_l2" in rep.format()
    bf16 = [line for line in rep.lines if line.opt_level == "openvino-cpu bf16"]
    assert bool(bf16) == bf16_supported() and (bf16 or any("bf16 not measured" in n for n in rep.notes))
    assert rep.env["runtime"] == "openvino" and rep.env["runtime_version"] == q.runtimes.get_runtime(
        "openvino").supports().version
    with pytest.raises(UsageError, match="function-mode file .* OpenVINO cannot run.*--mode decomposed"):
        check(files["function"], model, runtime="openvino", dataset=False, verbose=False)
    lowered = tmp_path / "lowered.onnx"
    onnx.save(lower_functions(onnx.load(str(files["function"]))), str(lowered))
    assert check(lowered, model, runtime="openvino", batches=(2,), dataset=False, verbose=False).ok
