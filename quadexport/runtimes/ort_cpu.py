"""onnxruntime on the CPU (``CPUExecutionProvider``): the default runtime of ``check`` and ``bench``.

Sessions come from :func:`quadexport.make_session` (kernel-library policy, threads, spinning off, opt levels), so
fused files run on ``libquadexport_ops.so`` when it is built and function files on their inlined bodies.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from quadexport.runtimes.base import Runtime, Session, Setting, Support

if TYPE_CHECKING:
    import numpy as np

__all__ = ["OnnxruntimeCPU"]


class OnnxruntimeCPU(Runtime):
    name = "onnxruntime"
    title = "onnxruntime"
    description = "onnxruntime, CPUExecutionProvider; fused files on the kernel library when it is built"
    provider = "cpu"

    def supports(self) -> Support:
        from quadexport.exporter.targets import list_export_targets

        base = Support(modes=tuple(list_export_targets()), dtypes=("float32", "float16", "int8"), external_data=True,
                       kernel_library=True, opt_levels=("disable", "basic", "extended", "all"))
        try:
            import onnxruntime as ort
        except ImportError as e:
            return replace(base, available=False, reason=f"onnxruntime is not installed ({e})")
        return replace(base, version=ort.__version__)

    def open(self, path: str | os.PathLike, setting: Setting = Setting()) -> Session:
        from quadexport.exporter.session import make_session

        sess = make_session(path, self.provider, opt_level=setting.opt_level or "all", threads=setting.threads,
                            kernel_library=setting.kernel_library)
        return Session(self, Path(path), setting, sess, [i.name for i in sess.get_inputs()],
                       [o.name for o in sess.get_outputs()], kernel=sess.quadexport_kernel,
                       devices=list(sess.get_providers()))

    def run(self, session: Session, inputs: np.ndarray | Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return session.handle.run(None, session.feed(inputs))
