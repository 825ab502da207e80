"""ONNX export of models built from quadexport and torch layers.

- :func:`export` (:mod:`~quadexport.exporter.api`): a model → one ``.onnx`` file; also ``quadexport.export``.
- export targets (``mode=``), one registry (:mod:`~quadexport.exporter.targets`): :func:`list_export_targets`,
  :func:`get_export_target`; the opset range (:func:`check_opset`).
- :func:`make_session` (:mod:`~quadexport.exporter.session`): onnxruntime sessions, kernel library policy.
- :func:`lower_functions` / :func:`strip_functions` (:mod:`~quadexport.exporter.function`): standard-op and
  kernel-only forms of a function/fused model.
- :mod:`~quadexport.exporter.ops` (the ``quadexport`` custom-op domain), :mod:`~quadexport.exporter.kernel_lib`
  (the fused kernel library), :mod:`~quadexport.exporter.fold` (BatchNorm folding), :mod:`~quadexport.exporter.fp16`.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public names → defining module; loaded on first use, so importing the registry (the CLI does, to list the modes)
# does not pull in onnx and the exporter.
_LAZY = {"export": "api", "lower_functions": "function", "strip_functions": "function", "make_session": "session",
         **{n: "targets" for n in ("DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET", "ExportTarget", "check_opset",
                                   "get_export_target", "list_export_targets", "register_export_target")}}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
