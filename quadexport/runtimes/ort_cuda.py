"""onnxruntime on an NVIDIA GPU (``CUDAExecutionProvider``, CPU for the rest).

Available only where the onnxruntime wheel has the CUDA provider (``onnxruntime-gpu``, ``pip install
'quadexport[gpu]'``) and the driver reports a device; :meth:`~OnnxruntimeCUDA.supports` says which is missing.
Sessions are asserted to really run on CUDA (onnxruntime silently falls back to the CPU when the CUDA libraries do
not load; :func:`quadexport.make_session` turns that into an error). The kernel library is a CPU library: a check runs
function/fused files on their bodies (on the GPU) unless told ``kernel_library="always"``.
"""

from __future__ import annotations

import ctypes
from dataclasses import replace

from quadexport.runtimes.base import Support
from quadexport.runtimes.ort_cpu import OnnxruntimeCPU

__all__ = ["OnnxruntimeCUDA", "cuda_devices"]


def cuda_devices() -> tuple[int, str]:
    """``(number of CUDA devices, why none)`` from the driver library (no torch, no session)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no NVIDIA driver here (libcuda.so.1 cannot be loaded)"
    if lib.cuInit(0) != 0:
        return 0, "the NVIDIA driver found no usable device (cuInit failed)"
    n = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(n)) != 0 or n.value < 1:
        return 0, "the NVIDIA driver reports no CUDA device"
    return n.value, ""


class OnnxruntimeCUDA(OnnxruntimeCPU):
    name = "onnxruntime-cuda"
    title = "onnxruntime (CUDA)"
    description = "onnxruntime, CUDAExecutionProvider (onnxruntime-gpu and a GPU)"
    provider = "cuda"
    kernel_by_default = False

    def supports(self) -> Support:
        sup = super().supports()
        if not sup.available:
            return sup
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return replace(sup, available=False, reason="this onnxruntime has no CUDAExecutionProvider: install "
                           "onnxruntime-gpu (pip install 'quadexport[gpu]'; it replaces the onnxruntime wheel)")
        n, why = cuda_devices()
        return sup if n else replace(sup, available=False, reason=why)
