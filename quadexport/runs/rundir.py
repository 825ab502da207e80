"""Run directories that never lose or mix work: one writer, atomic replacement, whole runs.

* **Modes** (:func:`open_run`): ``"new"`` refuses a directory that already holds something; ``"resume"`` continues
  the run in place; ``"overwrite"`` replaces it atomically: the new run is written into a hidden sibling staging dir
  (``.RUN.staging-*``) and swapped in by :meth:`RunDir.commit` (``renameat2(RENAME_EXCHANGE)`` where the kernel has
  it), so the old run stays intact until the new one has a complete checkpoint. ``"new"`` stages the same way, so a
  run killed before its first checkpoint leaves nothing behind.
* **One writer**: ``fcntl.flock`` on ``.RUN.lock`` beside the run dir (outside it, so the lock survives the swap).
  The kernel drops the lock when the process dies (``kill -9`` never leaves a stale lock); the holder writes its
  pid into the file so a second writer fails at once naming it. Readers never take the lock.
* **Whole runs**: ``config.json``, ``metrics.json`` and ``checkpoint.pt`` carry one ``run_id`` and the checkpoint
  holds the epoch ``metrics.json`` ends at. The trainer writes metrics, then config, then the checkpoint (the commit
  point); :func:`read_consistent` re-reads while a live writer is between those writes and refuses a dir whose
  parts disagree.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from quadexport.runs.atomicfile import current_umask, fsync_dir
from quadexport.errors import QuadexportError

log = logging.getLogger(__name__)

MODES = ("new", "resume", "overwrite")
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.json"


class RunDirError(QuadexportError, ValueError):
    """A run dir that cannot be opened in the asked mode, or whose parts belong to different runs."""


class RunDirLocked(RunDirError):
    """Another process is writing the run dir (``pid``: its process id, or None if unknown)."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of run dir ``path``: ``.NAME.lock`` beside it."""
    p = Path(path).absolute()
    return p.parent / f".{p.name}.lock"


