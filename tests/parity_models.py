"""Models of the float64 parity tests and measurements (issue #29): the deep quadratic MLP whose own float32 floor is
far above 1e-5, and helpers that edit an exported file's weights (the negative control)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

import quadexport as q


class DeepQuadMLP(nn.Module):
    """``depth`` QuadLinear (fan) layers of ``width``, quadratic branches (g, b) perturbed by N(0, std²) on top of
    the ReLinear init, tanh after every third layer, a linear head: float32 loses ~4 digits over its depth."""

    def __init__(self, in_features: int = 32, width: int = 64, depth: int = 16, num_classes: int = 10,
                 std: float = 0.08, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        dims = [in_features] + [width] * depth
        self.layers = nn.ModuleList(q.QuadLinear(a, b, neuron="fan") for a, b in zip(dims[:-1], dims[1:]))
        with torch.no_grad():
            for layer in self.layers:
                for branch in (layer.g, layer.b):
                    branch.weight.add_(torch.randn(branch.weight.shape, generator=g) * std)
        self.head = nn.Linear(width, num_classes)
        self.quadexport_meta = {"input_shape": [in_features]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i % 3 == 2:
                x = torch.tanh(x)
        return self.head(x)


def scale_largest_weight(src: str | Path, dst: str | Path, factor: float) -> str:
    """Copy ONNX file ``src`` to ``dst`` with its largest float initializer multiplied by ``factor``; returns its
    name."""
    proto = onnx.load(str(src))
    init = max((t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT),
               key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(init).astype(np.float32) * np.float32(factor)
    init.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), init.name))
    onnx.save(proto, str(dst))
    return init.name
