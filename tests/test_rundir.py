"""Run directories never lose or mix work (docs/reliability.md, "Run directories"): refusal, one writer, whole
runs, resume from the run's own config, Ctrl-C, atomic replacement, file modes. Real processes, no mocks."""

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import quadexport as q
from quadexport.runs.atomicfile import atomic_write
from quadexport.runs.checkpoint import read_checkpoint
from quadexport.cli import main
from quadexport.runs.atomicfile import StagedFile
from quadexport.runs.rundir import RunDirError, RunDirLocked, lock_path, open_run
from quadexport.training.loop import TrainConfig, train

sys.path.insert(0, str(Path(__file__).parent))
from childsignals import popen_interruptible  # noqa: E402  (SIGINT reaches the child however the suite runs)

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "quadexport", "train"]
TINY = ["--model", "mlp", "--width", "16", "--dataset", "digits", "--train-subset", "200", "--test-subset", "60"]
# long enough to be caught mid-run: cnn on all of digits, a few seconds per epoch on 2 busy cores
LONG = ["--model", "cnn", "--width", "8", "--dataset", "digits", "--test-subset", "60"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _tiny(out: Path, epochs: int = 1, overwrite: bool = False, **kw) -> dict:
    cfg = TrainConfig(model="mlp", neuron="fan", dataset="digits", out=str(out), epochs=epochs, width=16,
                      train_subset=200, test_subset=60, **kw)
    return train(cfg, progress=False, plot=False, overwrite=overwrite)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("rundir")
    _tiny(base / "a")
    _tiny(base / "b", seed=1)
    return base


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _cli(*argv, timeout=300):
    return subprocess.run([*CLI, *map(str, argv)], capture_output=True, text=True, timeout=timeout, env=ENV)


def _popen(*argv, **kw):
    return popen_interruptible([*CLI, *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=ENV, **kw)


def _wait(cond, proc=None, timeout=240.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended first: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    raise TimeoutError


def _epochs_done(run: Path) -> int:
    try:
        return json.loads((run / "metrics.json").read_text())["epochs"][-1]["epoch"]
    except (OSError, ValueError, KeyError, IndexError):
        return 0


# -- fast -----------------------------------------------------------------------------------------------------------

def test_parts_carry_one_run_id(runs):
    a = runs / "a"
    ck = read_checkpoint(a)
    cfg, met = json.loads((a / "config.json").read_text()), json.loads((a / "metrics.json").read_text())
    assert ck["run_id"] == cfg["run_id"] == met["run_id"] and len(ck["run_id"]) == 36
    assert ck["epoch"] == met["epochs"][-1]["epoch"] == 1
    assert ck["run_id"] != read_checkpoint(runs / "b")["run_id"]
    assert not list(runs.glob(".a.*"))  # no staging dir or lock file left beside a finished run


def test_existing_run_is_refused_without_resume_or_overwrite(runs, tmp_path):
    run = _copy(runs / "a", tmp_path / "a")
    before = (run / "checkpoint.pt").read_bytes()
    r = _cli(*TINY, "--epochs", "1", "--out", run)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "already holds a run" in r.stderr and "--resume" in r.stderr and "--overwrite" in r.stderr
    assert (run / "checkpoint.pt").read_bytes() == before
    with pytest.raises(RunDirError, match="--overwrite"):
        _tiny(run)
    assert (run / "checkpoint.pt").read_bytes() == before


def test_mismatched_parts_are_refused_by_load_and_cli(runs, tmp_path, capsys):
    mixed = _copy(runs / "a", tmp_path / "mixed")
    shutil.copy(runs / "b" / "metrics.json", mixed / "metrics.json")  # metrics of another run
    with pytest.raises(RunDirError, match="metrics.json belongs to run .* parts of two runs"):
        q.load(mixed)
    assert main(["export", str(mixed), str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "parts of two runs" in err and err.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists()

    ahead = _copy(runs / "a", tmp_path / "ahead")  # metrics one epoch past the checkpoint, writer dead
    m = json.loads((ahead / "metrics.json").read_text())
    m["epochs"].append({**m["epochs"][-1], "epoch": 2})
    (ahead / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(RunDirError, match="ends at epoch 2 but checkpoint.pt holds epoch 1.*--resume"):
        q.load(ahead)
    q.load(runs / "a")  # the untouched run loads


def test_resume_flag_that_contradicts_the_config_is_named(runs, tmp_path, capsys):
    run = _copy(runs / "a", tmp_path / "a")
    assert main(["train", "--out", str(run), "--resume", "--lr", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.2 contradicts the run's config (lr = 0.05)" in err and err.count("\n") == 1
    assert main(["train", "--out", str(run), "--resume", "--lr-ratio-g", "0.5"]) == 2
    assert "--lr-ratio-g 0.5 contradicts" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "holds no run to resume" in capsys.readouterr().err


def test_second_writer_fails_at_once_naming_the_holder(tmp_path):
    run = tmp_path / "held"
    with open_run(run, "new") as holder:
        assert lock_path(run).read_text().strip() == str(os.getpid())
        t0 = time.time()
        r = _cli(*TINY, "--epochs", "1", "--out", run)
        assert r.returncode == 2 and f"pid {os.getpid()}" in r.stderr and r.stderr.count("\n") == 1, r.stderr
        with pytest.raises(RunDirLocked) as e:
            open_run(run, "overwrite")
        assert e.value.pid == os.getpid() and time.time() - t0 < 120
        assert holder.path.is_dir() and not run.exists()  # staged, not yet in place
    assert not lock_path(run).exists() and not list(tmp_path.iterdir())  # released, staging discarded


def test_killed_holder_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "r"
    code = ("import sys, time; from quadexport.runs.rundir import open_run; r = open_run(sys.argv[1], 'new'); "
            "print('locked', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLocked, match=f"pid {p.pid}"):
            open_run(run, "new")
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with open_run(run, "new") as r:  # the kernel dropped the lock; the dead writer's staging dir is cleaned up
        assert len(list(tmp_path.glob(".r.staging-*"))) == 1
        (r.path / "x").write_text("1")
        r.commit()
    assert (run / "x").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["r"]


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)])
def test_file_modes_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        _tiny(tmp_path / "run")
        atomic_write(tmp_path / "report.json", lambda f: f.write(b"{}"))
        with StagedFile(tmp_path / "m.onnx") as f:
            f.path.write_bytes(b"onnx")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == dir_mode
    for p in [*(tmp_path / "run").iterdir(), tmp_path / "report.json", tmp_path / "m.onnx"]:
        assert stat.S_IMODE(p.stat().st_mode) == file_mode, p


def test_staged_file_that_is_discarded_leaves_nothing(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    with StagedFile(target) as f:
        f.path.write_bytes(b"new, failed its parity check")
        f.discard()
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    with pytest.raises(RuntimeError), StagedFile(tmp_path / "n.onnx") as f:
        f.path.write_bytes(b"half")
        raise RuntimeError
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


# -- slow: real trainers killed, interrupted and racing ----------------------------------------------------------

@pytest.mark.slow
def test_overwrite_keeps_the_old_run_if_the_new_one_is_killed_before_its_first_checkpoint(runs, tmp_path):
    run = _copy(runs / "a", tmp_path / "a")
    old_id = read_checkpoint(run)["run_id"]
    p = _popen(*LONG, "--epochs", "3", "--overwrite", "--out", run)
    try:
        _wait(lambda: list(tmp_path.glob(".a.staging-*")), p)  # the new run is writing its stage
        assert _epochs_done(run) == 1 and read_checkpoint(run)["run_id"] == old_id
    finally:
        p.send_signal(signal.SIGKILL)
        p.communicate()
    assert read_checkpoint(run)["run_id"] == old_id
    q.load(run)  # still whole and loadable
    _tiny(run, overwrite=True)  # a completed overwrite replaces it (and cleans the dead stage)
    assert read_checkpoint(run)["run_id"] not in (old_id, None) and not list(tmp_path.glob(".a.*"))


@pytest.mark.slow
def test_two_concurrent_trainers(tmp_path):
    run = tmp_path / "race"
    first = _popen(*LONG, "--epochs", "6", "--out", run)
    try:
        _wait(lambda: lock_path(run).exists() and lock_path(run).read_text().strip() == str(first.pid), first)
        second = _cli(*LONG, "--epochs", "6", "--out", run)
        assert second.returncode == 2 and f"pid {first.pid}" in second.stderr, second.stderr
        assert second.stderr.count("\n") == 1
        assert first.poll() is None, "the first trainer finished before the second one tried; make it longer"
    finally:
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert _epochs_done(run) == 6 and q.load(run).quadexport_meta["epochs_done"] == 6


@pytest.mark.slow
def test_kill9_then_resume_from_config_alone_then_ctrl_c_then_the_printed_command(tmp_path):
    run = tmp_path / "run dir"  # a space: the printed command must quote it
    p = _popen(*LONG, "--epochs", "5", "--lr", "0.03", "--out", run)
    _wait(lambda: _epochs_done(run) >= 1, p)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    done = read_checkpoint(run)["epoch"]
    assert 1 <= done < 5

    p = _popen("--out", run, "--resume")  # no other flag: the run's own config (lr 0.03, cnn, ...)
    _wait(lambda: _epochs_done(run) > done, p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 130, err[-2000:]
    line = [x for x in err.splitlines() if "resume with:" in x][-1]
    cmd = shlex.split(line.split("resume with:", 1)[1])
    assert cmd[:2] == ["quadexport", "train"] and cmd[2:] == ["--out", str(run), "--resume"]
    r = subprocess.run([sys.executable, "-m", "quadexport", *cmd[1:]], capture_output=True, text=True,
                       timeout=600, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    ck = read_checkpoint(run)
    assert ck["epoch"] == 5 and ck["meta"]["train_config"]["lr"] == 0.03
    assert [e["epoch"] for e in json.loads((run / "metrics.json").read_text())["epochs"]] == [1, 2, 3, 4, 5]
    model = q.load(run)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