def holds_run(path: str | os.PathLike) -> bool:
    """True when ``path`` exists and is not an empty directory."""
    p = Path(path)
    if not p.exists():
        return False
    return not p.is_dir() or any(p.iterdir())


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None if it does not exist."""
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path} is unreadable or not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise RunDirError(f"{path} is not a JSON object")
    return obj


def run_id_of(path: str | os.PathLike) -> str | None:
    """The run id recorded in ``path/config.json`` (None when absent or unreadable)."""
    try:
        cfg = read_json(Path(path) / CONFIG)
    except RunDirError:
        return None
    return None if cfg is None else cfg.get("run_id")


def _holder_pid(lock: Path) -> int | None:
    for _ in range(20):  # the holder writes its pid right after locking; give it a moment
        try:
            text = lock.read_text().strip()
        except OSError:
            return None
        if text.isdigit():
            return int(text)
        time.sleep(0.01)
    return None


def writer_alive(path: str | os.PathLike) -> bool:
    """Whether a live process holds the writer lock of ``path`` (judged by the pid in the lock file; no locking)."""
    pid = _holder_pid(lock_path(path)) if lock_path(path).exists() else None
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _acquire(lock: Path, run: Path) -> int:
    """Take the exclusive lock (non-blocking) and write our pid into it; returns the fd."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _holder_pid(lock)
            who = f"pid {pid}" if pid is not None else "another process"
            raise RunDirLocked(f"{run} is being written by {who} (lock {lock}); wait for it to finish or stop it",
                               pid) from None
        try:  # the previous holder may have unlinked the file between our open and flock: retry on the new one
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with ``renameat2(RENAME_EXCHANGE)``; False where the system lacks it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _clean_leftovers(final: Path) -> None:
    """Under the lock: remove staging dirs of dead writers; put back a run whose swap was cut short."""
    for p in final.parent.glob(f".{final.name}.staging-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in sorted(final.parent.glob(f".{final.name}.old-*")):
        if not final.exists():
            os.rename(p, final)
            log.warning("restored %s from an interrupted replacement", final)
        else:
            shutil.rmtree(p, ignore_errors=True)


@dataclass
class RunDir:
    """An open run dir (see :func:`open_run`). Write into :attr:`path`; call :meth:`commit` after each complete
    checkpoint; :meth:`close` (or leaving the ``with`` block) releases the lock and discards an uncommitted stage.

    Attributes:
        final: the run dir's real location.
        path: where to write now: the staging dir until the first commit, then ``final``.
        run_id: the run's id (new for new/overwrite; the existing one for resume; None for a legacy run).
        mode: ``"new"``, ``"resume"`` or ``"overwrite"``.
        writer: False on non-zero torchrun ranks: no lock, no staging, nothing written.
        committed: the run is in place at ``final``.
    """

    final: Path
    path: Path
    run_id: str | None
    mode: str
    writer: bool = True
    committed: bool = False
    _fd: int | None = field(default=None, repr=False)

    def stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        """``obj`` with this run's id added (unchanged for a legacy run without an id)."""
        return obj if self.run_id is None else {**obj, "run_id": self.run_id}

    def commit(self) -> None:
        """Put the staged run in place (no-op when already committed, resuming, or not the writer)."""
        if self.committed or not self.writer:
            return
        final, stage = self.final, self.path
        if final.exists() and final.is_dir() and any(final.iterdir()):
            if _exchange(stage, final):
                shutil.rmtree(stage, ignore_errors=True)  # now holds the old run
            else:
                old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(final, old)
                os.rename(stage, final)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(stage, final)  # rename(2) replaces an empty directory
        fsync_dir(final.parent)
        self.path, self.committed = final, True

    @contextmanager
    def saving(self) -> Iterator[None]:
        """Hold back SIGINT/SIGTERM while the parts of one epoch are written (they land together or not at all)."""
        sigs = {signal.SIGINT, signal.SIGTERM}
        try:
            old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
        except (ValueError, OSError, AttributeError):  # not the main thread / platform without it
            old = None
        try:
            yield
        finally:
            if old is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def close(self) -> None:
        """Discard an uncommitted staging dir and release the lock (idempotent)."""
        if self.writer and not self.committed and self.path != self.final:
            shutil.rmtree(self.path, ignore_errors=True)
        if self._fd is not None:
            lock = lock_path(self.final)
            try:
                if os.stat(lock).st_ino == os.fstat(self._fd).st_ino:
                    os.unlink(lock)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # safety net for callers that drop an open RunDir on an exception
        if getattr(self, "_fd", None) is not None:
            self.close()


def _refusal(final: Path, mode: str, resumable: bool) -> str | None:
    if final.exists() and not final.is_dir():
        return f"{final} is a file, not a run directory"
    if mode == "new" and holds_run(final):
        fix = "pass --resume to continue it or --overwrite to replace it" if resumable else \
            "pass --overwrite to replace it"
        return f"{final} already holds a run; {fix}"
    if mode == "resume" and not (final / CHECKPOINT).is_file():
        return f"{final} holds no run to resume (no {CHECKPOINT}); drop --resume to start a new run there"
    return None


def open_run(path: str | os.PathLike, mode: str = "new", *, writer: bool = True, resumable: bool = True) -> RunDir:
    """Open a run dir for writing; use as ``with open_run(out, "overwrite") as run: ...``.

    Args:
        path: the run dir.
        mode: ``"new"`` (refuse a dir that holds anything), ``"resume"`` (continue in place) or ``"overwrite"``
            (stage, then swap in at the first :meth:`RunDir.commit`).
        writer: False for torchrun ranks other than 0: only the refusal checks run; no lock, nothing written.
        resumable: whether the refusal message offers ``--resume`` (False for e.g. ``compress``).

    Raises:
        RunDirError: the mode does not fit what is there (one line naming the flag that fixes it).
        RunDirLocked: another process holds the lock (its pid is in the message).
    """
    if mode not in MODES:
        raise RunDirError(f"run dir mode must be one of {', '.join(MODES)}, got {mode!r}")
    final = Path(path).absolute()
    if not writer:
        msg = _refusal(final, mode, resumable)
        if msg:
            raise RunDirError(msg)
        return RunDir(final, final, run_id_of(final) if mode == "resume" else None, mode, writer=False)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock_path(final), final)
    try:
        _clean_leftovers(final)
        msg = _refusal(final, mode, resumable)
        if msg:
            raise RunDirError(msg)
        if mode == "resume":
            return RunDir(final, final, run_id_of(final), mode, committed=True, _fd=fd)
        stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-", dir=final.parent))
        os.chmod(stage, 0o777 & ~current_umask())  # mkdtemp makes 0700; the run dir gets the user's umask
        return RunDir(final, stage, str(uuid.uuid4()), mode, _fd=fd)
    except BaseException:
        os.close(fd)
        raise


