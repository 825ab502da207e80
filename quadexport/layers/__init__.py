"""Quadratic layers, the neuron-type registry (every built-in type, ``fan_pw``/``fan_dw`` and ``lowrank``
included, is registered on import), their initialisation, and the mixed/pruned layers of compressed models."""

from quadexport.layers import cheap  # noqa: F401  (registers fan_pw / fan_dw)
from quadexport.layers import lowrank  # noqa: F401  (registers lowrank)
from quadexport.layers.init import plain_init, relinear_init, relinear_init_layer
from quadexport.layers.mixed import MixedQuad, PermShortcut
from quadexport.layers.neurons import (Branch, NeuronType, get_neuron, list_neurons, register_neuron,
                                       unregister_neuron)
from quadexport.layers.quad import QUAD_LAYERS, QuadConv1d, QuadConv2d, QuadLayer, QuadLinear
from quadexport.layers.transposed import QuadConvTranspose1d, QuadConvTranspose2d

__all__ = ["Branch", "MixedQuad", "NeuronType", "PermShortcut", "QUAD_LAYERS", "QuadConv1d", "QuadConv2d",
           "QuadConvTranspose1d", "QuadConvTranspose2d", "QuadLayer", "QuadLinear", "get_neuron", "list_neurons",
           "plain_init", "register_neuron", "relinear_init", "relinear_init_layer", "unregister_neuron"]
