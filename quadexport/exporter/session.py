"""onnxruntime sessions for quadexport models: :func:`make_session`.

Kernel-library policy (``kernel_library=``):

- ``"auto"`` (default): register ``libquadexport_ops.so`` when the model has ``quadexport`` nodes and either was
  exported in fused mode (metadata ``quadexport.runtime=fused``) or has nodes without a function body. A fused model
  that still carries its bodies runs on the bodies (with a ``RuntimeWarning``) when the library is missing; a model
  that *needs* the kernel raises :class:`KernelLibraryNotFound` naming the domain and how to build it.
- ``"always"`` / ``True``: register it (error if missing). ``"never"`` / ``False`` / ``None``: don't (function
  bodies are inlined by onnxruntime). A path: register that file.

With ``provider="cuda"`` the CPU kernel library is not registered under ``"auto"`` (onnxruntime would run those nodes
on the CPU with copies; the inlined bodies run on the GPU instead), and the session must really run on CUDA:
onnxruntime silently falls back to CPU when the CUDA libraries are missing, which is turned into an error here.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from quadexport.errors import QuadexportError, UsageError
from quadexport.exporter.kernel_lib import DOMAIN, DOMAIN_VERSION, KernelLibraryNotFound, find_library

log = logging.getLogger(__name__)

OPT_LEVELS = ("disable", "basic", "extended", "all")
BUILD_HINT = "build it with `make kernels` (runs `bash tools/build_kernels.sh`)"

__all__ = ["BUILD_HINT", "KernelLibraryNotFound", "ModelInfo", "OPT_LEVELS", "OnnxModelError", "ProviderUnavailable",
           "find_kernel_library", "make_session", "model_info", "read_onnx"]

class OnnxModelError(QuadexportError, ValueError):
    """An ONNX file (or ModelProto) that cannot be read or that onnxruntime cannot load."""


class ProviderUnavailable(QuadexportError, RuntimeError):
    """``provider="cuda"`` asked for, but onnxruntime cannot run on CUDA here."""


def find_kernel_library() -> Path | None:
    """Path of the built kernel library, or ``None`` (:func:`quadexport.exporter.kernel_lib.find_library`)."""
    return find_library()


@dataclass
class ModelInfo:
    """What a session needs to know about a model.

    Attributes:
        used_ops: op types of the ``quadexport`` nodes in the main graph.
        bodies: ``quadexport`` op types that have a model-local function body.
        mode: metadata ``quadexport.export_mode`` (``""`` if absent).
        runtime: metadata ``quadexport.runtime`` (``""`` if absent).
        metadata: all metadata_props.
    """

    used_ops: set[str]
    bodies: set[str]
    mode: str
    runtime: str
    metadata: dict[str, str]

    @property
    def uses_domain(self) -> bool:
        return bool(self.used_ops)

    @property
    def needs_kernel(self) -> bool:
        """Some ``quadexport`` node has no function body: only the kernel library can run it."""
        return bool(self.used_ops - self.bodies)


def read_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file; a missing file raises ``FileNotFoundError``, a truncated or corrupt one
    :class:`OnnxModelError` (a ``ValueError``), each naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise OnnxModelError(f"{path} is not a readable ONNX model (truncated or corrupt): {e}") from None
    if not proto.graph.node:
        raise OnnxModelError(f"{path} is not a usable ONNX model: its graph has no nodes")
    return proto


def model_info(model: str | os.PathLike | onnx.ModelProto) -> ModelInfo:
    """Inspect a model (path or ModelProto) for :func:`make_session`."""
    proto = model if isinstance(model, onnx.ModelProto) else read_onnx(model)
    props = {p.key: p.value for p in proto.metadata_props}
    return ModelInfo(used_ops={n.op_type for n in proto.graph.node if n.domain == DOMAIN},
                     bodies={f.name for f in proto.functions if f.domain == DOMAIN},
                     mode=props.get("quadexport.export_mode", ""), runtime=props.get("quadexport.runtime", ""),
                     metadata=props)


def _resolve_kernel(info: ModelInfo, kernel_library: Any, provider: str) -> Path | None:
    if isinstance(kernel_library, (str, os.PathLike)) and str(kernel_library) not in ("auto", "always", "never"):
        p = Path(kernel_library)
        if not p.is_file():
            raise KernelLibraryNotFound(f"kernel library {p} does not exist; {BUILD_HINT}")
        return p
    choice = {True: "always", False: "never", None: "never"}.get(kernel_library, kernel_library)
    if choice not in ("auto", "always", "never"):
        raise UsageError(f"kernel_library must be 'auto', 'always', 'never', a bool or a path, got {kernel_library!r}")
    missing = (f"the model uses custom ops of domain '{DOMAIN}' v{DOMAIN_VERSION} "
               f"({', '.join(sorted(info.used_ops - info.bodies)) or ', '.join(sorted(info.used_ops))})")
    if choice == "never":
        if info.needs_kernel:
            raise KernelLibraryNotFound(f"{missing} without function bodies, and kernel_library='never'; register "
                                        f"the kernel library or re-export with mode='function'")
        return None
    if choice == "auto" and not (info.needs_kernel or (info.uses_domain and info.runtime == "fused")):
        return None
    if choice == "auto" and provider == "cuda" and not info.needs_kernel:
        return None
    lib = find_kernel_library()
    if lib is not None:
        return lib
    if info.needs_kernel or choice == "always":
        raise KernelLibraryNotFound(f"{missing}{' without function bodies' if info.needs_kernel else ''}, but the "
                                    f"kernel library libquadexport_ops.so was not found; {BUILD_HINT}")
    warnings.warn(f"fused model but the kernel library is not built ({BUILD_HINT}); running the function bodies "
                  f"(standard ops) instead", RuntimeWarning, stacklevel=3)
    return None


def make_session(path: str | os.PathLike | onnx.ModelProto, provider: str = "cpu", *, opt_level: str = "all",
                 threads: int | None = None, allow_spinning: bool = False, kernel_library: Any = "auto",
                 optimized_model_path: str | os.PathLike | None = None) -> Any:
    """Create an ``onnxruntime.InferenceSession`` for a quadexport model.

    Args:
        path: the ``.onnx`` file (or a ModelProto).
        provider: ``"cpu"`` or ``"cuda"`` (CUDA first, CPU for the rest; raises if CUDA does not really run).
        opt_level: graph optimisation level: ``"disable"``, ``"basic"``, ``"extended"`` or ``"all"``.
        threads: intra-op threads (``None``: onnxruntime's default, one per core).
        allow_spinning: let idle worker threads spin (faster back-to-back runs, burns CPU);
            ``session.intra_op.allow_spinning`` is set to ``"0"`` otherwise.
        kernel_library: ``"auto"``, ``"always"``/``True``, ``"never"``/``False`` or a path (see module docstring).
        optimized_model_path: where onnxruntime should save the optimised graph (for inspection).

    Returns:
        The session; ``session.quadexport_kernel`` is the registered library path or ``None``.

    Raises:
        KernelLibraryNotFound: the model needs the kernel library and it is not built.
        ProviderUnavailable: ``provider="cuda"`` but onnxruntime-gpu or the CUDA libraries are missing (a
            ``RuntimeError``).
        OnnxModelError: the file is unreadable or onnxruntime cannot load it (a ``ValueError``).
    """
    import onnxruntime as ort

    if opt_level not in OPT_LEVELS:
        raise UsageError(f"opt_level must be one of {', '.join(OPT_LEVELS)}, got {opt_level!r}")
    if provider not in ("cpu", "cuda"):
        raise UsageError(f"provider must be 'cpu' or 'cuda', got {provider!r}")
    if isinstance(path, onnx.ModelProto):
        from quadexport.exporter.extdata import uses_external_data

        if uses_external_data(path):
            raise UsageError("this ModelProto keeps its weights in an external data file, which onnxruntime cannot "
                             "find from serialised bytes: pass the .onnx file's path instead")
    info = model_info(path)
    lib = _resolve_kernel(info, kernel_library, provider)
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[opt_level]
    if threads is not None:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if allow_spinning else "0")
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    if lib is not None:
        so.register_custom_ops_library(str(lib))
    if provider == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ProviderUnavailable("provider='cuda' but this onnxruntime has no CUDAExecutionProvider: install "
                               "onnxruntime-gpu (pip install 'quadexport[gpu]'; it replaces the onnxruntime wheel)")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    src = path.SerializeToString() if isinstance(path, onnx.ModelProto) else str(path)
    try:
        sess = ort.InferenceSession(src, so, providers=providers)
    except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.InvalidProtobuf, ort.capi.onnxruntime_pybind11_state.NoSuchFile) as e:
        name = "the given ModelProto" if isinstance(path, onnx.ModelProto) else str(path)
        raise OnnxModelError(f"onnxruntime cannot load {name}: {str(e).splitlines()[0]}") from None
    if provider == "cuda" and sess.get_providers()[0] != "CUDAExecutionProvider":
        raise ProviderUnavailable(f"onnxruntime fell back to {sess.get_providers()}: the CUDA libraries (CUDA 12/13 "
                           f"runtime, cuBLAS, cuDNN 9) could not be loaded; install them (e.g. pip install "
                           f"'onnxruntime-gpu[cuda,cudnn]') or call onnxruntime.preload_dlls()")
    sess.quadexport_kernel = lib
    log.debug("session for %s: provider %s, opt level %s, kernel library %s",
              "a ModelProto" if isinstance(path, onnx.ModelProto) else path, provider, opt_level, lib or "none")
    return sess
