"""Input size (issue #25): ``--image-size`` resizes the built-in datasets (and ``npz:``) with PIL bilinear, the run
records it and ``export --input raw`` takes pixels at that size; a model that cannot take the run's input size is
refused before training in one line naming the model, the size and the smallest size that works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import quadexport as q
from quadexport.data import DataOptions, Preprocessing, open_dataset
from quadexport.data.builtin import _digits_raw
from quadexport.data.resize import RESIZE, resize_images
from quadexport.data.preprocess import normalise
from quadexport.zoo.inputsize import InputSizeError, check_input_size, smallest_input_size

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
TINY = ["--dataset", "digits", "--epochs", "1", "--train-subset", "100", "--test-subset", "40", "-q"]


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quadexport", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=600)


def _pil(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One grey uint8 (H, W) image resized as a deployer would: PIL bilinear."""
    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def test_image_size_resizes_digits_raw_pixels_and_is_recorded():
    src = open_dataset("digits", DataOptions(image_size=(16, 12), train_subset=50, test_subset=20))
    p = src.preprocessing
    assert src.input_shape == (1, 16, 12) and p.size == (16, 12) and p.resize == RESIZE
    plain = open_dataset("digits", DataOptions(train_subset=50, test_subset=20)).preprocessing
    assert plain.size == (8, 8) and plain.resize is None  # the native size unless asked
    x_test = _digits_raw()[2]
    full = open_dataset("digits", DataOptions(image_size=(16, 12)))  # the whole test split, in order
    for i in (0, 7):  # the model input is (PIL-bilinear(raw) * scale - mean) / std, bit for bit
        raw = torch.from_numpy(_pil(x_test[i, 0], (16, 12))[None].copy())
        assert torch.equal(full.test[i][0], normalise(raw, p))


def test_resize_images_keeps_uint8_and_matches_pil_rgb():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(2, 3, 5, 7), dtype=np.uint8)
    out = resize_images(x, (9, 4))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 9, 4)
    rgb = np.asarray(Image.fromarray(x[1].transpose(1, 2, 0).copy()).resize((4, 9), Image.Resampling.BILINEAR))
    assert np.array_equal(out[1], rgb.transpose(2, 0, 1))
    assert resize_images(x, (5, 7)) is x
    f = resize_images(rng.random((1, 1, 4, 4)), (8, 8))
    assert f.dtype == np.float32 and f.shape == (1, 1, 8, 8)


def test_image_size_resizes_npz_arrays(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "a.npz"
    np.savez(path, x_train=rng.integers(0, 256, (20, 6, 6), dtype=np.uint8), y_train=np.arange(20) % 2,
             x_test=rng.integers(0, 256, (6, 6, 6), dtype=np.uint8), y_test=np.arange(6) % 2)
    src = open_dataset(f"npz:{path}", DataOptions(image_size=(10, 10)))
    assert src.input_shape == (1, 10, 10) and src.preprocessing.resize == RESIZE
    assert src.train[0][0].shape == (1, 10, 10)


def test_train_with_image_size_on_digits_and_export_raw_takes_that_size(tmp_path):
    run = tmp_path / "r"
    r = _cli("train", "--model", "cnn", "--width", "8", "--image-size", "16", *TINY, "--out", run, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    prep = json.loads((run / "config.json").read_text())["preprocessing"]
    assert prep["size"] == [16, 16] and prep["resize"] == RESIZE
    model = q.load(run)
    assert list(model.quadexport_meta["input_shape"]) == [1, 16, 16]
    r = _cli("export", run, tmp_path / "raw.onnx", "--input", "raw", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = onnx.load(tmp_path / "raw.onnx")
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["quadexport.input"] == "raw" and meta["quadexport.input_size"] == "16x16"
    assert "PIL bilinear" in meta["quadexport.input_formula"]
    # a deployer: decoded 8x8 digits (0-16), resized with PIL bilinear, fed as they are
    raw = np.stack([_pil(img[0], (16, 16)) for img in _digits_raw()[2][:5]])[:, None].astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "raw.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: raw})[0]
    with torch.no_grad():
        want = model(normalise(torch.from_numpy(raw), Preprocessing.from_dict(prep))).numpy()
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)


def test_a_model_too_small_for_the_input_is_refused_in_one_line_before_training(tmp_path):
    r = _cli("train", "--model", "timm:test_convnext", "--neuron", "relu", *TINY, "--out", tmp_path / "r",
             cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "timm:test_convnext" in lines[0] and "8x8" in lines[0] and "32x32" in lines[0]
    assert "--image-size 32" in lines[0]
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_smallest_input_size_by_dry_forward_passes():
    m = q.create_model("timm:test_convnext", "relu", in_channels=1, input_size=8)
    m.train()
    assert smallest_input_size(m, (1, 8, 8)) == 32  # stride-4 stem, then three 2x2 downsamplings
    assert m.training and all(x.training for x in m.modules())  # the modes are restored
    with pytest.raises(InputSizeError, match=r"cannot take 8x8 inputs .* 32x32; train with --image-size 32"):
        check_input_size(m, (1, 8, 8), "timm:test_convnext")
    check_input_size(m, (1, 32, 32), "timm:test_convnext")  # takes it: no error
    check_input_size(q.create_model("cnn", "fan", in_channels=1, input_size=8), (1, 8, 8), "cnn")
