"""Training on real data (digits): accuracy, metrics schema, checkpoints, determinism, resume, warm start."""

import json
import math
import subprocess
import sys

import pytest
import torch

import quadexport as q
from quadexport.runs.checkpoint import CheckpointError, read_checkpoint
from quadexport.training.relinear import ReLinearConfig
from quadexport.training.loop import TrainConfig, train

EPOCH_KEYS = {"epoch", "train_loss", "test_loss", "test_acc", "norm_wg", "norm_wb", "seconds"}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "cnn-fan"
    cfg = TrainConfig(model="cnn", neuron="fan", dataset="digits", out=str(out), epochs=15, lr=0.05,
                      relinear=ReLinearConfig(mode="sg", lr_ratio_g=1e-2, lr_ratio_b=1e-2))
    metrics = train(cfg, progress=False)
    return out, metrics


def test_quadratic_cnn_reaches_95_percent_on_digits(digits_run):
    out, metrics = digits_run
    assert metrics["test_acc"] >= 0.95
    # the quadratic terms were actually trained (sg ratio 1e-2, not frozen)
    last = metrics["epochs"][-1]
    assert last["norm_wg"] > 0 and last["norm_wb"] > 0


def test_run_dir_contents_and_metrics_schema(digits_run):
    out, metrics = digits_run
    for f in ("checkpoint.pt", "metrics.json", "config.json", "curves.png"):
        assert (out / f).is_file(), f
    saved = json.loads((out / "metrics.json").read_text())
    assert len(saved["epochs"]) == 15 and saved["test_acc"] == metrics["test_acc"]
    for row in saved["epochs"]:
        assert EPOCH_KEYS <= set(row)
        assert all(math.isfinite(row[k]) for k in EPOCH_KEYS)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*tmp"))


def test_load_returns_eval_model_with_meta(digits_run):
    from quadexport.data import load_dataset

    out, metrics = digits_run
    model = q.load(out)
    assert not model.training
    assert model.quadexport_config["name"] == "cnn" and model.quadexport_config["neuron"] == "fan"
    assert model.quadexport_meta["input_shape"] == [1, 8, 8] and model.quadexport_meta["num_classes"] == 10
    d = load_dataset("digits")
    with torch.no_grad():
        acc = (model(d.x_test).argmax(1) == d.y_test).float().mean().item()
    assert acc == pytest.approx(metrics["test_acc"], abs=1e-6)
    ck = torch.load(out / "checkpoint.pt", weights_only=True)  # plain tensors and values only
    assert ck["config"]["neuron"] == "fan"


def _cfg(tmp_path, name, **kw):
    base = dict(model="cnn", neuron="fan", dataset="digits", out=str(tmp_path / name), epochs=3, lr=0.05,
                train_subset=400, test_subset=120, width=8)
    base.update(kw)
    return TrainConfig(**base)


def test_seeded_training_is_deterministic(tmp_path):
    a = train(_cfg(tmp_path, "a"), progress=False)
    b = train(_cfg(tmp_path, "b"), progress=False)
    assert [e["train_loss"] for e in a["epochs"]] == [e["train_loss"] for e in b["epochs"]]
    sa, sb = read_checkpoint(tmp_path / "a")["model"], read_checkpoint(tmp_path / "b")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_matches_uninterrupted_run(tmp_path):
    full = train(_cfg(tmp_path, "full", epochs=4), progress=False)
    first = train(_cfg(tmp_path, "part", epochs=4), progress=False, stop_after=2)
    assert [e["epoch"] for e in first["epochs"]] == [1, 2]
    resumed = train(_cfg(tmp_path, "part", epochs=4), resume=True, progress=False)
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3, 4]
    assert resumed["epochs"][-1]["train_loss"] == pytest.approx(full["epochs"][-1]["train_loss"], rel=1e-6)
    sa, sb = read_checkpoint(tmp_path / "full")["model"], read_checkpoint(tmp_path / "part")["model"]
    assert all(torch.allclose(sa[k].float(), sb[k].float(), rtol=1e-5, atol=1e-6) for k in sa)


