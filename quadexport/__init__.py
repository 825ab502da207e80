"""quadexport: quadratic neural networks with ReLinear, exported to ONNX with proven onnxruntime parity.

Public API::

    from quadexport import QuadLinear, QuadConv1d, QuadConv2d, create_model, list_models, list_neurons, load
    quadexport.export(model, "m.onnx", mode="decomposed")
"""

from __future__ import annotations

from quadexport._version import __version__
from quadexport.layers import (QuadConv1d, QuadConv2d, QuadLinear, get_neuron, list_neurons, register_neuron,
                               unregister_neuron)
from quadexport.zoo import count_macs, count_params, create_model, list_models

__all__ = ["QuadConv1d", "QuadConv2d", "QuadLinear", "__version__", "count_macs", "count_params", "create_model",
           "export", "get_neuron", "list_models", "list_neurons", "load", "make_session", "register_neuron",
           "unregister_neuron"]


def __getattr__(name: str):
    # Heavier modules (onnx, onnxruntime) load on first use.
    if name == "load":
        from quadexport.checkpoint import load

        return load
    if name == "export":
        from quadexport.exporter.api import export

        return export
    if name == "make_session":
        from quadexport.exporter.session import make_session

        return make_session
    raise AttributeError(f"module 'quadexport' has no attribute {name!r}")
