"""The positional paths of ``export RUN_DIR OUT.onnx`` and ``check MODEL.onnx RUN_DIR`` (opposite orders): a file
or directory in the wrong place is a one-line usage error that says what it is and asks about swapped arguments."""

from __future__ import annotations

import zipfile
from pathlib import Path

from quadexport.errors import UsageError

__all__ = ["looks_like_onnx", "onnx_file", "run_dir", "output_file"]


def looks_like_onnx(path: Path) -> bool:
    """A file named ``*.onnx``, or an existing file that is not a checkpoint (torch checkpoints are zip files)."""
    if path.suffix.lower() == ".onnx":
        return not path.is_dir()
    return path.is_file() and not zipfile.is_zipfile(path)


def _swapped(usage: str) -> str:
    return f"did you swap the arguments? usage: {usage}"


def run_dir(s: str, usage: str) -> Path:
    """``s`` as a run directory (or checkpoint file); an ONNX file here is refused."""
    p = Path(s)
    if looks_like_onnx(p):
        raise UsageError(f"{p} is an ONNX file, not a run directory; {_swapped(usage)}")
    return p


def onnx_file(s: str, usage: str) -> Path:
    """``s`` as an existing-or-not ONNX file; a directory (e.g. a run dir) here is refused."""
    p = Path(s)
    if p.is_dir():
        raise UsageError(f"{p} is a directory, not an ONNX file; {_swapped(usage)}")
    return p


def output_file(s: str, source: Path, usage: str) -> Path:
    """``s`` as the ONNX file to write: not a directory, not the source run."""
    p = Path(s)
    if p.is_dir():
        same = p.resolve() == source.resolve()
        hint = _swapped(usage) if not same and (p / "checkpoint.pt").exists() else \
            f"give the file to write, e.g. {p / 'model.onnx'}"
        raise UsageError(f"{p} is a directory, not an output .onnx file; {hint}")
    return p