def test_resume_refuses_other_settings(tmp_path):
    train(_cfg(tmp_path, "r", epochs=1), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        train(_cfg(tmp_path, "r", epochs=2, lr=0.2), resume=True, progress=False)


def test_warm_start_from_relu_run_starts_at_relu_accuracy(tmp_path):
    from quadexport.data import load_dataset
    from quadexport.training.loop import build_model

    relu_cfg = _cfg(tmp_path, "relu", neuron="relu", relinear=ReLinearConfig(mode="none"))
    train(relu_cfg, progress=False)
    relu = q.load(tmp_path / "relu")
    d = load_dataset("digits", test_subset=120)
    quad = build_model(_cfg(tmp_path, "q", warm_start=str(tmp_path / "relu")), d.num_classes, d.input_shape).eval()
    with torch.no_grad():
        assert torch.equal(quad(d.x_test), relu(d.x_test))
    with pytest.raises(ValueError, match="ReLU run"):
        build_model(_cfg(tmp_path, "q3", warm_start=str(_quad_run(tmp_path))), d.num_classes, d.input_shape)


def _quad_run(tmp_path):
    out = tmp_path / "quad-src"
    if not (out / "checkpoint.pt").exists():
        train(_cfg(tmp_path, "quad-src", epochs=1), progress=False)
    return out


def test_cli_train_end_to_end(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "quadexport", "train", "--model", "mlp", "--neuron", "compact",
                        "--dataset", "digits", "--epochs", "2", "--relinear", "sg", "--lr-ratio", "1e-2",
                        "--train-subset", "300", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout
    assert json.loads((out / "metrics.json").read_text())["epochs"][-1]["epoch"] == 2


@pytest.mark.parametrize("args,msg", [
    (["--epochs", "-1"], "must be >= 1"),
    (["--lr-ratio", "nan"], "not a finite number"),
    (["--model", "resnet21"], "unknown model"),
    (["--neuron", "cubic"], "unknown neuron"),
])
def test_cli_rejects_bad_values(tmp_path, args, msg):
    r = subprocess.run([sys.executable, "-m", "quadexport", "train", "--out", str(tmp_path / "x"), *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and msg in r.stderr, r.stderr
    assert not (tmp_path / "x" / "checkpoint.pt").exists()


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path, digits_run):
    out, _ = digits_run
    blob = (out / "checkpoint.pt").read_bytes()
    bad = tmp_path / "trunc"
    bad.mkdir()
    (bad / "checkpoint.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        q.load(bad)
    other = tmp_path / "other"
    other.mkdir()
    torch.save({"weights": torch.zeros(3)}, other / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="not a quadexport run"):
        q.load(other)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        q.load(tmp_path / "missing")


def test_malicious_pickle_checkpoint_does_not_run_code(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    run = tmp_path / "evil"
    run.mkdir()
    with open(run / "checkpoint.pt", "wb") as f:
        pickle.dump({"format": "quadexport-run", "x": Evil()}, f)
    with pytest.raises(CheckpointError, match="not a safe"):
        q.load(run)
    assert not marker.exists()


def test_plot_false_skips_curves_only(tmp_path):
    out = tmp_path / "mlp"
    m = train(TrainConfig(model="mlp", neuron="fan", dataset="digits", out=str(out), epochs=1), progress=False,
              plot=False)
    assert not (out / "curves.png").exists()
    assert (out / "checkpoint.pt").is_file() and json.loads((out / "metrics.json").read_text()) == m


def test_curves_relu_has_no_quadratic_panel_and_integer_epoch_ticks():
    """Issue #16 item 8: a ReLU run's curves have no (empty) quadratic-norm panel; epoch ticks are integers."""
    from quadexport.training.loop import curves_figure

    rows = [{"epoch": i, "train_loss": 1.0 / i, "test_loss": 1.2 / i, "test_acc": 0.5 + 0.1 * i, "norm_wg": 0.0,
             "norm_wb": 0.0} for i in range(1, 4)]
    relu, quad = curves_figure(rows, "relu", quadratic=False), curves_figure(rows, "fan", quadratic=True)
    assert len(relu.axes) == 2 and len(quad.axes) == 3
    for fig in (relu, quad):
        fig.canvas.draw()
        for ax in fig.axes:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks)


def test_relu_epoch_log_has_no_quadratic_norms(tmp_path, caplog):
    import logging

    from quadexport.training.loop import TrainConfig, train

    with caplog.at_level(logging.INFO, logger="quadexport"):
        train(TrainConfig(model="cnn", neuron="relu", dataset="digits", epochs=1, train_subset=200,
                          out=str(tmp_path / "r")), progress=False, plot=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1")]
    assert lines and "|W_g|" not in lines[0] and "test_acc" in lines[0]
