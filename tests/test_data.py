"""Tests of quadexport.data: offline loaders, normalisation, subsets, error messages, safe CIFAR unpickling."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from quadexport.data import builtin as qd
from quadexport.data import Dataset, DatasetNotFoundError, install_hint, list_datasets, load_dataset

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FASHION_TRAIN_COUNTS = [6000] * 10
FASHION_TEST_COUNTS = [1000] * 10


# ---------------------------------------------------------------------------------------------- helpers


def _real(name: str) -> Dataset:
    """Full real dataset, or skip with the install hint when its files are not on disk."""
    try:
        return load_dataset(name)
    except DatasetNotFoundError as e:
        pytest.skip(f"{name} not installed: {e}")


def _real_idx_dir(name: str) -> Path:
    """Directory holding the real IDX files of ``name`` (skips when absent)."""
    directory = qd._resolve_dir(name, None)
    try:
        for f in qd._IDX_FILES:
            qd._find_idx_file(name, directory, f)
    except DatasetNotFoundError as e:
        pytest.skip(f"{name} not installed: {e}")
    return directory


def _idx_bytes(arr: np.ndarray) -> bytes:
    return struct.pack(">I", 0x0800 + arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_idx_dir(directory: Path, n_train: int = 30, n_test: int = 20, gz: bool = False) -> Path:
    """A tiny MNIST-format dataset (28x28, labels cycling 0..9) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for fname, arr in arrays.items():
        raw = _idx_bytes(arr)
        if gz:
            (directory / f"{fname}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / fname).write_bytes(raw)
    return directory


def _cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"training batch %d of 5" % seed,
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"img_%d.png" % i for i in range(n)]}


def _py2_pickle(obj: object) -> bytes:
    """Pickle ``obj`` the way Python 2's cPickle (protocol 2) wrote the real CIFAR-10 batches.

    Supports dict, list, int, bytes (a Python 2 ``str``) and uint8 numpy arrays, which is all a batch holds.
    """
    def s(b: bytes) -> bytes:  # Python 2 str
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    def enc(o: object) -> bytes:
        if isinstance(o, dict):
            return b"}(" + b"".join(enc(k) + enc(v) for k, v in o.items()) + b"u"
        if isinstance(o, list):
            return b"](" + b"".join(enc(v) for v in o) + b"e"
        if isinstance(o, bytes):
            return s(o)
        if isinstance(o, int):
            return i(o)
        assert isinstance(o, np.ndarray) and o.dtype == np.uint8 and o.ndim == 2
        dtype = b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R" + b"(" + i(3) + s(b"|") + b"NNN" \
            + i(-1) + i(-1) + i(0) + b"tb"
        shape = i(o.shape[0]) + i(o.shape[1]) + b"\x86"
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
                + b"(" + i(1) + shape + dtype + b"\x89" + s(o.tobytes()) + b"tb")

    return b"\x80\x02" + enc(obj) + b"."


def _write_cifar_dir(directory: Path, sizes: tuple[int, ...] = (4, 3, 2, 3, 4, 5), py2: bool = False) -> list[dict]:
    """Fake ``cifar-10-batches-py`` with real-format batches (5 train + test); returns the batch dicts."""
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    batches = [_cifar_batch(n, seed) for seed, n in enumerate(sizes)]
    for fname, batch in zip(names, batches):
        with open(directory / fname, "wb") as f:
            if py2:
                f.write(_py2_pickle(batch))
            else:
                pickle.dump(batch, f, protocol=2)
    return batches


