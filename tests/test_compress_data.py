"""``quadexport compress`` of runs trained on your own data (issue #13): an ``imagefolder:`` of PNG files (streamed
through DataLoader workers) and an ``npz:`` file, each trained one epoch, compressed with calibration, a validation
split, fine-tuning, parity and int8; and the one-line error when the data a run was trained on has gone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_imagefolder import write_digits_folder  # noqa: F401  (tests/ is on sys.path)

import quadexport
import quadexport.compress as qc
from quadexport.training.loop import TrainConfig, evaluate_batches, train


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    from quadexport._torchutil import one_thread

    with one_thread():
        yield


def write_digits_npz(path: Path) -> Path:
    """Digits as uint8 ``(N, 8, 8)`` images (0-255) with names for the classes, in one ``numpy.savez`` file."""
    from quadexport.data.builtin import _digits_raw

    x_tr, y_tr, x_te, y_te = _digits_raw()
    scale = lambda x: np.round(x[:, 0] * (255 / 16)).astype(np.uint8)  # noqa: E731
    np.savez(path, x_train=scale(x_tr), y_train=y_tr, x_test=scale(x_te), y_test=y_te,
             class_names=np.array([f"digit {d}" for d in range(10)]))
    return path


def _train(dataset: str, out: Path) -> dict:
    cfg = TrainConfig(model="cnn", neuron="fan", dataset=dataset, out=str(out), epochs=1, batch_size=16, lr=0.1)
    return train(cfg, progress=False, plot=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{kind: (dataset spec, data path, run dir, training metrics)}`` for an image folder and an npz file."""
    tmp = tmp_path_factory.mktemp("compress-data")
    folder = write_digits_folder(tmp / "digits-png", n_train=300, n_test=100)
    npz = write_digits_npz(tmp / "digits.npz")
    out = {}
    for kind, path in (("imagefolder", folder), ("npz", npz)):
        spec = f"{kind}:{path}"
        out[kind] = (spec, path, tmp / f"run-{kind}", _train(spec, tmp / f"run-{kind}"))
    return out


def _test_accuracy(model: torch.nn.Module) -> float:
    """The model's accuracy on its own test split, read again from the files (any dataset kind)."""
    from quadexport.data import open_run_dataset

    src = open_run_dataset(model.quadexport_meta, workers=0)
    return evaluate_batches(model, src.loader("test", 256), torch.device("cpu"))[1]


def test_compress_imagefolder_run(runs, tmp_path):
    spec, root, run, metrics = runs["imagefolder"]
    out = tmp_path / "c"
    r = qc.compress(run, out, threshold=0.05, align=4, calib_samples=64, val_samples=50, finetune_epochs=1,
                    max_drop=None, quantize="int8", bench=False, verbose=False)
    assert 0 < r.quadratic_channels["kept"] < r.quadratic_channels["total"]
    assert len(r.finetune) == 1 and r.validation["samples"] == 50  # of the 300 training PNGs
    assert r.int8["calib_samples"] == 64
    assert r.accuracy["original"] == metrics["test_acc"]  # the run's own evaluation of the same val/ folder
    model = quadexport.load(out)  # the compressed run loads and rebuilds its pruned architecture
    assert qc.get_spec(model) is not None and model.quadexport_meta["dataset"] == spec
    acc = _test_accuracy(model)
    assert acc == r.accuracy["final"] and acc > 0.3  # measured on the 100 test PNGs; well above chance (0.1)
    assert all(0 <= v <= 1 for v in (r.validation["original"], r.validation["final"]))
    # parity: onnxruntime vs torch on random inputs and on the folder's test images
    assert r.parity["ok"] and r.parity["worst_rel_l2"] <= 1e-5
    sources = {ln["source"] for ln in json.loads((out / "parity.json").read_text())["lines"]}
    assert f"{spec}[100]" in sources
    # int8: calibrated on training PNGs, accuracy streamed over the test PNGs = the in-memory computation
    from quadexport.compress.quant import onnx_accuracy
    from quadexport.data import open_run_dataset

    src = open_run_dataset(model.quadexport_meta, workers=0)
    xs, ys = (torch.cat(t).numpy() for t in zip(*src.loader("test", 100)))
    assert r.int8["test_acc"] == onnx_accuracy(out / qc.INT8_ONNX, xs, ys)[0]
    assert r.int8["top1_agreement"] >= 0.8


def test_compress_npz_run_from_the_cli(runs, tmp_path, capsys):
    from quadexport.cli import main

    spec, _, run, metrics = runs["npz"]
    out = tmp_path / "c"
    assert main(["compress", str(run), "--out", str(out), "--prune-threshold", "0.05", "--align", "4",
                 "--calib-samples", "64", "--val-samples", "100", "--max-drop", "-1", "--no-bench"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    rep = json.loads((out / qc.REPORT_JSON).read_text())
    assert rep["validation"]["samples"] == 100 and len(rep["finetune"]) == 1
    assert rep["accuracy"]["original"] == metrics["test_acc"]
    model = quadexport.load(out)
    assert qc.get_spec(model) is not None
    assert _test_accuracy(model) == rep["accuracy"]["final"] > 0.3
    assert rep["parity"]["ok"] and json.loads((out / "parity.json").read_text())["ok"]


def test_splits_come_from_the_training_data(runs):
    from quadexport.compress.rundata import open_data

    _, _, run, _ = runs["npz"]
    meta = quadexport.load(run).quadexport_meta
    d = open_data(run, meta, calib_samples=32, val_samples=100)
    n = len(d.source.train)
    assert len(d.val) == 100 and len(d.fit) == n - 100 and len(d.calib) == 32
    assert sorted(d.val.indices + d.fit.indices) == list(range(n))  # a partition of the training split
    fit_images = {tuple(d.source.train[i][0].flatten().tolist()) for i in d.fit.indices}
    assert all(tuple(x.flatten().tolist()) in fit_images for x in d.calib)  # calibration never sees validation
    assert len(d.test) == 360 and d.accuracy(quadexport.load(run), "test") == _test_accuracy(quadexport.load(run))
    again = open_data(run, meta, calib_samples=32, val_samples=100)
    assert d.val.indices == again.val.indices and torch.equal(d.calib, again.calib)  # seeded


@pytest.mark.parametrize("kind", ["imagefolder", "npz"])
def test_missing_data_is_one_line_error_before_writing(runs, tmp_path, kind, capsys):
    from quadexport.cli import main

    spec, path, run, _ = runs[kind]
    moved = path.with_name(path.name + ".moved")
    path.rename(moved)
    try:
        with pytest.raises(qc.CompressError, match=rf"was trained on {kind}:.* which is not there any more"):
            qc.compress(run, tmp_path / "c", threshold=0.05, bench=False, verbose=False)
        assert main(["compress", str(run), "--out", str(tmp_path / "c"), "--no-bench"]) == 2
    finally:
        moved.rename(path)
    err = capsys.readouterr().err.strip()
    assert err.startswith("quadexport compress: error: ") and "\n" not in err and spec in err
    assert list(tmp_path.iterdir()) == []  # nothing written, no staging dir left
