"""Cheap Fan neuron types: the quadratic branches ``g`` and ``b`` are small linear maps, so the quadratic overhead is
a fraction of the linear conv (issue #5, technique 2).

``y = (W_r x + b_r) * (W_g x + b_g) + W_b (x*x) + c`` as for ``"fan"``, with ``W_r`` the full kernel and:

- ``"fan_pw"``: ``W_g``, ``W_b`` are 1×1 convs (branch kind ``"pointwise"``, same stride). Conv cost of a 3×3
  layer: ``9 + 1 + 1`` per in×out channel pair instead of ``27`` (×1.22 of the linear conv instead of ×3). Dense
  layers: full.
- ``"fan_dw"``: ``W_g``, ``W_b`` are depthwise convs with the layer's kernel (branch kind ``"depthwise"``, ``groups =
  in_channels``); cost ``+2·k²`` per output channel, i.e. about ×1.0 of the linear conv. Conv layers only (dense
  layers have no depthwise form), and ``out_channels`` must be a multiple of ``in_channels``.

Both keep the ReLinear initialisation (``W_g = 0, b_g = 1, W_b = 0, c = 0``): a fresh layer computes its ``r``
branch. MAC counts (:func:`quadexport.count_macs`) see the real branch shapes through their forward hooks. They
export in every mode (decomposed: ``Conv``/``Mul``/``Add``; BatchNorm folds into ``g`` and ``b`` as for ``fan``).

The types are registered when this module is imported, which :mod:`quadexport.layers` (so ``import quadexport``)
does.
"""

from __future__ import annotations

from quadexport.layers.neurons import Branch, NeuronType, _fan, register_neuron

R = Branch("r", "x", quadratic=False, bias="layer", init="kaiming")

FAN_PW = register_neuron(NeuronType(
    "fan_pw", "(W_r x + b_r) * (W_g^{1x1} x + b_g) + W_b^{1x1} (x*x) + c",
    (R, Branch("g", "x", quadratic=True, bias="always", init="one", kind="pointwise"),
     Branch("b", "x2", quadratic=True, bias="layer", init="zero", kind="pointwise")),
    _fan, fan_form=(), reference="quadexport issue #5: Fan neuron with pointwise (1x1) quadratic branches"))

FAN_DW = register_neuron(NeuronType(
    "fan_dw", "(W_r x + b_r) * (W_g^{dw} x + b_g) + W_b^{dw} (x*x) + c",
    (R, Branch("g", "x", quadratic=True, bias="always", init="one", kind="depthwise"),
     Branch("b", "x2", quadratic=True, bias="layer", init="zero", kind="depthwise")),
    _fan, fan_form=(), reference="quadexport issue #5: Fan neuron with depthwise quadratic branches"))

CHEAP_NEURONS = ("fan_pw", "fan_dw")

__all__ = ["CHEAP_NEURONS", "FAN_DW", "FAN_PW"]
