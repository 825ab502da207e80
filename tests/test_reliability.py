"""Bad input → one clear error line, non-zero exit, nothing half-written (docs/reliability.md lists every case)."""

import errno
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import quadexport as q
from quadexport.runs.atomicfile import atomic_write
from quadexport.runs.checkpoint import save_checkpoint
from quadexport.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real (tiny) trained run on digits."""
    from quadexport.training.loop import TrainConfig, train

    out = tmp_path_factory.mktemp("rel") / "mlp"
    train(TrainConfig(model="mlp", neuron="fan", dataset="digits", out=str(out), epochs=1, width=16,
                      train_subset=200), progress=False)
    return out


@pytest.fixture(scope="module")
def onnx_file(run_dir):
    path = run_dir.parent / "mlp.onnx"
    q.export(q.load(run_dir), path)
    return path


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _copy_run(run_dir, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(run_dir, dst)
    return dst


def test_truncated_checkpoint(run_dir, tmp_path, capsys):
    bad = _copy_run(run_dir, tmp_path)
    blob = (bad / "checkpoint.pt").read_bytes()
    (bad / "checkpoint.pt").write_bytes(blob[:1000])
    rc, _, err = _cli(capsys, "export", bad, tmp_path / "x.onnx")
    assert rc == 2 and "truncated or corrupt" in err and err.count("\n") == 1
    assert not (tmp_path / "x.onnx").exists()


def test_garbage_checkpoint(run_dir, tmp_path, capsys):
    bad = _copy_run(run_dir, tmp_path)
    (bad / "checkpoint.pt").write_bytes(os.urandom(4096))
    rc, _, err = _cli(capsys, "export", bad, tmp_path / "x.onnx")
    assert rc == 2 and "checkpoint" in err


def test_malicious_pickle_checkpoint_via_cli(tmp_path, capsys):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run = tmp_path / "evil"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(pickle.dumps({"format": "quadexport-run", "model": Evil()}))
    rc, _, err = _cli(capsys, "export", run, tmp_path / "x.onnx")
    assert rc == 2 and "not a safe" in err
    assert not marker.exists()


def test_checkpoint_from_other_version_or_model(run_dir, tmp_path, capsys):
    ck = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    newer = tmp_path / "newer"
    newer.mkdir()
    torch.save({**ck, "format_version": 99}, newer / "checkpoint.pt")
    rc, _, err = _cli(capsys, "export", newer, tmp_path / "x.onnx")
    assert rc == 2 and "format version 99" in err
    other = tmp_path / "other"
    other.mkdir()
    torch.save({**ck, "config": {**ck["config"], "name": "cnn"}}, other / "checkpoint.pt")
    rc, _, err = _cli(capsys, "export", other, tmp_path / "x.onnx")
    assert rc == 2 and "do not fit model cnn" in err
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    torch.save({**ck, "config": {**ck["config"], "neuron": "cubic"}}, unknown / "checkpoint.pt")
    rc, _, err = _cli(capsys, "export", unknown, tmp_path / "x.onnx")
    assert rc == 2 and "unknown neuron" in err


def test_malformed_and_truncated_onnx(run_dir, onnx_file, tmp_path, capsys):
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(onnx_file.read_bytes()[:500])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf" * 50)
    for bad in (trunc, garbage, tmp_path / "missing.onnx"):
        rc, _, err = _cli(capsys, "check", bad, run_dir)
        assert rc != 0 and str(bad.name) in err, err
        assert "Traceback" not in err


def test_onnx_from_another_model(run_dir, tmp_path, capsys):
    other = q.create_model("cnn", "fan", input_size=8)
    path = tmp_path / "cnn.onnx"
    q.export(other, path, input_shape=(1, 8, 8))
    rc, _, err = _cli(capsys, "check", path, run_dir)
    assert rc != 0


def test_bench_wrong_input_shape(run_dir, tmp_path, capsys):
    for shape in (["3", "8", "8"], ["8", "8"], ["a", "b"], ["0", "8", "8"]):
        rc, _, err = _cli(capsys, "bench", run_dir, "--input-shape", *shape, "--batch", "1", "--min-seconds",
                          "0.01", "--out", tmp_path / "b")
        assert rc != 0 and err.strip(), shape
        assert "Traceback" not in err


def test_nan_and_inf_inputs_are_reported_not_hidden(run_dir, onnx_file):
    import numpy as np

    from quadexport.check import compare
    from quadexport.exporter import make_session

    model = q.load(run_dir)
    x = torch.randn(4, 1, 8, 8)
    x[1, 0, 0, 0] = float("nan")
    x[2, 0, 0, 0] = float("inf")
    sess = make_session(onnx_file)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert not np.isfinite(got[1]).all() and not np.isfinite(ref[1]).all()
    res = compare(got, ref, rtol=1e-5)
    assert res["nan_inf"] > 0


@pytest.mark.parametrize("argv,msg", [
    (["train", "--dataset", "cifar100", "--out", "X"], "invalid choice"),
    (["train", "--epochs", "-3", "--out", "X"], "must be >= 1"),
    (["train", "--lr-ratio", "nan", "--out", "X"], "not a finite number"),
    (["train", "--lr", "inf", "--out", "X"], "not a finite number"),
    (["train", "--model", "vgg99", "--out", "X"], "unknown model"),
    (["train", "--neuron", "cubic", "--out", "X"], "unknown neuron"),
    (["bench", "resnet8", "--batch", "0"], "must be >= 1"),
    (["bench", "resnet8", "--min-seconds", "nan"], "not a finite number"),
    (["bench", "resnet8", "--warmup", "-1"], "must be >= 0"),
    (["check", "X.onnx", "X", "--rtol", "-1"], "must be a finite number >= 0"),
    (["compress", "X", "--out", "X2", "--prune-threshold", "-0.1"], "must be a finite number >= 0"),
    (["compress", "X", "--out", "X2", "--target-ratio", "0"], "must be a finite number > 0"),
])
def test_bad_cli_values(argv, msg, tmp_path, capsys):
    argv = [str(tmp_path / "out") if a == "X" else a for a in argv]
    try:
        rc, _, err = _cli(capsys, *argv)
    except SystemExit as e:  # argparse errors
        rc, err = e.code, capsys.readouterr().err
    assert rc == 2 and msg in err, err
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_opset_out_of_range(run_dir, tmp_path, capsys):
    for opset in ("7", "24"):
        with pytest.raises(SystemExit) as e:
            _cli(capsys, "export", run_dir, tmp_path / "x.onnx", "--opset", opset)
        assert e.value.code == 2 and "out of range" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_missing_dataset(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QUADEXPORT_MNIST_DIR", str(tmp_path / "nothing-here"))
    rc, _, err = _cli(capsys, "train", "--dataset", "mnist", "--epochs", "1", "--out", tmp_path / "r")
    assert rc == 2 and "tools/get-data.sh mnist" in err


def test_missing_kernel_library(onnx_file, run_dir, tmp_path, monkeypatch):
    from quadexport.exporter import export, make_session
    from quadexport.exporter.function import strip_functions

    import onnx

    fused = tmp_path / "fused.onnx"
    export(q.load(run_dir), fused, mode="fused")
    bare = tmp_path / "bare.onnx"
    onnx.save(strip_functions(onnx.load(str(fused))), str(bare))  # needs the kernel: no function bodies
    monkeypatch.setenv("QUADEXPORT_KERNEL_LIB", str(tmp_path / "no-such-lib.so"))
    with pytest.raises(FileNotFoundError, match="quadexport"):
        make_session(bare)


def test_unwritable_output_path(run_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc, _, err = _cli(capsys, "export", run_dir, blocker / "sub" / "m.onnx")
    assert rc == 2 and "a-file" in err
    rc, _, err = _cli(capsys, "train", "--epochs", "1", "--train-subset", "100", "--out", blocker / "run")
    assert rc == 2 and "a-file" in err


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text('{"ok": true}')

    def fail(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, fail)
    assert json.loads(target.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_real_disk_full_during_training(tmp_path):
    """A tiny tmpfs fills up while the run writes its checkpoint: clear error, no partial file (needs root)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        p = subprocess.run([sys.executable, "-m", "quadexport", "train", "--model", "cnn", "--dataset", "digits",
                            "--epochs", "1", "--train-subset", "100", "--out", str(mnt / "run")],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode != 0
        assert "No space left" in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
        leftovers = [x.name for x in (mnt / "run").iterdir()] if (mnt / "run").exists() else []
        assert "checkpoint.pt" not in leftovers and not [x for x in leftovers if x.endswith(".tmp")]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
