"""Runtimes that run exported files, in one registry: ``check --runtime``, ``bench --runtime`` and
``quadexport.deploy`` take any registered one.

- :class:`Runtime` (:mod:`~quadexport.runtimes.base`): the hooks, open a file (:class:`Session`), run a batch,
  say what it supports (:class:`Support`); :class:`Setting` says how a file is run.
- :func:`register_runtime`, :func:`list_runtimes`, :func:`get_runtime` (:mod:`~quadexport.runtimes.registry`);
  ``MODULE:CLASS`` names a runtime outside the package.

Built in, one module each: ``onnxruntime`` (:mod:`~.ort_cpu`), ``onnxruntime-cuda`` (:mod:`~.ort_cuda`),
``openvino`` (:mod:`~.openvino_cpu`), ``cpp`` (:mod:`~.cpp_client`, the ``examples/cpp`` client). Adding one: a
module with a :class:`Runtime` subclass and one :func:`register_runtime` call below.
"""

from __future__ import annotations

from quadexport.runtimes.base import (BF16_RTOL, LEVEL_NAMES, FileIO, Runtime, RuntimeUnavailable, Session, Setting,
                                      Support, file_io)
from quadexport.runtimes.cpp_client import CppClient
from quadexport.runtimes.openvino_cpu import OpenVinoCPU
from quadexport.runtimes.ort_cpu import OnnxruntimeCPU
from quadexport.runtimes.ort_cuda import OnnxruntimeCUDA
from quadexport.runtimes.registry import (get_runtime, list_runtimes, load_runtime, register_runtime, resolve_runtime,
                                          unregister_runtime)

__all__ = ["BF16_RTOL", "CppClient", "FileIO", "LEVEL_NAMES", "OnnxruntimeCPU", "OnnxruntimeCUDA", "OpenVinoCPU",
           "Runtime", "RuntimeUnavailable", "Session", "Setting", "Support", "file_io", "get_runtime",
           "list_runtimes", "load_runtime", "register_runtime", "resolve_runtime", "unregister_runtime"]

for _runtime in (OnnxruntimeCPU(), OnnxruntimeCUDA(), OpenVinoCPU(), CppClient()):
    register_runtime(_runtime)
