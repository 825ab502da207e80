"""What a runtime is: a class with three hooks (open a file, run a batch, say what it supports) and the two small
types they exchange, :class:`Setting` (how to run) and :class:`Session` (a file opened that way).

A runtime subclasses :class:`Runtime` and overrides

- :meth:`Runtime.supports` -> :class:`Support`: the export modes and dtypes it runs, external data, whether it can
  register quadexport's custom-op library (``libquadexport_ops.so``), its graph optimisation levels and precisions,
  and whether it is available on this machine (with the reason when not);
- :meth:`Runtime.open` -> :class:`Session`: the file opened with a :class:`Setting`;
- :meth:`Runtime.run` -> ``list[np.ndarray]``: one batch through a session, the outputs in graph order.

The generic parts (which settings a parity check runs, refusing a file the runtime cannot run, the one-line
"not available" error) are written here once; :meth:`Runtime.settings` is overridden only by runtimes whose
settings are not "optimisation levels x kernel/bodies" (OpenVINO: precisions).

Nothing here imports numpy, onnx or a runtime at module import: the CLI reads the registry to build ``--help``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from quadexport.errors import QuadexportError, UsageError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

__all__ = ["BF16_RTOL", "FileIO", "LEVEL_NAMES", "Runtime", "RuntimeUnavailable", "Session", "Setting", "Support",
           "file_io"]

LEVEL_NAMES = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}
"""onnxruntime graph optimisation levels (``opt_level=``) and the names check lines print for them."""
BF16_RTOL = 5e-2
"""Max relative L2 error when the runtime computes in bfloat16 (8-bit mantissa) although the file is float32."""


class RuntimeUnavailable(QuadexportError, RuntimeError):
    """The runtime asked for cannot run on this machine (the message says why and how to get it)."""


@dataclass(frozen=True)
class Support:
    """What a runtime runs, and whether it runs here.

    Attributes:
        modes: export modes (``quadexport.export(mode=)``) whose files it runs. A file without quadexport
            custom-domain nodes (decomposed, or lowered with ``lower_functions``) counts as ``decomposed``.
        dtypes: file dtypes it runs (metadata ``quadexport.dtype``; ``int8`` for QDQ files).
        external_data: reads files whose weights sit in an external ``.data`` file.
        kernel_library: can register ``libquadexport_ops.so`` (the fused kernels of the ``quadexport`` custom-op
            domain); needed for files whose quadexport nodes have no function body.
        opt_levels: graph optimisation levels it can be told to use (``()``: none, its own).
        precisions: inference precisions it is run at by a check (``()``: the file's own).
        in_process: runs in this Python process (``False``: each batch is a new process, so its latency includes
            loading the file).
        available: it can run on this machine now.
        reason: why not (empty when available).
        version: the engine's version, when known.
    """

    modes: tuple[str, ...] = ("decomposed",)
    dtypes: tuple[str, ...] = ("float32",)
    external_data: bool = True
    kernel_library: bool = False
    opt_levels: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()
    in_process: bool = True
    available: bool = True
    reason: str = ""
    version: str | None = None


@dataclass(frozen=True)
class Setting:
    """How to run a file: one configuration of a check (one column of lines) or of a bench row.

    Attributes:
        opt_level: graph optimisation level (runtimes with :attr:`Support.opt_levels`; ``None``: the default).
        kernel_library: ``"auto"``, ``"always"`` or ``"never"`` register the kernel library (see
            :func:`quadexport.make_session`).
        precision: inference precision (``"f32"``, ``"bf16"``; ``None``: the runtime's full precision).
        threads: intra-op threads (``None``: the runtime's choice).
        label: what a check line prints first (an opt level is printed as ``ORT_...``).
        variant: ``"bodies"``/``"kernel"`` for files with quadexport nodes, else ``""``.
        rtol: tolerance that replaces the file's default for this setting (reduced precision), ``None``: the file's.
    """

    opt_level: str | None = None
    kernel_library: str = "auto"
    precision: str | None = None
    threads: int | None = None
    label: str = ""
    variant: str = ""
    rtol: float | None = None


@dataclass
class FileIO:
    """A file's graph inputs (the first one's dims, batch included: ints, or names/``None`` for dynamic axes) and
    outputs, read from the protobuf without its weights."""

    input_names: list[str]
    input_dims: list[Any]
    output_names: list[str]


def file_io(path: str | os.PathLike) -> FileIO:
    """:class:`FileIO` of an ONNX file (initialisers listed as inputs are skipped)."""
    from quadexport.exporter.session import read_onnx

    proto = read_onnx(path)
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in inputs[0].type.tensor_type.shape.dim] if inputs else []
    return FileIO([i.name for i in inputs], dims, [o.name for o in proto.graph.output])


@dataclass
class Session:
    """A file opened by a runtime. :meth:`run` runs one batch.

    Attributes:
        runtime: the runtime that opened it.
        path: the ONNX file.
        setting: how it was opened.
        handle: the runtime's own object (an ``onnxruntime.InferenceSession``, an OpenVINO ``CompiledModel``, ...).
        input_names, output_names: the graph's, in order.
        kernel: the kernel library registered, or ``None``.
        devices: where it runs (execution providers, plugin), for reports.
    """

    runtime: Runtime
    path: Path
    setting: Setting
    handle: Any
    input_names: list[str]
    output_names: list[str]
    kernel: Path | None = None
    devices: list[str] = field(default_factory=list)

    def run(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs of one batch, in graph order."""
        return self.runtime.run(self, inputs)

    def feed(self, inputs: np.ndarray | tuple[np.ndarray, ...] | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``inputs`` as ``{input name: array}`` (one array: the first input; a tuple: one per input, in order)."""
        if isinstance(inputs, Mapping):
            return dict(inputs)
        if isinstance(inputs, tuple):
            return dict(zip(self.input_names, inputs))
        return {self.input_names[0]: inputs}


class Runtime:
    """Base of the runtimes. Subclasses set :attr:`name` (and :attr:`description`, :attr:`title`) and override
    :meth:`supports`, :meth:`open` and :meth:`run`; register an instance with
    :func:`quadexport.register_runtime`.

    Attributes:
        name: the ``--runtime`` value.
        description: one line for docs and listings.
        title: how messages name it (default: :attr:`name`).
        kernel_by_default: a parity check of a fused/function file also runs it on the kernel library when that is
            built (with :attr:`Support.kernel_library`).
    """

    name: str = ""
    description: str = ""
    title: str = ""
    kernel_by_default: bool = True

    # ----------------------------------------------------------------------------------------------------- hooks
    def supports(self) -> Support:
        """What this runtime runs and whether it is available here (cheap: called several times per check)."""
        raise NotImplementedError

    def open(self, path: str | os.PathLike, setting: Setting = Setting()) -> Session:
        """Open ``path`` with ``setting`` (errors: the runtime's own, e.g. :class:`OnnxModelError`)."""
        raise NotImplementedError

    def run(self, session: Session, inputs: np.ndarray | Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run one batch through ``session``; the outputs as numpy arrays, in graph order."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------- generic behaviour
    def label(self, setting: Setting) -> str:
        """The first column of a check line for ``setting`` (the opt level, else the precision or the name)."""
        return setting.opt_level or setting.precision or self.name

    def require(self) -> Support:
        """:meth:`supports`, or :class:`RuntimeUnavailable` (one line: why, and how to get it)."""
        sup = self.supports()
        if not sup.available:
            raise RuntimeUnavailable(f"runtime {self.name!r} is not available here: {sup.reason}")
        return sup

    def refuse(self, path: str | os.PathLike, mode: str, dtype: str, external_data: bool) -> None:
        """Raise :class:`UsageError` for a file this runtime cannot run (``mode``: ``decomposed`` for files without
        quadexport nodes)."""
        sup = self.supports()
        who = self.title or self.name
        if mode not in sup.modes:
            fix = ("; re-export it with mode='decomposed' (CLI: --mode decomposed) or lower it with "
                   "quadexport.exporter.lower_functions" if "decomposed" in sup.modes else "")
            raise UsageError(f"{path} is a {mode}-mode file (quadexport custom ops), which {who} cannot run "
                             f"(it runs {', '.join(sup.modes)} files){fix}")
        if dtype not in sup.dtypes:
            raise UsageError(f"{path} is a {dtype} file, which {who} does not run (it runs "
                             f"{', '.join(sup.dtypes)} files)")
        if external_data and not sup.external_data:
            raise UsageError(f"{path} keeps its weights in an external data file, which {who} cannot read; "
                             f"re-export it without external data")

    def settings(self, info: Any, opt_levels: Sequence[str] = ("disable", "all"), kernel_library: str = "auto",
                 threads: int | None = None) -> tuple[list[Setting], list[str]]:
        """The settings a parity check runs a file in, and notes about what it leaves out.

        Args:
            info: the file's :class:`~quadexport.exporter.session.ModelInfo`.
            opt_levels: requested optimisation levels (ignored by runtimes without any).
            kernel_library: ``auto`` (function bodies and, when built, the kernel), ``always`` or ``never``.
            threads: intra-op threads.
        """
        sup = self.supports()
        levels: list[str | None] = list(opt_levels) if sup.opt_levels else [None]
        bad = [lv for lv in levels if lv is not None and lv not in sup.opt_levels]
        if bad:
            raise UsageError(f"unknown opt level(s) {', '.join(map(str, bad))} for runtime {self.name!r}; choose "
                             f"from {', '.join(sup.opt_levels)}")
        variants, notes = self.variants(info, kernel_library, sup)
        out = []
        for level in levels:
            for variant, policy in variants:
                s = Setting(opt_level=level, kernel_library=policy, threads=threads, variant=variant)
                out.append(replace(s, label=self.label(s)))
        return out, notes

    def variants(self, info: Any, kernel_library: str, sup: Support) -> tuple[list[tuple[str, str]], list[str]]:
        """``(label, kernel_library policy)`` of each way a file is run (bodies, kernel), and notes."""
        if not info.uses_domain or not sup.kernel_library:
            return [("", "auto" if sup.kernel_library else "never")], []
        policy = {True: "always", False: "never", None: "never"}.get(kernel_library, kernel_library)
        if policy not in ("auto", "always", "never"):
            raise UsageError(f"kernel_library must be 'auto', 'always' or 'never', got {kernel_library!r}")
        if policy != "auto":
            return [("kernel" if policy == "always" else "bodies", policy)], []
        from quadexport.exporter.session import find_kernel_library

        out = [] if info.needs_kernel else [("bodies", "never")]
        if (self.kernel_by_default and find_kernel_library() is not None) or info.needs_kernel:
            out.append(("kernel", "always"))  # without the library, opening raises the clear error
            return out, []
        never = "; the fused kernel never ran" if info.mode == "fused" or info.runtime == "fused" else ""
        if not self.kernel_by_default:
            return out, [f"{self.name}: the kernel library runs on the CPU only{never}: checked with the function "
                         "bodies (pass kernel_library='always' to check the kernel too)"]
        return out, [f"kernel library not built{never}: checked with the function bodies only (build it with "
                     "`make kernels`)"]

    def __repr__(self) -> str:
        return f"<runtime {self.name!r}>"