class _ShellCommand:
    """Unpickling this runs a shell command: the classic malicious pickle."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


# ---------------------------------------------------------------------------------------------- registry


def test_list_datasets():
    assert list_datasets() == ["cifar10", "digits", "fashion-mnist", "mnist"]


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="cifar10, digits, fashion-mnist, mnist"):
        load_dataset("svhn")


def test_install_hints_name_the_command():
    assert "sudo apt-get install dataset-fashion-mnist" in install_hint("fashion-mnist")
    assert "bash tools/get-data.sh mnist" in install_hint("mnist")
    assert "scikit-learn" in install_hint("digits")
    assert "cifar-10-batches-py" in install_hint("cifar10") and "QUADEXPORT_CIFAR10_DIR" in install_hint("cifar10")


# ---------------------------------------------------------------------------------------------- real loaders


def test_digits():
    d = load_dataset("digits")
    assert (d.name, d.num_classes, d.input_shape) == ("digits", 10, (1, 8, 8))
    assert d.x_train.shape == (1437, 1, 8, 8) and d.x_test.shape == (360, 1, 8, 8)
    assert d.x_train.dtype == d.x_test.dtype == torch.float32
    assert d.y_train.dtype == d.y_test.dtype == torch.int64
    assert sorted(d.y_train.unique().tolist()) == list(range(10))
    assert abs(d.x_train.mean().item()) < 0.01 and abs(d.x_train.std().item() - 1) < 0.01
    # values are (x/16 - mean)/std of the 0..16 pixel counts
    raw = d.x_train * d.std + d.mean
    assert torch.allclose(raw * 16, (raw * 16).round(), atol=1e-4) and raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6


def test_digits_split_is_fixed_and_stratified():
    a, b = load_dataset("digits"), load_dataset("digits", data_dir="/nonexistent")  # data_dir ignored
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    n_test, n_train = a.y_test.bincount(minlength=10).float(), a.y_train.bincount(minlength=10)
    frac = n_test / (n_train + n_test)
    assert ((frac - 0.2).abs() < 0.02).all()


@pytest.mark.parametrize("name, train_counts, test_counts", [
    ("fashion-mnist", FASHION_TRAIN_COUNTS, FASHION_TEST_COUNTS),
    ("mnist", MNIST_TRAIN_COUNTS, MNIST_TEST_COUNTS),
])
def test_mnist_family(name, train_counts, test_counts):
    d = _real(name)
    assert (d.name, d.num_classes, d.input_shape) == (name, 10, (1, 28, 28))
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.y_train.bincount().tolist() == train_counts and d.y_test.bincount().tolist() == test_counts
    assert abs(d.x_train.mean().item()) < 0.01 and abs(d.x_train.std().item() - 1) < 0.01
    lo, hi = -d.mean / d.std, (1 - d.mean) / d.std
    assert d.x_train.min().item() == pytest.approx(lo, abs=1e-5)
    assert d.x_train.max().item() == pytest.approx(hi, abs=1e-5)


def test_repeated_load_uses_cache():
    _real_idx_dir("mnist")
    kw = dict(train_subset=100, test_subset=50)
    hits = qd._read_idx_cached.cache_info().hits
    a, b = load_dataset("mnist", **kw), load_dataset("mnist", **kw)
    assert qd._read_idx_cached.cache_info().hits >= hits + 4
    assert torch.equal(a.x_test, b.x_test)
    a.x_test += 1  # tensors are copies: the cache is untouched
    assert torch.equal(load_dataset("mnist", **kw).x_test, b.x_test)


# ---------------------------------------------------------------------------------------------- subsets


def test_subsets_deterministic_and_stratified():
    full = load_dataset("digits")
    a = load_dataset("digits", train_subset=200, test_subset=50, seed=1)
    b = load_dataset("digits", train_subset=200, test_subset=50, seed=1)
    c = load_dataset("digits", train_subset=200, test_subset=50, seed=2)
    assert a.x_train.shape == (200, 1, 8, 8) and a.x_test.shape == (50, 1, 8, 8)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, c.y_train) or not torch.equal(a.x_train, c.x_train)
    for sub, ref in ((a.y_train, full.y_train), (a.y_test, full.y_test)):
        expect = ref.bincount(minlength=10).double() * len(sub) / len(ref)
        assert ((sub.bincount(minlength=10).double() - expect).abs() < 1).all()
    # every subset row is a row of the full split
    rows = {tuple(r) for r in full.x_train.flatten(1).tolist()}
    assert all(tuple(r) in rows for r in a.x_train.flatten(1).tolist())


def test_subset_smaller_than_class_count_and_at_most_full_size():
    assert len(load_dataset("digits", train_subset=3).y_train.unique()) == 3
    assert len(load_dataset("digits", train_subset=1437).y_train) == 1437
    assert len(load_dataset("digits", train_subset=5000).y_train) == 1437  # "at most n"


@pytest.mark.parametrize("bad", [0, -5, 2.5, "10", True])
def test_subset_size_validated(bad):
    with pytest.raises(ValueError, match="subset size"):
        load_dataset("digits", train_subset=bad)


def test_stratified_indices_proportions():
    labels = np.repeat(np.arange(3), [500, 300, 200])
    idx = qd._stratified_indices(labels, 10, seed=0)
    assert np.bincount(labels[idx]).tolist() == [5, 3, 2]
    assert len(np.unique(idx)) == 10 and np.all(np.diff(idx) > 0)


# ---------------------------------------------------------------------------------------------- missing files


@pytest.mark.parametrize("name, command", [
    ("fashion-mnist", "sudo apt-get install dataset-fashion-mnist"),
    ("mnist", "bash tools/get-data.sh mnist"),
    ("cifar10", "cifar-10-batches-py"),
])
def test_missing_dir_raises_with_install_command(tmp_path, name, command):
    with pytest.raises(DatasetNotFoundError) as exc:
        load_dataset(name, data_dir=tmp_path / "nowhere")
    assert isinstance(exc.value, FileNotFoundError)
    assert command in str(exc.value) and str(tmp_path / "nowhere") in str(exc.value)


def test_missing_file_in_existing_dir(tmp_path, monkeypatch):
    d = _write_idx_dir(tmp_path / "mnist")
    (d / "t10k-labels-idx1-ubyte").unlink()
    monkeypatch.setenv("QUADEXPORT_MNIST_DIR", str(d))  # env var is honoured
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte.*bash tools/get-data.sh mnist"):
        load_dataset("mnist")


def test_cifar_without_dir(monkeypatch):
    monkeypatch.delenv("QUADEXPORT_CIFAR10_DIR", raising=False)
    with pytest.raises(DatasetNotFoundError, match="QUADEXPORT_CIFAR10_DIR"):
        load_dataset("cifar10")


# ---------------------------------------------------------------------------------------------- IDX format


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dir_plain_and_gz(tmp_path, gz):
    d = load_dataset("fashion-mnist", data_dir=_write_idx_dir(tmp_path / "f", gz=gz))
    assert d.x_train.shape == (30, 1, 28, 28) and d.x_test.shape == (20, 1, 28, 28)
    assert d.y_train.tolist() == [i % 10 for i in range(30)]


def test_idx_npm_layout_accepted(tmp_path):
    _write_idx_dir(tmp_path / "package" / "data")
    assert load_dataset("mnist", data_dir=tmp_path).x_train.shape == (30, 1, 28, 28)


def test_truncated_real_idx_file(tmp_path):
    src = _real_idx_dir("mnist")
    for f in qd._IDX_FILES:
        found = qd._find_idx_file("mnist", src, f)
        if f == "t10k-images-idx3-ubyte":
            data = found.read_bytes()
            (tmp_path / f).write_bytes(data[: len(data) // 2])
        else:
            (tmp_path / f).symlink_to(found)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: truncated IDX file"):
        load_dataset("mnist", data_dir=tmp_path)


def test_truncated_real_gz_file(tmp_path):
    src = _real_idx_dir("fashion-mnist")
    for f in qd._IDX_FILES:
        found = qd._find_idx_file("fashion-mnist", src, f)
        if f == "train-labels-idx1-ubyte":
            data = found.read_bytes()
            (tmp_path / found.name).write_bytes(data[: len(data) - 100])
        else:
            (tmp_path / found.name).symlink_to(found)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz: corrupt or truncated gzip"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_bad_magic_and_mismatched_counts(tmp_path):
    d = _write_idx_dir(tmp_path / "a")
    labels = d / "train-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x08\x03" + labels.read_bytes()[4:])
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: bad IDX magic number 0x00000803"):
        load_dataset("mnist", data_dir=d)
    d = _write_idx_dir(tmp_path / "b")
    (d / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(29, np.uint8)))
    with pytest.raises(ValueError, match="30 images but .* 29 labels"):
        load_dataset("mnist", data_dir=d)
    d = _write_idx_dir(tmp_path / "c")
    (d / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.full(20, 10, np.uint8)))
    with pytest.raises(ValueError, match="label 10 out of range"):
        load_dataset("mnist", data_dir=d)


# ---------------------------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("py2", [False, True], ids=["py3-protocol2", "py2-cpickle"])
def test_fake_cifar_dir_loads(tmp_path, py2):
    batches = _write_cifar_dir(tmp_path / "cifar-10-batches-py", py2=py2)
    d = load_dataset("cifar10", data_dir=tmp_path)  # parent of cifar-10-batches-py is accepted too
    assert (d.num_classes, d.input_shape) == (10, (3, 32, 32))
    assert d.x_train.shape == (16, 3, 32, 32) and d.x_test.shape == (5, 3, 32, 32)
    assert d.y_train.dtype == torch.int64 and d.y_train.tolist() == sum((b[b"labels"] for b in batches[:5]), [])
    assert d.y_test.tolist() == batches[5][b"labels"]
    # row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32x32; per-channel normalisation
    raw = batches[0][b"data"][0].reshape(3, 32, 32).astype(np.float32) / 255
    mean, std = np.array(d.mean).reshape(3, 1, 1), np.array(d.std).reshape(3, 1, 1)
    np.testing.assert_allclose(d.x_train[0].numpy(), (raw - mean) / std, rtol=1e-5, atol=1e-5)


def test_cifar_env_var_and_subset(tmp_path, monkeypatch):
    _write_cifar_dir(tmp_path / "c", sizes=(10, 10, 10, 10, 10, 10))
    monkeypatch.setenv("QUADEXPORT_CIFAR10_DIR", str(tmp_path / "c"))
    d = load_dataset("cifar10", train_subset=7, test_subset=4, seed=5)
    assert d.x_train.shape == (7, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)


@pytest.mark.parametrize("nested", [False, True])
def test_malicious_cifar_pickle_refused(tmp_path, nested):
    marker = tmp_path / "pwned"
    evil = _ShellCommand(f"touch {marker}")
    # control: an unrestricted unpickler does run the command
    pickle.loads(pickle.dumps(_ShellCommand(f"touch {tmp_path / 'control'}"), protocol=2))
    assert (tmp_path / "control").exists()

    d = tmp_path / "cifar-10-batches-py"
    _write_cifar_dir(d)
    payload = dict(_cifar_batch(4, 0), extra=evil) if nested else evil  # after genuine numpy globals, or alone
    (d / "data_batch_1").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_1: .*refused global (posix|os)\.system"):
        load_dataset("cifar10", data_dir=d)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    pickle.dumps({b"data": shutil.rmtree}, protocol=2),  # any other global is refused, even from stdlib
    b"\x80\x02cbuiltins\neval\nX\x08\x00\x00\x00__file__\x85R.",
    b"\x80\x02cnumpy\nload\nX\x01\x00\x00\x00x\x85R.",  # allowed module, other name
], ids=["shutil.rmtree", "builtins.eval", "numpy.load"])
def test_other_globals_refused(tmp_path, payload):
    d = tmp_path / "c"
    _write_cifar_dir(d)
    (d / "test_batch").write_bytes(payload)
    with pytest.raises(ValueError, match="test_batch: .*refused global"):
        load_dataset("cifar10", data_dir=d)


def test_corrupt_cifar_batches(tmp_path):
    d = tmp_path / "c"
    _write_cifar_dir(d)
    good = (d / "data_batch_3").read_bytes()
    (d / "data_batch_3").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="data_batch_3: cannot load CIFAR batch"):
        load_dataset("cifar10", data_dir=d)
    (d / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, protocol=2))
    with pytest.raises(ValueError, match="data_batch_3: CIFAR batch has no 'labels'"):
        load_dataset("cifar10", data_dir=d)
    (d / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"data_batch_3: 'data' is uint8 \(2, 100\)"):
        load_dataset("cifar10", data_dir=d)


def test_cifar_missing_batch(tmp_path):
    d = tmp_path / "c"
    _write_cifar_dir(d)
    (d / "data_batch_5").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_5 not found"):
        load_dataset("cifar10", data_dir=d)


# ---------------------------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("name, scale", [("digits", 1 / 16), ("mnist", 1 / 255), ("fashion-mnist", 1 / 255),
                                         ("cifar10", 1 / 255)])
def test_builtin_preprocessing_declares_scale(name, scale):
    from quadexport.data import builtin_preprocessing
    from quadexport.data.preprocess import preprocessing_metadata

    p = builtin_preprocessing(name)
    assert p.scale == scale and len(p.mean) == len(p.std) == p.channels and len(p.class_names) == 10
    props = preprocessing_metadata(p)
    assert float(props["quadexport.input_scale"]) == scale and props["quadexport.input"] == "normalized"
    assert json.loads(props["quadexport.preprocessing"])["scale"] == scale
    assert all(isinstance(v, str) for v in props.values())


def test_raw_input_is_bitwise_the_training_normalisation():
    from quadexport.data import builtin_preprocessing
    from quadexport.data.preprocess import RawInput

    x_raw = qd._digits_raw()[2]
    d = load_dataset("digits")
    wrapped = RawInput(torch.nn.Identity(), builtin_preprocessing("digits"))
    assert torch.equal(wrapped(torch.from_numpy(x_raw.copy())), d.x_test)  # uint8 in
    assert torch.equal(wrapped(torch.from_numpy(x_raw.astype(np.float32))), d.x_test)  # float 0-16 in
    assert wrapped.quadexport_meta["input"] == "raw"


def test_preprocessing_round_trips_and_validates():
    from quadexport.errors import QuadexportError, UsageError
    from quadexport.data.preprocess import Preprocessing

    p = Preprocessing(channels=3, size=(4, 5), scale=1 / 255, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6),
                      class_names=("a", "b"), test_split="val/", resize="PIL bilinear")
    assert Preprocessing.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert p.input_shape == (3, 4, 5) and p.color_mode == "RGB"
    with pytest.raises(UsageError, match="--mean needs 3 value"):
        Preprocessing(channels=3, size=(4, 4), scale=1.0, mean=(0.5,), std=(1, 1, 1))
    with pytest.raises(QuadexportError, match="--std values must be > 0"):
        Preprocessing(channels=1, size=(4, 4), scale=1.0, mean=0.5, std=0.0)


def test_run_preprocessing_of_an_old_run_uses_the_builtin():
    from quadexport.data import parse_dataset_spec, run_preprocessing
    from quadexport.errors import UsageError

    p = run_preprocessing({"dataset": "fashion-mnist", "train_config": {"test_subset": 100, "seed": 3}})
    assert p.scale == 1 / 255 and p.class_names[0] == "T-shirt/top" and "at most 100 (seed 3)" in p.test_split
    assert run_preprocessing({"preprocessing": p.to_dict()}) == p
    assert parse_dataset_spec("Fashion_MNIST").target == "fashion-mnist"
    assert parse_dataset_spec("npz:/a:b.npz").target == "/a:b.npz"
    with pytest.raises(UsageError, match="did you mean 'digits'"):
        parse_dataset_spec("digit")


# ---------------------------------------------------------------------------------------------- imagefolder: / npz:


def _png_folder(root: Path, splits=("train", "val"), classes=("a", "b"), n: int = 3, size=(6, 5),
                mode: str = "L") -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for c, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (size[0], size[1]) if mode == "L" else (size[0], size[1], 3)
                px = rng.integers(0, 120, shape) + 100 * c
                Image.fromarray(px.astype(np.uint8), mode=mode).save(root / split / cls / f"{i}.png")
    return root


def test_imagefolder_streams_normalised_images(tmp_path):
    from quadexport.data import DataOptions, open_dataset
    from quadexport.data.preprocess import normalise

    root = _png_folder(tmp_path / "f")
    src = open_dataset(f"imagefolder:{root}", DataOptions(workers=0))
    p = src.preprocessing
    assert (src.num_classes, len(src.train), len(src.test), src.input_shape) == (2, 6, 6, (1, 6, 5))
    assert p.class_names == ("a", "b") and p.resize is None
    x = torch.stack([src.train[i][0] for i in range(len(src.train))])
    assert x.mean().item() == pytest.approx(0, abs=1e-5) and x.std(unbiased=False).item() == pytest.approx(1, 1e-4)
    from PIL import Image

    raw = torch.from_numpy(np.asarray(Image.open(root / "val" / "b" / "2.png"), dtype=np.uint8).copy())[None]
    assert torch.equal(src.test[5][0], normalise(raw, p)) and src.test[5][1] == 1


def test_imagefolder_colour_resize_and_given_constants(tmp_path):
    from quadexport.data import DataOptions, open_dataset

    root = _png_folder(tmp_path / "f", mode="RGB")
    from PIL import Image

    Image.new("RGB", (9, 7)).save(root / "train" / "a" / "odd.png")  # another size
    with pytest.raises(ValueError, match="2 different sizes .* pass --image-size"):
        open_dataset(f"imagefolder:{root}", DataOptions(workers=0))
    opts = DataOptions(workers=0, image_size=(4, 4), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    src = open_dataset(f"imagefolder:{root}", opts)
    assert src.input_shape == (3, 4, 4) and src.preprocessing.resize == "PIL bilinear"
    assert src.train[0][0].shape == (3, 4, 4) and src.preprocessing.mean == (0.5, 0.5, 0.5)


def test_imagefolder_errors(tmp_path):
    from quadexport.data import DataOptions, open_dataset
    from quadexport.errors import QuadexportError, UsageError

    opts = DataOptions(workers=0)
    with pytest.raises(DatasetNotFoundError, match="no train/ folder"):
        open_dataset(f"imagefolder:{tmp_path}", opts)
    empty = _png_folder(tmp_path / "empty")
    (empty / "train" / "c").mkdir()
    with pytest.raises(UsageError, match=r"class folder .*train/c has no images"):
        open_dataset(f"imagefolder:{empty}", opts)
    mismatch = _png_folder(tmp_path / "mismatch")
    _png_folder(tmp_path / "mismatch", splits=("train",), classes=("z",))
    with pytest.raises(UsageError, match=r"class folders differ .*only in train: \['z'\]; only in val: none"):
        open_dataset(f"imagefolder:{mismatch}", opts)
    bad = _png_folder(tmp_path / "bad")
    (bad / "val" / "b" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(UsageError, match=r"val/b/broken.png: not a readable image"):
        open_dataset(f"imagefolder:{bad}", opts)
    assert issubclass(DatasetNotFoundError, QuadexportError) and issubclass(DatasetNotFoundError, FileNotFoundError)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW", "NHW"])
def test_npz_layouts_give_the_same_data(tmp_path, layout):
    from quadexport.data import DataOptions, open_dataset

    rng = np.random.default_rng(0)
    x_nchw = {s: rng.integers(0, 256, (n, 1, 5, 6), dtype=np.uint8) for s, n in (("train", 20), ("test", 8))}
    conv = {"NCHW": lambda a: a, "NHWC": lambda a: a.transpose(0, 2, 3, 1), "NHW": lambda a: a[:, 0]}[layout]
    np.savez(tmp_path / "d.npz", x_train=conv(x_nchw["train"]), y_train=np.arange(20) % 4,
             x_test=conv(x_nchw["test"]), y_test=np.arange(8) % 4)
    src = open_dataset(f"npz:{tmp_path / 'd.npz'}", DataOptions(train_subset=12, seed=1))
    p = src.preprocessing
    assert src.input_shape == (1, 5, 6) and src.num_classes == 4 and len(src.train) == 12 and len(src.test) == 8
    assert p.scale == 1 / 255 and p.mean[0] == pytest.approx(x_nchw["train"].mean() / 255)
    expected = (torch.from_numpy(x_nchw["test"]).float() / 255 - p.mean[0]) / p.std[0]
    got = torch.stack([src.test[i][0] for i in range(8)])
    assert torch.allclose(got, expected, atol=1e-5)


def test_npz_float_images_and_errors(tmp_path):
    from quadexport.data import DataOptions, open_dataset
    from quadexport.errors import UsageError

    x = np.random.default_rng(0).normal(size=(10, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "f.npz", x_train=x, y_train=np.arange(10) % 2, x_test=x[:4], y_test=np.arange(4) % 2,
             class_names=np.array(["cat", "dog"]))
    p = open_dataset(f"npz:{tmp_path / 'f.npz'}", DataOptions()).preprocessing
    assert p.scale == 1.0 and p.channels == 3 and p.class_names == ("cat", "dog")
    np.savez(tmp_path / "amb.npz", x_train=np.zeros((4, 3, 5, 3), np.uint8), y_train=np.zeros(4, int),
             x_test=np.zeros((2, 3, 5, 3), np.uint8), y_test=np.zeros(2, int))
    with pytest.raises(UsageError, match="NHWC and NCHW cannot be told apart"):
        open_dataset(f"npz:{tmp_path / 'amb.npz'}")
    np.savez(tmp_path / "part.npz", x_train=x)
    with pytest.raises(UsageError, match="lacks y_train, x_test, y_test"):
        open_dataset(f"npz:{tmp_path / 'part.npz'}")
    with pytest.raises(DatasetNotFoundError, match="no file"):
        open_dataset(f"npz:{tmp_path / 'none.npz'}")
