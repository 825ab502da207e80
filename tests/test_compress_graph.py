"""Compression of any architecture (issue #13): channel groups from the model's graph (torch-pruning), the same as
the zoo's hand-written ones; end to end on a quadratized torchvision ResNet-18 / MobileNetV3-small and on a user
module with a residual add and a concatenation (export parity, load in a fresh process); defaults that say what
they missed; a ReLU run is refused before calibration."""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import quadexport.compress as qc
from quadexport.runs.checkpoint import save_checkpoint
from quadexport.data import load_dataset
from quadexport.compress.structure import describe, permutable
from quadexport.transforms import create_model

sys.path.insert(0, str(Path(__file__).parent))
import compress_models  # noqa: E402  (registers the cgtest_* models)

SHAPE = (1, 8, 8)
HERE = Path(__file__).parent


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: with two OpenMP threads on a loaded 2-core machine small convs get ~20x slower."""
    from quadexport._torchutil import one_thread

    with one_thread():
        yield


def _key(groups):
    return sorted((g.channels, tuple(sorted(g.producers)), tuple(sorted(g.consumers))) for g in groups)


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "cnn", "mlp"])
def test_graph_groups_match_the_zoo_structure(name):
    m = create_model(name, "fan", in_channels=1, input_size=8, **({"width": 8} if name in ("cnn", "mlp") else {}))
    traced, ref = describe(m, SHAPE), m.channel_groups()
    assert _key(g for g in traced.groups if permutable(m, g)) == _key(ref.groups)
    assert sorted((s.name, s.in_channels, s.out_channels, s.stride, s.pad) for s in traced.shortcuts) == \
        sorted((s.name, s.in_channels, s.out_channels, s.stride, s.pad) for s in ref.shortcuts)
    # the output layer's group (the logits) is never permuted
    assert all(not permutable(m, g) for g in traced.groups if g.producers[0][0] in ("fc", "head"))


def test_graph_plan_identical_to_zoo_plan_on_resnet():
    m = compress_models.give_quadratic_terms(create_model("resnet14", "fan", in_channels=1, input_size=8),
                                             torch.randn(128, *SHAPE))
    x = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(1))
    sc = qc.channel_scores(qc.collect_stats(m, x))
    old = qc.plan(m, sc, 0.05, align=4, structure=m.channel_groups())
    new = qc.plan(m, sc, 0.05, align=4, structure=describe(m, SHAPE))
    assert {n: (p.k, p.g, p.b) for n, p in old.layers.items()} == {n: (p.k, p.g, p.b) for n, p in new.layers.items()}
    by_prod = lambda pl: {tuple(sorted(g.producers)): pl.perms.get(g.name) for g in pl.structure.groups
                          if g.name in pl.perms}
    assert by_prod(old) == by_prod(new)
    a, _ = qc.compress_model(m, old, sc)
    b, _ = qc.compress_model(m, new, sc)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def _run_dir(tmp: Path, name: str, train_subset: int = 100) -> Path:
    torch.manual_seed(0)
    m = create_model(name, "fan", in_channels=1, input_size=8)
    # MobileNet's 1×1 convs over hundreds of channels amplify random quadratic terms far more than ResNets do
    # (scale 0.1: the uncompressed model's random-input parity reads 1.5e-5; 0.03: 28 of 3584 channels kept at
    # threshold 0.05, the compressed export's parity 1.9e-6)
    compress_models.give_quadratic_terms(m, load_dataset("digits", train_subset=train_subset).x_train,
                                         scale=0.03 if "mbv3" in name else 0.1)
    meta = {"dataset": "digits", "input_shape": list(SHAPE), "num_classes": 10, "test_acc": 0.1,
            "train_config": {"model": name, "neuron": "fan", "dataset": "digits", "train_subset": train_subset,
                             "batch_size": 64, "lr": 0.01, "seed": 0}}
    save_checkpoint(tmp, m, meta, epoch=1)
    return tmp


FRESH = """
import sys, json, numpy as np, torch
sys.path.insert(0, sys.argv[1])
import compress_models, quadexport, quadexport.compress
from quadexport.exporter import make_session
m = quadexport.load(sys.argv[2])
from quadexport.data import load_dataset
x = load_dataset("digits").x_test[:8]
with torch.no_grad():
    ref = m(x).numpy()
