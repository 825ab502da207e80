"""Layer factories shared by the zoo builders: ``neuron="relu"`` gives torch layers, anything else quadratic ones."""

from __future__ import annotations

from torch import nn

from quadexport.layers.quad import QuadConv2d, QuadLayer, QuadLinear


def conv(neuron: str, *args, **kwargs) -> nn.Module:
    """``nn.Conv2d`` for the ReLU twin, :class:`QuadConv2d` (with ``neuron``) otherwise; torch's signature."""
    return nn.Conv2d(*args, **kwargs) if neuron == "relu" else QuadConv2d(*args, neuron=neuron, **kwargs)


def linear(neuron: str, *args, **kwargs) -> nn.Module:
    """``nn.Linear`` for the ReLU twin, :class:`QuadLinear` (with ``neuron``) otherwise; torch's signature."""
    return nn.Linear(*args, **kwargs) if neuron == "relu" else QuadLinear(*args, neuron=neuron, **kwargs)


def kaiming_init(model: nn.Module) -> nn.Module:
    """Kaiming-normal init of plain conv/linear layers outside quadratic layers (quadratic layers keep ReLinear)."""
    inside = {id(m) for q in model.modules() if isinstance(q, QuadLayer) for m in q.modules()}
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and id(m) not in inside:
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model
