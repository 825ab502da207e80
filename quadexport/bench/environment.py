"""The machine and library facts recorded with every benchmark (``bench.json`` ``environment``)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quadexport.bench.timing import loadavg, usable_cores

__all__ = ["cpu_model", "environment"]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _kernel_library() -> dict[str, str] | None:
    try:
        from quadexport.exporter.session import find_kernel_library

        lib = find_kernel_library()
    except Exception:  # noqa: BLE001 - the environment record must never fail a benchmark
        lib = None
    if lib is None:
        return None
    p = Path(lib)
    return {"path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()[:16],
            "mtime": _dt.datetime.fromtimestamp(p.stat().st_mtime, _dt.timezone.utc).isoformat(timespec="seconds")}


def environment(provider: str = "cpu", threads: int | None = None, opt_level: str = "all") -> dict[str, Any]:
    """System and library facts: date, CPU, usable cores, threads, versions, providers, load average, kernel library.
    (A plain dict: it is free-form metadata written as is into ``bench.json``.)"""
    import onnx
    import onnxruntime as ort

    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "usable_cores": usable_cores(),
        "threads": threads, "provider": provider, "opt_level": opt_level,
        "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
        "numpy": np.__version__, "ort_available_providers": ort.get_available_providers(),
        "load_average": loadavg(),
    }
    lib = _kernel_library()
    if lib is not None:
        env["kernel_library"] = lib
    if os.environ.get("QUADEXPORT_KERNEL_ISA"):
        env["kernel_isa"] = os.environ["QUADEXPORT_KERNEL_ISA"]
    if provider == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env