s = make_session(sys.argv[2] + "/model.onnx")
out = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
print(json.dumps({"rel": float(np.linalg.norm(out - ref) / np.linalg.norm(ref)),
                  "spec": quadexport.compress.get_spec(m) is not None}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cgtest_resnet18", "cgtest_mbv3s", "cgtest_user"])
def test_compress_any_architecture_end_to_end(tmp_path, name):
    src = _run_dir(tmp_path / "src", name)
    out = tmp_path / "out"
    r = qc.compress(src, out, threshold=0.05, align=4, calib_samples=64, val_samples=20, finetune_epochs=1,
                    max_drop=None, bench=False, verbose=False)
    kept, total = r.quadratic_channels["kept"], r.quadratic_channels["total"]
    assert 0 < kept < total, (kept, total)
    assert any(x["form"] == "mixed" for x in r.layers)  # channels split inside layers, not only whole layers
    assert r.parity["ok"] and r.parity["worst_rel_l2"] <= 1e-5
    assert len(r.finetune) == 1
    env = {**os.environ, "PYTHONPATH": str(Path(qc.__file__).parents[2])}
    p = subprocess.run([sys.executable, "-c", FRESH, str(HERE), str(out)], capture_output=True, text=True,
                       timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["spec"] and res["rel"] <= 1e-5


def test_user_module_groups_concat_and_residual():
    m = create_model("cgtest_user", "fan", in_channels=1, input_size=8)
    st = describe(m, SHAPE)
    by_name = {g.name: g for g in st.groups}
    stream = next(g for g in st.groups if ("res", "bn1") in g.producers)
    assert ("stem", "bn0") in stream.producers and {"left", "right"} <= set(stream.consumers)
    # the concatenation: left and right are two groups, read by `mix` at input offsets 0 and 16
    for name, offset in (("left", 0), ("right", 16)):
        mix = next(mb for mb in by_name[name].members if mb.name == "mix" and mb.dim == "in")
        assert mix.index[0] == [offset] and mix.index[15] == [offset + 15]
    x = torch.randn(4, *SHAPE)
    assert qc.permute_model(copy.deepcopy(m), {g.name: list(range(g.channels))[::-1] for g in st.groups
                                               if permutable(m, g)}, st)(x).sub(m(x)).abs().max() < 1e-5


def test_relu_run_refused_before_calibration(tmp_path, caplog):
    m = create_model("cnn", "relu", in_channels=1, input_size=8, width=8)
    save_checkpoint(tmp_path / "relu", m, {"dataset": "digits", "input_shape": list(SHAPE), "num_classes": 10})
    from quadexport.cli import main

    with caplog.at_level(logging.INFO, logger="quadexport"):
        rc = main(["compress", str(tmp_path / "relu"), "--out", str(tmp_path / "o"), "--no-bench"])
    assert rc == 2
    assert "calibrate" not in caplog.text
    with pytest.raises(qc.CompressError, match="nothing to prune"):
        qc.compress(tmp_path / "relu", tmp_path / "o2", bench=False)


def test_missed_target_is_said_plainly(tmp_path, capsys):
    from quadexport.cli import main

    src = _run_dir(tmp_path / "src", "cgtest_user", train_subset=300)
    # a MAC ratio below the ReLU twin's cannot be reached: the run is written, the command says what it reached
    rc = main(["compress", str(src), "--out", str(tmp_path / "o"), "--target-ratio", "0.5", "--cost", "macs",
               "--finetune-epochs", "0", "--calib-samples", "64", "--val-samples", "60", "--no-bench", "--no-check",
               "--align", "1", "--max-drop", "100"])
    out = capsys.readouterr().out
    assert rc == 3 and "MISSED --target-ratio 0.5 (macs vs the ReLU twin): reached 1.00×" in out
    rep = json.loads((tmp_path / "o" / qc.REPORT_JSON).read_text())
    assert rep["targets"]["reached_ratio"] == pytest.approx(1.0) and len(rep["targets"]["missed"]) == 1
    assert rep["validation"]["samples"] == 60 and rep["quadratic_channels"]["kept"] == 0
    assert (tmp_path / "o" / "checkpoint.pt").exists()


def test_finetune_rolls_back_nan_through_the_training_loop():
    from quadexport.compress.finetune import recipe
    from quadexport.training.fit import fit_tensors
    from quadexport.training.loop import TrainingDiverged

    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    before = copy.deepcopy(m.state_dict())
    x, y = torch.full((320, 1, 8, 8), float("nan")), torch.zeros(320, dtype=torch.long)
    cfg = recipe({"model": "cnn", "batch_size": 32, "lr": 0.1, "max_rollbacks": 2}, epochs=1)
    with pytest.raises(TrainingDiverged):
        fit_tensors(m, x, y, cfg)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # rolled back, never NaN
    hist = fit_tensors(m, torch.randn(320, 1, 8, 8), y, cfg)
    assert len(hist) == 1 and hist[0]["skipped_steps"] == 0 and cfg.lr == pytest.approx(0.01)
