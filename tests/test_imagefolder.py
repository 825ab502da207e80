"""End to end with your own images: digits written as PNG files, trained through ``imagefolder:``, exported with
:class:`~quadexport.data.preprocess.RawInput`, and the run's test accuracy reproduced from the PNG files by a process that
only has onnxruntime, PIL and numpy (it never imports quadexport)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DEPLOY = r'''
import json, sys
from pathlib import Path
import numpy as np
import onnxruntime as ort
from PIL import Image

def accuracy(model, root):
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    mode, (h, w) = meta["quadexport.input_color"], map(int, meta["quadexport.input_size"].split("x"))
    classes = json.loads(meta["quadexport.class_names"])
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for f in sorted((Path(root) / cls).glob("*.png")):
            img = Image.open(f).convert(mode)
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            a = np.asarray(img, dtype=np.float32)
            xs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
            ys.append(label)
    logits = sess.run(None, {sess.get_inputs()[0].name: np.stack(xs)})[0]
    return float((logits.argmax(1) == np.array(ys)).mean()), meta["quadexport.input"]

raw_acc, kind = accuracy(sys.argv[1], sys.argv[3])
plain_acc, plain_kind = accuracy(sys.argv[2], sys.argv[3])
assert not any(m.startswith("quadexport") for m in sys.modules)
print(json.dumps({"raw_acc": raw_acc, "kind": kind, "plain_acc": plain_acc, "plain_kind": plain_kind}))
'''


def write_digits_folder(root: Path, n_train: int = 300, n_test: int = 100) -> Path:
    """Digits (0-16) as 8x8 greyscale PNGs (0-255): ``root/train/<digit>/*.png`` and ``root/val/<digit>/*.png``."""
    from PIL import Image

    from quadexport.data.builtin import _digits_raw, _stratified_indices

    x_tr, y_tr, x_te, y_te = _digits_raw()
    for split, x, y, n in (("train", x_tr, y_tr, n_train), ("val", x_te, y_te, n_test)):
        for i in _stratified_indices(y, n, seed=0):
            d = root / split / str(y[i])
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(x[i, 0] * (255 / 16)).astype(np.uint8), mode="L").save(d / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    from quadexport.training.loop import TrainConfig, train

    tmp = tmp_path_factory.mktemp("imagefolder")
    root = write_digits_folder(tmp / "digits-png")
    cfg = TrainConfig(model="cnn", neuron="fan", dataset=f"imagefolder:{root}", out=str(tmp / "run"), epochs=2,
                      lr=0.05, batch_size=32)
    metrics = train(cfg, progress=False, plot=False)
    return root, tmp / "run", metrics


def test_imagefolder_run_records_preprocessing(folder_run):
    root, run, metrics = folder_run
    cfg = json.loads((run / "config.json").read_text())
    prep = cfg["preprocessing"]
    assert prep["channels"] == 1 and prep["size"] == [8, 8] and prep["scale"] == pytest.approx(1 / 255)
    assert prep["class_names"] == [str(d) for d in range(10)] and prep["resize"] is None
    assert "val/" in prep["test_split"] and prep["source"] == f"imagefolder:{root}"
    # mean/std were computed on the training PNGs: digits' own constants, up to 8-bit rounding of the pixels
    assert prep["mean"][0] == pytest.approx(0.3054, abs=0.02) and prep["std"][0] == pytest.approx(0.3761, abs=0.02)
    assert metrics["test_acc"] > 0.5  # it learned from the files


def test_raw_input_onnx_reproduces_accuracy_from_png_files(folder_run, tmp_path):
    import quadexport
    from quadexport.data import run_preprocessing
    from quadexport.data.preprocess import RawInput, preprocessing_metadata

    root, run, metrics = folder_run
    model = quadexport.load(run)
    prep = run_preprocessing(model.quadexport_meta)
    raw = quadexport.export(RawInput(model, prep), tmp_path / "raw.onnx",
                            metadata=preprocessing_metadata(prep, raw_input=True))
    plain = quadexport.export(model, tmp_path / "plain.onnx", metadata=preprocessing_metadata(prep))
    script = tmp_path / "deploy.py"
    script.write_text(DEPLOY)
    out = subprocess.run([sys.executable, "-I", str(script), str(raw), str(plain), str(root / "val")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["kind"] == "raw" and res["plain_kind"] == "normalized"
    assert abs(res["raw_acc"] - metrics["test_acc"]) <= 0.01  # at most one of 100 images flips
    assert res["plain_acc"] < metrics["test_acc"] - 0.2  # the bug this fixes: raw pixels into the plain model


def test_cli_flags_reach_the_run(tmp_path, capsys):
    from PIL import Image

    from quadexport.cli import main

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / "f" / split / cls).mkdir(parents=True)
            for i in range(6):  # colour images of two sizes: --image-size is needed
                size = (7, 5) if i % 2 else (9, 9)
                px = rng.integers(0, 256, (*size, 3)).astype(np.uint8)
                Image.fromarray(px, mode="RGB").save(tmp_path / "f" / split / cls / f"{i}.png")
    args = ["train", "--model", "mlp", "--dataset", f"imagefolder:{tmp_path / 'f'}", "--epochs", "1",
            "--out", str(tmp_path / "run")]
    assert main(args) == 2 and "pass --image-size" in capsys.readouterr().err
    assert main([*args, "--image-size", "6x4", "--mean", "0.5,0.5,0.5", "--std", "0.2"]) == 2
    assert "--std needs 3 value(s)" in capsys.readouterr().err
    assert main([*args, "--image-size", "6x4", "--mean", "0.5,0.4,0.3", "--std", "0.2,0.2,0.2"]) == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["image_size"] == [6, 4] and cfg["mean"] == [0.5, 0.4, 0.3]
    p = cfg["preprocessing"]
    assert (p["channels"], p["size"], p["mean"], p["resize"]) == (3, [6, 4], [0.5, 0.4, 0.3], "PIL bilinear")
    assert p["class_names"] == ["cat", "dog"] and "test/" in p["test_split"]


def test_open_run_dataset_reproduces_accuracy_in_torch(folder_run):
    import torch

    import quadexport
    from quadexport.data import open_run_dataset, run_preprocessing
    from quadexport.data.preprocess import RawInput, denormalise
    from quadexport.training.loop import evaluate_batches

    _, run, metrics = folder_run
    model = quadexport.load(run)
    src = open_run_dataset(model.quadexport_meta, workers=0)
    assert src.preprocessing == run_preprocessing(model.quadexport_meta)  # stored stats reused, not recomputed
    assert evaluate_batches(model, src.loader("test", 64), torch.device("cpu"))[1] == metrics["test_acc"]
    x = torch.stack([src.test[i][0] for i in range(len(src.test))])
    raw = denormalise(x, src.preprocessing)
    assert torch.allclose(raw, raw.round(), atol=1e-3) and 0 <= raw.min() and raw.max() <= 255
    with torch.no_grad():
        assert torch.equal(RawInput(model, src.preprocessing)(raw.round()).argmax(1), model(x).argmax(1))
