"""``quadexport pipeline`` run dirs (issue #15): a pipeline killed during training resumes that training on the next
run (the epochs already done are kept, not retrained); a run dir made with other settings is refused, and
``--overwrite`` retrains. Real subprocesses, real training on the embedded digits data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 6
RECIPE = """name = "resume"

[model]
name = "cnn"
neuron = "fan"
width = 4

[data]
dataset = "digits"
train_subset = 300
test_subset = 50

[train]
epochs = {epochs}
batch_size = 16

[baselines]
twin = false
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _cli(*args: str | Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quadexport", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env=_env())


def _epochs_done(run: Path) -> list[dict]:
    try:
        return json.loads((run / "metrics.json").read_text())["epochs"]
    except (OSError, ValueError, KeyError):
        return []


@pytest.mark.slow  # ~60 s on 2 busy cores: one interrupted and one resumed training, export and parity check
def test_killed_pipeline_resumes_its_training(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(epochs=EPOCHS))
    report, run = tmp_path / "report", tmp_path / "report" / "runs" / "cnn-fan"
    proc = subprocess.Popen([sys.executable, "-m", "quadexport", "pipeline", str(recipe), "--out", str(report),
                             "--skip-bench"], cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while len(_epochs_done(run)) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # no clean-up: as if the machine went down mid-training
    finally:
        proc.wait(30)
    before = _epochs_done(run)
    assert 1 <= len(before) < EPOCHS, f"not interrupted mid-training ({len(before)} epochs done)"

    r = _cli("pipeline", recipe, "--out", report, "--skip-bench")
    assert r.returncode == 0, r.stderr
    # metrics.json is written just before the checkpoint (the commit point), so the kill may fall between them
    kept = next(k for k in (len(before), len(before) - 1) if f"[resumed at epoch {k + 1}]" in r.stdout)
    after = _epochs_done(run)
    assert [e["epoch"] for e in after] == list(range(1, EPOCHS + 1))
    assert kept >= 1 and after[:kept] == before[:kept]  # the epochs done before the kill were kept, not retrained
    summary = json.loads((report / "summary.json").read_text())
    assert summary["models"][0]["test_acc"] == after[-1]["test_acc"] and summary["parity_ok"]

    again = _cli("pipeline", recipe, "--out", report, "--skip-bench")  # finished: reused as it is
    assert again.returncode == 0 and "[cached]" in again.stdout and _epochs_done(run) == after

    recipe.write_text(RECIPE.format(epochs=EPOCHS).replace("batch_size = 16", "batch_size = 32"))
    clash = _cli("pipeline", recipe, "--out", report, "--skip-bench")  # other settings: refused, one line
    assert clash.returncode == 2 and "Traceback" not in clash.stderr
    assert "other settings (batch_size)" in clash.stderr and "--overwrite" in clash.stderr
    assert _epochs_done(run) == after