@dataclass(frozen=True)
class Disagreement:
    """Why a run dir's parts do not form one run; ``in_flight`` when a live writer may be between two writes."""

    message: str
    in_flight: bool


def disagreement(path: str | os.PathLike, run_id: str | None, epoch: int | None) -> Disagreement | None:
    """Compare ``config.json`` and ``metrics.json`` of run dir ``path`` with its checkpoint's run id and epoch.

    Missing files are tolerated (a legacy or hand-made dir); present ones must carry the checkpoint's run id, and a
    ``metrics.json`` with epoch rows must end at the checkpoint's epoch.
    """
    p = Path(path)
    parts = {name: read_json(p / name) for name in (CONFIG, METRICS)}
    for name, obj in parts.items():
        if obj is not None and obj.get("run_id") != run_id:
            return Disagreement(f"{p}: {name} belongs to run {obj.get('run_id') or '(none)'} but {CHECKPOINT} to "
                                f"run {run_id or '(none)'}: parts of two runs; rerun with --overwrite or restore the "
                                f"matching files", in_flight=True)
    rows = (parts[METRICS] or {}).get("epochs") or []
    last = rows[-1].get("epoch") if rows and isinstance(rows[-1], dict) else None
    if last is not None and epoch is not None and last != epoch:
        return Disagreement(f"{p}: {METRICS} ends at epoch {last} but {CHECKPOINT} holds epoch {epoch} (the run was "
                            f"interrupted while saving); `quadexport train --out {p} --resume` repairs it",
                            in_flight=last == epoch + 1)
    return None


def read_consistent(path: str | os.PathLike, read: Callable[[Path], dict[str, Any]],
                    timeout: float = 10.0) -> dict[str, Any]:
    """``read(path)`` (a checkpoint reader), verified against the run dir's other parts.

    While a live writer may be between two writes (or swapping a replacement in), the read is repeated for up to
    ``timeout`` seconds; after that, or with no live writer, a disagreement raises :class:`RunDirError`. A path that
    is a file (a bare checkpoint) is read without verification.
    """
    p = Path(path)
    deadline = time.monotonic() + timeout
    while True:
        ckpt = read(p)
        if not p.is_dir():
            return ckpt
        bad = disagreement(p, ckpt.get("run_id"), ckpt.get("epoch"))
        if bad is None:
            return ckpt
        if not (bad.in_flight and writer_alive(p)) or time.monotonic() > deadline:
            raise RunDirError(bad.message)
        time.sleep(0.05)


def merge_resume_config(saved: dict[str, Any], given: dict[str, tuple[str, Any]],
                        free: tuple[str, ...] = ("epochs",)) -> dict[str, Any]:
    """The configuration of a resumed run: the run's own ``saved`` config, with the ``given`` flags checked.

    Args:
        saved: the run's config (nested dicts allowed).
        given: dotted config key -> (flag as typed, value) for each flag the user gave.
        free: keys a flag may change (``epochs``: extend the run).

    Raises:
        RunDirError: a flag contradicts the saved config (names the flag and both values).
    """
    merged = json.loads(json.dumps(saved))
    for key, (flag, value) in given.items():
        *parents, leaf = key.split(".")
        node = merged
        for k in parents:
            node = node.setdefault(k, {})
        if key in free:
            node[leaf] = value
        elif node.get(leaf) != value:
            raise RunDirError(f"--resume: {flag} {value} contradicts the run's config ({key} = {node.get(leaf)}); "
                              f"drop the flag, or use --overwrite to start a new run")
    merged.pop("run_id", None)
    return merged


__all__ = ["RunDir", "RunDirError", "RunDirLocked", "disagreement", "holds_run", "merge_resume_config", "open_run",
           "read_consistent", "run_id_of", "writer_alive"]
