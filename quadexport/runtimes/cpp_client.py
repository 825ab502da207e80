"""The C++ client (``examples/cpp``: onnxruntime's C++ API, no Python) as a runtime: each batch is written to
``.npy``, run by ``quadexport_client`` in a subprocess and read back.

The client is built by ``tools/build_cpp_client.sh`` (``make cpp``) into ``build/cpp-client/quadexport_client``;
``$QUADEXPORT_CPP_CLIENT`` points at another build. It registers ``libquadexport_ops.so`` exactly when
:func:`quadexport.make_session` would (``--kernel auto``), is given the built library (``--kernel-lib``), and
reports which it registered on stdout (``kernel: ...``), which :attr:`Session.kernel` records. Each batch is a new
process (file load and session creation included): parity, not latency (the client's own ``--repeat`` times the
session alone).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from quadexport.errors import QuadexportError
from quadexport.runtimes.base import LEVEL_NAMES, Runtime, RuntimeUnavailable, Session, Setting, Support, file_io

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CppClient", "CppClientError", "ENV_CLIENT", "find_client"]

ENV_CLIENT = "QUADEXPORT_CPP_CLIENT"
_REPO_DIR = Path(__file__).resolve().parents[2]
BUILD_HINT = f"build it with `make cpp` (bash tools/build_cpp_client.sh) or set ${ENV_CLIENT}"
TIMEOUT_S = 600


class CppClientError(QuadexportError, RuntimeError):
    """The client exited with an error (its message is included)."""


def find_client() -> Path | None:
    """``$QUADEXPORT_CPP_CLIENT``, else ``<repo>/build/cpp-client/quadexport_client``, if it is an executable."""
    env = os.environ.get(ENV_CLIENT)
    path = Path(env).expanduser() if env else _REPO_DIR / "build" / "cpp-client" / "quadexport_client"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _fields(stdout: str) -> dict[str, str]:
    """The client's ``key: value`` lines."""
    return dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)


class CppClient(Runtime):
    name = "cpp"
    title = "the C++ client"
    description = "examples/cpp (onnxruntime C++ API) in a subprocess on .npy files; build: make cpp"

    def __init__(self) -> None:
        self._versions: dict[tuple[str, float], Support] = {}

    def supports(self) -> Support:
        from quadexport.exporter.targets import list_export_targets

        base = Support(modes=tuple(list_export_targets()), dtypes=("float32", "float16", "int8"), external_data=True,
                       kernel_library=True, opt_levels=tuple(LEVEL_NAMES), in_process=False)
        exe = find_client()
        if exe is None:
            return replace(base, available=False, reason=f"the C++ client is not built: {BUILD_HINT}")
        key = (str(exe), exe.stat().st_mtime)
        if key not in self._versions:  # one `--version` run per build
            proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            self._versions[key] = (replace(base, version=f"onnxruntime {_fields(proc.stdout).get('onnxruntime')} "
                                                         f"(C++)") if proc.returncode == 0 else
                                   replace(base, available=False, reason=f"{exe} --version failed: {last}"))
        return self._versions[key]

    def label(self, setting: Setting) -> str:
        return f"cpp {LEVEL_NAMES.get(setting.opt_level or 'all')}"

    def open(self, path: str | os.PathLike, setting: Setting = Setting()) -> Session:
        """Checks what the client will need (it runs per batch): the executable and, where the file or the setting
        needs it, the kernel library."""
        from quadexport.exporter.kernel_lib import KernelLibraryNotFound, find_library
        from quadexport.exporter.session import BUILD_HINT as KERNEL_HINT, model_info

        exe = find_client()
        if exe is None:
            raise RuntimeUnavailable(f"the C++ client is not built: {BUILD_HINT}")
        info, io = model_info(path), file_io(path)
        policy = setting.kernel_library
        lib = find_library() if policy != "never" else None
        if lib is None and (policy == "always" or (info.needs_kernel and policy != "never")):
            raise KernelLibraryNotFound(f"{path} needs the kernel library libquadexport_ops.so, which is not built; "
                                        f"{KERNEL_HINT}")
        args = ["--opt-level", setting.opt_level or "all", "--kernel", policy, "--threads", str(setting.threads or 0)]
        args += ["--kernel-lib", str(lib)] if lib is not None else []
        return Session(self, Path(path), setting, [str(exe), *args], io.input_names, io.output_names,
                       devices=["CPUExecutionProvider (C++ client)"])

    def run(self, session: Session, inputs: np.ndarray | Mapping[str, np.ndarray]) -> list[np.ndarray]:
        import numpy as np

        (x,) = session.feed(inputs).values()
        exe, *args = session.handle
        with tempfile.TemporaryDirectory(prefix="quadexport-cpp-") as tmp:
            src, out = Path(tmp) / "input.npy", Path(tmp) / "out.npy"
            np.save(src, np.ascontiguousarray(x, dtype=np.float32))
            proc = subprocess.run([exe, str(session.path), str(src), str(out), *args], capture_output=True, text=True,
                                  timeout=TIMEOUT_S)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[0]
                raise CppClientError(f"quadexport_client failed on {session.path.name}: {last}")
            kernel = _fields(proc.stdout).get("kernel", "none")
            session.kernel = None if kernel == "none" else Path(kernel)
            return [np.load(out if i == 0 else Path(tmp) / f"out_{i}.npy") for i in range(len(session.output_names))]
