"""quadexport: quadratic neural networks with ReLinear, exported to ONNX with proven onnxruntime parity.

Public API::

    from quadexport import QuadLinear, QuadConv1d, QuadConv2d, create_model, list_models, list_neurons, load
    quadexport.export(model, "m.onnx", mode="decomposed")
    quadexport.check("m.onnx", model).ok
    quadexport.check("m.onnx", model, runtime="openvino").ok    # any of quadexport.list_runtimes()
    qmodel = quadexport.quadratize(trained_model, neuron="fan")  # any model; unchanged until fine-tuned
    amodel = quadexport.adopt(research_model, input_shape=(3, 32, 32))  # quadratic neurons written as plain layers

Every name loads its module (torch, onnx, onnxruntime) on first use, so ``import quadexport`` and
``quadexport --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from quadexport._version import __version__

# Public name -> the module that defines it (imported on first access).
_LAZY = {**{n: "quadexport.layers" for n in ("QuadConv1d", "QuadConv2d", "QuadConvTranspose1d",
                                             "QuadConvTranspose2d", "QuadLinear", "get_neuron", "list_neurons",
                                             "register_neuron", "unregister_neuron")},
         **{n: "quadexport.zoo" for n in ("count_macs", "count_params", "list_models")},
         "create_model": "quadexport.transforms.build",
         "load": "quadexport.runs.checkpoint", "export": "quadexport.exporter.api",
         "make_session": "quadexport.exporter.session", "check": "quadexport.check",
         "list_runtimes": "quadexport.runtimes", "register_runtime": "quadexport.runtimes",
         "quadratize": "quadexport.transforms.quadratizer", "QuadratizeReport": "quadexport.transforms.quadratizer",
         "adopt": "quadexport.transforms.adopter", "AdoptReport": "quadexport.transforms.adopter", "relu_twin": "quadexport.transforms.adopter"}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod = importlib.import_module(_LAZY[name])
        # quadexport.check is both a module and the function it defines: bind the function (a submodule import
        # would otherwise leave the module object here).
        value = getattr(mod, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'quadexport' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
