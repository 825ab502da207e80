"""Locate, build and describe the fused onnxruntime kernel library (custom-op domain ``quadexport`` v1).

The library ``libquadexport_ops.so`` is built from ``quadexport/exporter/kernels/quad_ops.cc`` by
``tools/build_kernels.sh`` (``make kernels``). It implements ``QuadLinear``, ``QuadConv1d`` and ``QuadConv2d`` for
onnxruntime's ``CPUExecutionProvider`` and is loaded into a session with::

    so = onnxruntime.SessionOptions()
    so.register_custom_ops_library(str(require_library()))

Lookup order of :func:`find_library`: ``$QUADEXPORT_KERNEL_LIB``, then ``<repo>/build/kernels/libquadexport_ops.so``
(``<repo>`` is the parent of the ``quadexport`` package), then a copy inside the package directory
(``quadexport/exporter/kernels/libquadexport_ops.so``, for installed wheels that ship one).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from quadexport.errors import QuadexportError

log = logging.getLogger(__name__)

__all__ = ["DOMAIN", "DOMAIN_VERSION", "LIBRARY_NAME", "OPS", "KernelBuildError", "KernelLibraryNotFound",
           "build_library", "build_script", "find_library", "require_library"]

DOMAIN = "quadexport"
DOMAIN_VERSION = 1
OPS = ("QuadLinear", "QuadConv1d", "QuadConv2d")
LIBRARY_NAME = "libquadexport_ops.so"
ENV_LIBRARY = "QUADEXPORT_KERNEL_LIB"

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # .../quadexport
_REPO_DIR = _PACKAGE_DIR.parent


class KernelLibraryNotFound(QuadexportError, FileNotFoundError):
    """The fused kernel library is not built (or ``$QUADEXPORT_KERNEL_LIB`` points at nothing)."""


class KernelBuildError(QuadexportError, RuntimeError):
    """``tools/build_kernels.sh`` failed (the message carries its output)."""


def build_script() -> Path:
    """Path of ``tools/build_kernels.sh`` in the source checkout (it may not exist in an installed package)."""
    return _REPO_DIR / "tools" / "build_kernels.sh"


def _candidates() -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    env = os.environ.get(ENV_LIBRARY)
    if env:
        found.append((f"${ENV_LIBRARY}", Path(env).expanduser()))
    found.append(("build directory", _REPO_DIR / "build" / "kernels" / LIBRARY_NAME))
    found.append(("package copy", _PACKAGE_DIR / "exporter" / "kernels" / LIBRARY_NAME))
    return found


def find_library() -> Path | None:
    """Return the kernel library to load, or ``None`` if none is built.

    ``$QUADEXPORT_KERNEL_LIB`` wins when it is set; if it names a missing file, the search stops there
    (``None``) rather than silently loading another copy.
    """
    env = os.environ.get(ENV_LIBRARY)
    if env:
        path = Path(env).expanduser()
        return path.resolve() if path.is_file() else None
    for _, path in _candidates():
        if path.is_file():
            return path.resolve()
    return None


def require_library() -> Path:
    """Like :func:`find_library`, but raise :class:`KernelLibraryNotFound` with build instructions when missing.

    Raises:
        KernelLibraryNotFound: no library at any of the searched locations.
    """
    path = find_library()
    if path is not None:
        return path
    searched = "\n".join(f"  - {where}: {p}" for where, p in _candidates())
    raise KernelLibraryNotFound(
        f"The fused kernel library {LIBRARY_NAME} (onnxruntime custom-op domain '{DOMAIN}' version "
        f"{DOMAIN_VERSION}: {', '.join(OPS)}) was not found. Searched:\n{searched}\n"
        f"Build it with `bash tools/build_kernels.sh` (or `make kernels`) in the source checkout, which needs g++ "
        f"and fetches the onnxruntime headers from Debian's libonnxruntime-dev (or set QUADEXPORT_ORT_INCLUDE to an "
        f"existing onnxruntime include directory); or point ${ENV_LIBRARY} at a built library. Models exported with "
        f"the decomposed (standard-op) mode run without it."
    )


def build_library(verbose: bool = False, force: bool = False) -> Path:
    """Build the library with ``tools/build_kernels.sh`` (idempotent: a no-op when it is up to date).

    Args:
        verbose: stream the script's progress to stderr instead of capturing it.
        force: rebuild even when the library is newer than its source.

    Returns:
        Path of the built library (``build/kernels/libquadexport_ops.so``, or ``$QUADEXPORT_KERNEL_OUT``).

    Raises:
        KernelLibraryNotFound: the build script is missing (installed package without the source tree).
        KernelBuildError: the build failed; the message carries the script's output (a ``RuntimeError``).
    """
    script = build_script()
    if not script.is_file():
        raise KernelLibraryNotFound(f"{script} not found: build_library() needs the quadexport source checkout")
    bash = shutil.which("bash") or "/bin/bash"
    log.info("building the kernel library with %s", script)
    cmd = [bash, str(script)] + (["--force"] if force else []) + ([] if verbose else ["--quiet"])
    proc = subprocess.run(cmd, cwd=_REPO_DIR, stdout=subprocess.PIPE, stderr=None if verbose else subprocess.PIPE,
                          text=True, check=False)
    if proc.returncode != 0:
        raise KernelBuildError(f"{script.name} failed (exit {proc.returncode}):\n{proc.stderr or ''}{proc.stdout}")
    lines = proc.stdout.strip().splitlines()
    built = Path(lines[-1]) if lines else _REPO_DIR / "build" / "kernels" / LIBRARY_NAME
    if not built.is_file():
        raise KernelBuildError(f"{script.name} reported {built}, which does not exist")
    return built.resolve()
