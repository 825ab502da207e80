"""The CLI's contract: error handling (user error: one line, exit 2; bug: traceback, exit 1; ^C: 130), the global
``-v``/``-q``/``--debug`` options (before or after the command), and the export modes/opsets it shares with the API.

Most tests run ``python -m quadexport`` as a real subprocess; the opset sweep calls :func:`quadexport.cli.main`
in-process (the same code path, 60+ cases) and one subprocess case.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from torch import nn

import quadexport as q
from quadexport.runs.checkpoint import save_checkpoint
from quadexport.cli import build_parser, main
from quadexport.errors import UsageError
from quadexport.exporter import MAX_OPSET, MIN_OPSET, list_export_targets

sys.path.insert(0, str(Path(__file__).parent))
from childsignals import popen_interruptible  # noqa: E402  (SIGINT reaches the child however the suite runs)

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["train", "--model", "mlp", "--width", "8", "--dataset", "digits", "--epochs", "1", "--train-subset",
              "100", "--test-subset", "50"]


def _cli(*args: str | Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "quadexport", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """An untrained mlp saved as a run dir (enough for export)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    model = q.create_model("mlp", "fan", in_channels=1, input_size=8, width=8)
    save_checkpoint(out, model, {"dataset": "digits", "input_shape": [1, 8, 8]})
    return out


# ---------------------------------------------------------------------------------------------------------------
# error handling
# ---------------------------------------------------------------------------------------------------------------

def test_user_error_is_one_line_exit_2(tmp_path):
    r = _cli("check", tmp_path / "m.onnx", tmp_path / "no-such-run")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("quadexport check: error: no checkpoint at ")
    assert "Traceback" not in r.stderr and not r.stdout


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    r = _cli("check", tmp_path / "m.onnx", tmp_path / "no-such-run", "--debug")  # a global option after the command
    assert r.returncode == 2
    assert "Traceback (most recent call last)" in r.stderr and "CheckpointError" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("quadexport check: error: no checkpoint at ")


def test_internal_bug_shows_traceback_exit_1(tmp_path):
    """A run dir whose metadata is corrupt in a way no check anticipates (input_shape an int, not a list): the
    exporter hits a TypeError deep inside; that is a bug path, so the traceback is kept."""
    model = q.create_model("mlp", "fan", in_channels=1, input_size=8, width=8)
    save_checkpoint(tmp_path / "odd", model, {"input_shape": 64})
    r = _cli("export", tmp_path / "odd", tmp_path / "m.onnx", "--no-check")
    assert r.returncode == 1, r.stderr
    assert "Traceback (most recent call last)" in r.stderr and "TypeError" in r.stderr
    assert "quadexport export: internal error (TypeError)" in r.stderr
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_keyboard_interrupt_exits_130(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["train", "--model", "mlp", "--width", "8", "--dataset", "digits", "--epochs", "200", "--train-subset", "200", "--out", str(out)]
    proc = popen_interruptible([sys.executable, "-m", "quadexport", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    t0 = time.time()
    while not (out / "metrics.json").exists():  # training is under way
        assert proc.poll() is None and time.time() - t0 < 120, "training did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "quadexport train: interrupted" in err, err
    assert "Traceback" not in err


def test_interrupted_children_get_the_default_sigint_even_when_the_suite_ignores_it():
    """As under `nohup make test &`: this process ignores SIGINT; the child the SIGINT tests start must not."""
    probe = [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"]
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        plain = subprocess.run(probe, capture_output=True, text=True, timeout=60)
        proc = popen_interruptible(probe, stdout=subprocess.PIPE, text=True)
        out, _ = proc.communicate(timeout=60)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # this process ignores it again
    finally:
        signal.signal(signal.SIGINT, old)
    assert plain.stdout.strip() == "True"  # what a plain child inherits: the reason for the helper
    assert out.strip() == "False"


# ---------------------------------------------------------------------------------------------------------------
# verbosity
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_quiet_silences_progress_verbose_adds_debug(tmp_path):
    loud = _cli("-v", *TINY_TRAIN, "--out", tmp_path / "a")  # global options before ...
    quiet = _cli(*TINY_TRAIN, "--out", tmp_path / "b", "-q")  # ... or after the command
    for r in (loud, quiet):
        assert r.returncode == 0, r.stderr
        assert "test accuracy" in r.stdout  # the result is printed either way
    assert "epoch 1/1 train_loss" in loud.stderr and "epoch 1/1 train_loss" not in loud.stdout
    assert "saved " in loud.stderr and "checkpoint.pt (epoch 1)" in loud.stderr  # -v: debug messages
    assert "epoch" not in quiet.stderr and quiet.stderr.strip() == ""
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    assert a["test_acc"] == b["test_acc"]  # -q changes the output only


# ---------------------------------------------------------------------------------------------------------------
# modes and opsets: one registry, one range
# ---------------------------------------------------------------------------------------------------------------

def _export_action(name: str):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return next(a for a in sub.choices["export"]._actions if a.dest == name)


def test_export_modes_come_from_the_registry():
    assert list_export_targets() == ["decomposed", "function", "fused"]
    assert list(_export_action("mode").choices) == list_export_targets()
    assert _export_action("mode").default == "decomposed"


def _api_rejects(opset: int, mode: str) -> bool:
    """``quadexport.export`` validates the mode and opset before anything else: a model whose input shape cannot be
    told then fails with a different error, so an accepted opset costs no export."""
    try:
        q.export(nn.Linear(3, 2), "never-written.onnx", mode=mode, opset=opset)
    except UsageError as e:
        if "input shape" in str(e):
            return False
        assert "opset" in str(e)
        return True
    raise AssertionError("export ran")


def _cli_rejects(opset: int, mode: str, missing_run: Path, capsys) -> bool:
    try:
        rc = main(["export", str(missing_run), "x.onnx", "--mode", mode, "--opset", str(opset)])
    except SystemExit as e:  # argparse: the --opset type
        rc, err = e.code, capsys.readouterr().err
        assert rc == 2 and "out of range" in err
        return True
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    if "no checkpoint" in err:  # got past the opset check to loading the run
        return False
    assert "opset" in err, err
    return True


def test_api_and_cli_reject_the_same_opsets(tmp_path, capsys):
    missing = tmp_path / "no-run"
    for mode in list_export_targets():
        for opset in range(MIN_OPSET - 6, MAX_OPSET + 3):
            api, cli = _api_rejects(opset, mode), _cli_rejects(opset, mode, missing, capsys)
            assert api == cli, (mode, opset, api, cli)
            assert api == (not (MIN_OPSET <= opset <= MAX_OPSET) or (opset < 18 and mode != "decomposed"))
    assert not Path("never-written.onnx").exists()
    r = _cli("export", missing, tmp_path / "x.onnx", "--mode", "fused", "--opset", "17")
    assert r.returncode == 2 and "needs opset >= 18" in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.slow
def test_export_cli_end_to_end_fused(tiny_run, tmp_path):
    """A registry mode the CLI used to list by hand exports and passes its parity check (one mode: each export and
    check costs ~25 s here; test_check.py covers function mode, test_export.py every mode through the API)."""
    for mode in ["fused"]:
        r = _cli("-v", "export", tiny_run, tmp_path / f"{mode}.onnx", "--mode", mode, "-q")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "tracing" not in r.stderr  # -q after the command wins over -v before it
        assert "checks passed" in r.stdout and f"mode {mode}" in r.stdout
        props = {p.key: p.value for p in onnx.load(str(tmp_path / f"{mode}.onnx")).metadata_props}
        assert props["quadexport.export_mode"] == mode
