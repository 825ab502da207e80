"""Neuron-type registry: which linear branches a quadratic neuron has and how they combine.

A neuron type is a list of *branches* (each one linear map: a ``nn.Linear``/``nn.ConvNd`` with the layer's own
configuration) and a ``combine`` function of their outputs. Branch ``input`` is ``"x"`` or ``"x2"`` (the input
squared, computed as ``x * x``, never ``pow``).

Branch roles follow Fan et al. (TNNLS 2023):

- ``r``: the primary linear branch ``W_r x + b_r`` (the ReLU twin's weights live here).
- ``g``: the gate ``W_g x + b_g``, multiplied with ``r``. ReLinear init: ``W_g = 0, b_g = 1``.
- ``b``: the power branch ``W_b (x*x) + c``. ReLinear init: ``W_b = 0, c = 0``.
- ``l``: an extra linear branch added to the output (QuadraLib). ReLinear init: zero.

``quadratic`` branches are the ones ReLinear regularises (learning-rate ratio ``sg``, penalty ``sw``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from quadexport.errors import UsageError, did_you_mean

Tensor = torch.Tensor


@dataclass(frozen=True)
class Branch:
    """One linear branch of a quadratic neuron.

    Args:
        name: attribute name of the branch module inside the layer (``r``, ``g``, ``b``, ``l``).
        input: ``"x"`` (the layer input) or ``"x2"`` (the input squared, ``x * x``).
        quadratic: whether ReLinear treats this branch's parameters as quadratic terms.
        bias: ``"always"`` (bias even when the layer has ``bias=False``), ``"layer"`` (follows the layer's
            ``bias`` argument) or ``"never"``.
        init: ReLinear init of the branch: ``"kaiming"`` (weight Kaiming-normal, bias 0), ``"one"`` (weight 0,
            bias 1) or ``"zero"`` (weight 0, bias 0).
        kind: shape of the branch's linear map: ``"full"`` (same kernel as the layer), ``"pointwise"`` (1×1 conv
            with the layer's stride; dense layers: full) or ``"depthwise"`` (groups = in_channels, same kernel).
    """

    name: str
    input: str = "x"
    quadratic: bool = False
    bias: str = "layer"
    init: str = "kaiming"
    kind: str = "full"


@dataclass(frozen=True)
class NeuronType:
    """A registered neuron type.

    Args:
        name: registry key (``neuron=`` argument of the layers).
        formula: human-readable formula.
        branches: the branches, in creation order.
        combine: function of a ``{branch name: output}`` mapping returning the layer output.
        relu_equivalent_init: ReLinear init makes the layer compute exactly its ``r`` branch.
        fan_form: how the neuron maps onto the Fan form ``r*g + b(x*x)`` used by the custom ONNX op
            (``None`` if it cannot). Keys: ``"g_plus_one"`` (qres: the gate gets +1 on its bias),
            ``"g_none"`` (no gate, use W_g=0, b_g=1), ``"r_none"`` (no r branch), ``"b_none"``.
        reference: where the type comes from.
    """

    name: str
    formula: str
    branches: tuple[Branch, ...]
    combine: Callable[[Mapping[str, Tensor]], Tensor]
    relu_equivalent_init: bool = True
    fan_form: tuple[str, ...] | None = ()
    reference: str = ""

    @property
    def quadratic_branches(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.branches if b.quadratic)

    @property
    def needs_square(self) -> bool:
        return any(b.input == "x2" for b in self.branches)

    def mac_factor(self) -> int:
        """Number of full-size linear maps per output (MAC cost relative to a linear layer, full branches only)."""
        return sum(1 for b in self.branches if b.kind == "full")


_REGISTRY: dict[str, NeuronType] = {}


def register_neuron(neuron: NeuronType) -> NeuronType:
    """Add a neuron type to the registry and return it; a name registered twice raises ``ValueError`` (use
    :func:`unregister_neuron` first to redefine a type)."""
    if neuron.name == "relu":
        raise UsageError("the neuron name 'relu' is reserved for the ReLU twin; pick another name")
    if neuron.name in _REGISTRY:
        raise UsageError(f"neuron type {neuron.name!r} is already registered; pick another name "
                         f"(or unregister_neuron({neuron.name!r}) first)")
    _REGISTRY[neuron.name] = neuron
    return neuron


def unregister_neuron(name: str) -> NeuronType:
    """Remove a registered neuron type (e.g. one a test or experiment defined) and return it."""
    get_neuron(name)
    return _REGISTRY.pop(name)


def get_neuron(name: str) -> NeuronType:
    """Look up a neuron type by name; unknown names raise :class:`~quadexport.errors.UsageError` (a ``ValueError``)
    with a suggestion and the known names. ``"name:arg"`` gives a parametrised type (``"lowrank:8"``: rank 8)."""
    base, sep, arg = name.partition(":") if isinstance(name, str) else (name, "", "")
    try:
        nt = _REGISTRY[base]
    except (KeyError, TypeError):
        raise UsageError(f"unknown neuron type {name!r}{did_you_mean(base, _REGISTRY)}; known: "
                         f"{', '.join(list_neurons())} (or 'relu' for the ReLU twin)") from None
    if not sep:
        return nt
    if not hasattr(nt, "with_arg"):  # parametrised types ("lowrank:8", quadexport.layers.lowrank) only
        raise UsageError(f"neuron type {base!r} takes no ':' argument; use {base!r}")
    return nt.with_arg(arg)


def registered_neurons() -> list[NeuronType]:
    """The registered neuron types, in registration order (built-in types first)."""
    return list(_REGISTRY.values())


def list_neurons() -> list[str]:
    """Names of the registered quadratic neuron types."""
    return sorted(_REGISTRY)


@torch.no_grad()
def init_branch(module: nn.Module, init: str) -> None:
    """Initialise one branch's linear map in place: ``"kaiming"`` (weight Kaiming-normal, bias 0), ``"one"``
    (weight 0, bias 1: the ReLinear gate) or ``"zero"`` (weight 0, bias 0: the ReLinear power branch)."""
    if init == "kaiming":
        nn.init.kaiming_normal_(module.weight)
        if module.bias is not None:
            module.bias.zero_()
    else:
        module.weight.zero_()
        if module.bias is not None:
            module.bias.fill_(1.0 if init == "one" else 0.0)


def _fan(o: Mapping[str, Tensor]) -> Tensor:
    return o["r"] * o["g"] + o["b"]


def _compact(o: Mapping[str, Tensor]) -> Tensor:
    return o["r"] + o["b"]


def _t2(o: Mapping[str, Tensor]) -> Tensor:
    return o["b"]


def _t4(o: Mapping[str, Tensor]) -> Tensor:
    return o["r"] * o["g"]


def _quadralib(o: Mapping[str, Tensor]) -> Tensor:
    return o["r"] * o["g"] + o["l"]


def _qres(o: Mapping[str, Tensor]) -> Tensor:
    r = o["r"]
    return r * o["g"] + r


R = Branch("r", "x", quadratic=False, bias="layer", init="kaiming")
G = Branch("g", "x", quadratic=True, bias="always", init="one")
B = Branch("b", "x2", quadratic=True, bias="layer", init="zero")

register_neuron(NeuronType(
    "fan", "(W_r x + b_r) * (W_g x + b_g) + W_b (x*x) + c", (R, G, B), _fan,
    fan_form=(), reference="Fan et al., TNNLS 2023 (ReLinear)"))
register_neuron(NeuronType(
    "compact", "W_r x + b_r + W_b (x*x) + c", (R, B), _compact,
    fan_form=("g_none",), reference="Fan et al., compact quadratic neuron"))
register_neuron(NeuronType(
    "t2", "W (x*x) + b", (Branch("b", "x2", quadratic=True, bias="layer", init="kaiming"),), _t2,
    relu_equivalent_init=False, fan_form=("r_none", "g_none"), reference="QuadraLib T2"))
register_neuron(NeuronType(
    "t4", "(W_a x + b_a) * (W_b x + b_b)", (R, G), _t4,
    fan_form=("b_none",), reference="QuadraLib T4 (gate bias kept for ReLinear)"))
register_neuron(NeuronType(
    "quadralib", "(W_a x) * (W_b x) + W_c x", (R, G, Branch("l", "x", quadratic=False, bias="layer", init="zero")),
    _quadralib, fan_form=None, reference="QuadraLib / QuadraNet (Xu et al., MLSys 2022)"))
register_neuron(NeuronType(
    "qres", "(W_1 x) * (W_1' x) + W_1 x", (R, Branch("g", "x", quadratic=True, bias="layer", init="zero")),
    _qres, fan_form=("g_plus_one", "b_none"), reference="QRes (Bu & Karpatne, SDM 2021)"))
