"""Faults in training: kill -9 then --resume, NaN/Inf guard, DDP with torchrun, CUDA path."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import quadexport as q
from quadexport.runs.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from quadexport.training.relinear import ReLinearConfig
from quadexport.training.loop import TrainConfig, TrainingDiverged, train

TRAIN = [sys.executable, "-m", "quadexport", "train", "--model", "cnn", "--width", "8", "--dataset", "digits",
         "--lr", "0.05", "--seed", "3"]


def _wait_for_epoch(run_dir, epoch, proc, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        m = run_dir / "metrics.json"
        if m.exists():
            try:
                if json.loads(m.read_text())["epochs"][-1]["epoch"] >= epoch:
                    return
            except (json.JSONDecodeError, KeyError, IndexError):
                pass
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.05)
    raise TimeoutError


@pytest.mark.slow
def test_kill9_mid_training_then_resume_matches_uninterrupted(tmp_path):
    epochs = "8"
    ref, run = tmp_path / "ref", tmp_path / "killed"
    subprocess.run([*TRAIN, "--epochs", epochs, "--out", str(ref)], check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen([*TRAIN, "--epochs", epochs, "--out", str(run)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for_epoch(run, 3, proc)
    time.sleep(0.15)  # into the next epoch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = read_checkpoint(run)["epoch"]
    assert 3 <= done < 8  # completed epochs survived the kill; the run was cut short
    r = subprocess.run([*TRAIN, "--epochs", epochs, "--out", str(run), "--resume"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    a, b = read_checkpoint(ref), read_checkpoint(run)
    assert b["epoch"] == 8
    ma, mb = json.loads((ref / "metrics.json").read_text()), json.loads((run / "metrics.json").read_text())
    assert [e["epoch"] for e in mb["epochs"]] == list(range(1, 9))
    # Documented tolerance (docs/reliability.md): same seed, same threads -> identical to 1e-5 relative.
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k].float(), a["model"][k].float(), rtol=1e-5, atol=1e-6)
    assert mb["test_acc"] == pytest.approx(ma["test_acc"], abs=1e-9)


def test_exploding_training_is_rolled_back_then_reported_and_never_saves_nan(tmp_path):
    cfg = TrainConfig(model="cnn", neuron="fan", dataset="digits", out=str(tmp_path / "boom"), epochs=2, lr=1e6,
                      train_subset=200, test_subset=50, width=8, max_rollbacks=2,
                      relinear=ReLinearConfig(mode="none", init="kaiming"))
    with pytest.raises(TrainingDiverged, match="diverged"):
        train(cfg, progress=False)
    ck = tmp_path / "boom" / "checkpoint.pt"
    if ck.exists():  # any checkpoint written before the blow-up holds finite weights only
        state = read_checkpoint(tmp_path / "boom")["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nan_weights_are_never_checkpointed(tmp_path):
    model = q.create_model("mlp", "fan", input_size=8)
    with torch.no_grad():
        model.fc1.g.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN"):
        save_checkpoint(tmp_path, model, {})
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "QUADEXPORT_DIST_BACKEND": "gloo", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                        "-m", "quadexport", "train", "--model", "cnn", "--width", "8", "--dataset", "digits",
                        "--epochs", "3", "--relinear", "sg", "--lr-ratio", "0.1", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("test accuracy") == 1  # rank 0 reports, rank 1 stays quiet
    ck = read_checkpoint(out)
    groups = {g["name"]: g for g in ck["optimizer"]["param_groups"]}
    assert groups["g"]["lr_ratio"] == pytest.approx(0.1) and groups["b"]["lr_ratio"] == pytest.approx(0.1)
    model = q.load(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 3 and metrics["test_acc"] > 0.5
    pytest.importorskip("quadexport.exporter")
    q.export(model, tmp_path / "ddp.onnx")
    import onnxruntime as ort
    from quadexport.data import load_dataset

    d = load_dataset("digits", test_subset=64)
    sess = ort.InferenceSession(str(tmp_path / "ddp.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: d.x_test.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(d.x_test), rtol=1e-4, atol=1e-4)


def test_cuda_training_path(tmp_path):
    if not torch.cuda.is_available():
        r = subprocess.run([*TRAIN, "--epochs", "1", "--device", "cuda", "--out", str(tmp_path / "c")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "no CUDA device" in r.stderr
        return
    cfg = TrainConfig(model="resnet8", neuron="fan", dataset="digits", out=str(tmp_path / "cuda"), epochs=2,
                      device="cuda", amp="bf16")
    metrics = train(cfg, progress=False)
    assert metrics["test_acc"] > 0.5
