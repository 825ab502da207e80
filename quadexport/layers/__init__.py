"""Quadratic layers and the neuron-type registry."""

from quadexport.layers.neurons import Branch, NeuronType, get_neuron, list_neurons, register_neuron
from quadexport.layers.quad import QUAD_LAYERS, QuadConv1d, QuadConv2d, QuadLayer, QuadLinear

__all__ = ["Branch", "NeuronType", "QUAD_LAYERS", "QuadConv1d", "QuadConv2d", "QuadLayer", "QuadLinear",
           "get_neuron", "list_neurons", "register_neuron"]
