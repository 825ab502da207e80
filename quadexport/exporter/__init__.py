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

from quadexport.exporter.api import export
from quadexport.exporter.function import lower_functions, strip_functions
from quadexport.exporter.session import make_session
from quadexport.exporter.targets import (DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, ExportTarget, check_opset,
                                         get_export_target, list_export_targets, register_export_target)

__all__ = ["DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET", "ExportTarget", "check_opset", "export", "get_export_target",
           "list_export_targets", "lower_functions", "make_session", "register_export_target", "strip_functions"]
