"""OpenVINO's CPU plugin (optional extra ``quadexport[openvino]``).

Decomposed (standard-op) files only: function/fused files carry ``quadexport`` custom-domain nodes that OpenVINO
cannot run (lower them with ``quadexport.exporter.lower_functions`` or re-export with ``mode="decomposed"``).

Precision: the CPU plugin computes in bfloat16 by default on CPUs that have it, so every session is compiled with an
explicit ``INFERENCE_PRECISION_HINT``: ``f32`` unless a :class:`~quadexport.runtimes.base.Setting` asks for
``bf16``. A check runs ``f32`` (the file's tolerance) and, where the CPU supports bfloat16, a separate ``bf16``
setting held to :data:`~quadexport.runtimes.base.BF16_RTOL`.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from quadexport.errors import QuadexportError
from quadexport.runtimes.base import BF16_RTOL, Runtime, Session, Setting, Support, file_io

if TYPE_CHECKING:
    import numpy as np

__all__ = ["INSTALL_HINT", "LABEL", "OpenVinoCPU", "OpenVinoNotInstalled", "bf16_supported", "import_openvino"]

LABEL = "openvino-cpu"
"""What parity rows and check lines call this runtime."""
INSTALL_HINT = "pip install 'quadexport[openvino]'"


class OpenVinoNotInstalled(QuadexportError, ImportError):
    """The ``openvino`` package is not importable."""


def import_openvino() -> Any:
    """The ``openvino`` module, or :class:`OpenVinoNotInstalled` naming the extra to install."""
    try:
        import openvino
    except ImportError as e:
        raise OpenVinoNotInstalled(f"OpenVINO is not installed ({e}): {INSTALL_HINT}") from None
    return openvino


def bf16_supported(core: Any | None = None) -> bool:
    """Whether OpenVINO's CPU plugin can run bfloat16 on this CPU (``OPTIMIZATION_CAPABILITIES`` has ``BF16``)."""
    core = core if core is not None else import_openvino().Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoCPU(Runtime):
    name = "openvino"
    title = "OpenVINO"
    description = "OpenVINO CPU plugin at f32 (and bf16 where the CPU has it); decomposed files only"

    def __init__(self) -> None:
        self._core: Any = None

    def core(self) -> Any:
        """The (one, lazily created) ``openvino.Core``."""
        if self._core is None:
            self._core = import_openvino().Core()
        return self._core

    def supports(self) -> Support:
        base = Support(modes=("decomposed",), dtypes=("float32", "float16", "int8"), external_data=True)
        try:
            ov = import_openvino()
            precisions = ("f32", "bf16") if bf16_supported(self.core()) else ("f32",)
        except OpenVinoNotInstalled as e:
            return replace(base, available=False, reason=str(e))
        return replace(base, precisions=precisions, version=ov.get_version())

    def label(self, setting: Setting) -> str:
        return f"{LABEL} {setting.precision or 'f32'}"

    def settings(self, info: Any, opt_levels: Sequence[str] = (), kernel_library: str = "auto",
                 threads: int | None = None) -> tuple[list[Setting], list[str]]:
        """``f32`` and, where the CPU has bfloat16, ``bf16`` (held to ``BF16_RTOL``); opt levels do not apply."""
        sup = self.supports()
        out = [Setting(precision=p, threads=threads, rtol=BF16_RTOL if p == "bf16" else None) for p in sup.precisions]
        notes = [] if "bf16" in sup.precisions else ["bf16 not measured: this CPU has no bfloat16 support in OpenVINO "
                                                    "(OPTIMIZATION_CAPABILITIES lacks BF16)"]
        return [replace(s, label=self.label(s)) for s in out], notes

    def open(self, path: str | os.PathLike, setting: Setting = Setting()) -> Session:
        core = self.core()
        config = {"INFERENCE_PRECISION_HINT": setting.precision or "f32"}  # never the plugin's bf16 default
        if setting.threads is not None:
            config["INFERENCE_NUM_THREADS"] = str(int(setting.threads))
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        io = file_io(path)
        return Session(self, Path(path), setting, compiled, io.input_names, io.output_names,
                       devices=[f"OpenVINO CPU {config['INFERENCE_PRECISION_HINT']}"])

    def run(self, session: Session, inputs: np.ndarray | Mapping[str, np.ndarray]) -> list[np.ndarray]:
        import numpy as np

        compiled = session.handle
        feed = session.feed(inputs)
        result = compiled([feed[n] for n in session.input_names])
        return [np.asarray(result[out]) for out in compiled.outputs]
