"""Function (and fused) mode: one ``quadexport`` node per quadratic layer, with a model-local function body.

Export path: each quadratic layer that has a Fan form (``NeuronType.fan_form`` is not ``None``), zero padding and
full-size branches is swapped for :class:`FunctionQuadLinear` / :class:`FunctionQuadConv`, which call the
``torch.ops.quadexport.*`` custom ops with the seven Fan-form tensors (absent branches and biases become zero/one
tensors: compact → ``W_g=0, B_g=1``; T4/QRes → ``W_b=0, C=0``; QRes → ``B_g+1``; T2 → ``W_r=0, B_r=0``). The
exporter maps those ops to ``QuadLinear``/``QuadConv1d``/``QuadConv2d`` nodes; because it inlines every
model-local function, :func:`attach_functions` appends the bodies *after* export. Layers without a Fan form
(QuadraLib) or with ``padding_mode != "zeros"`` stay decomposed, with a warning. ``lowrank`` layers become one
``quadexport.lowrank`` node each (:mod:`quadexport.exporter.lowrank_ops`; its body is the decomposed graph).

:func:`lower_functions` inlines the bodies, giving a standard-op model; :func:`strip_functions` drops them, giving a
kernel-only model (needs the kernel library at run time).
"""

from __future__ import annotations

import copy
import warnings

import onnx
import torch
from torch import nn

from quadexport.errors import UsageError
from quadexport.exporter import lowrank_ops, ops
from quadexport.exporter.decomposed import replace_modules
from quadexport.exporter.lowrank_ops import FunctionLowRank
from quadexport.layers.neurons import get_neuron, list_neurons
from quadexport.layers.quad import QuadLayer, QuadLinear, _QuadConvNd

Tensor = torch.Tensor

__all__ = ["FunctionQuadConv", "FunctionQuadLinear", "attach_functions", "fan_tensors", "fused_neurons",
           "has_lowrank_op", "lower_functions", "prepare_function", "quadexport_nodes", "refuse_unfused",
           "strip_functions", "unsupported_reason"]


def has_lowrank_op(layer: QuadLayer) -> bool:
    """The layer's neuron type is low-rank (``lowrank``): it exports as one ``quadexport.lowrank`` node, which has a
    function body but no fused kernel."""
    return hasattr(layer.neuron_type, "rank")


def fused_neurons() -> list[str]:
    """Neuron types the fused kernel library runs (a Fan form and full-size branches)."""
    return [n for n in list_neurons() if get_neuron(n).fan_form is not None
            and all(b.kind == "full" for b in get_neuron(n).branches)]


def refuse_unfused(model: nn.Module) -> None:
    """Raise :class:`UsageError` (one line) if ``model`` has a layer the fused target cannot run (low-rank)."""
    bad = [(name, m.neuron) for name, m in model.named_modules() if isinstance(m, QuadLayer) and has_lowrank_op(m)]
    if bad:
        raise UsageError(f"mode='fused': neuron {bad[0][1]!r} has no fused kernel ({len(bad)} layer(s), first "
                         f"{bad[0][0]!r}); the kernel library runs {', '.join(fused_neurons())}: export with "
                         f"mode='function' or 'decomposed'")


def unsupported_reason(layer: QuadLayer) -> str | None:
    """Why ``layer`` cannot become one ``quadexport`` node (``None`` if it can)."""
    nt = layer.neuron_type
    lowrank = has_lowrank_op(layer)  # its own op: quadexport.exporter.lowrank_ops
    if nt.fan_form is None and not lowrank:
        return f"neuron {layer.neuron!r} has no Fan form"
    if any(b.kind != "full" for b in nt.branches) and not lowrank:
        return f"neuron {layer.neuron!r} has non-full branches"
    if not isinstance(layer, (QuadLinear, _QuadConvNd)):
        return f"{type(layer).__name__}: the quadexport op and the fused kernel cover forward convolutions only"
    if isinstance(layer, _QuadConvNd):
        if layer.padding_mode != "zeros":
            return f"padding_mode={layer.padding_mode!r}"
        if layer._dims not in (1, 2):
            return f"{layer._dims}-d convolution"
    return None


@torch.no_grad()
def fan_tensors(layer: QuadLayer) -> dict[str, Tensor]:
    """The seven Fan-form inputs ``w_r, b_r, w_g, b_g, w_b, c`` (plus nothing else) of a quadratic layer, following
    its neuron type's ``fan_form`` (copies; the layer is not modified)."""
    form = set(layer.neuron_type.fan_form or ())
    names = {b.name for b in layer.neuron_type.branches}
    ref = next(getattr(layer, n) for n in ("r", "g", "b") if n in names)
    shape, m = ref.weight.shape, ref.weight.shape[0]
    zeros_w = lambda: torch.zeros(shape, dtype=ref.weight.dtype)  # noqa: E731
    zeros_b = lambda: torch.zeros(m, dtype=ref.weight.dtype)  # noqa: E731

    def wb(name: str) -> tuple[Tensor, Tensor]:
        mod = getattr(layer, name)
        return mod.weight.detach().clone(), (mod.bias.detach().clone() if mod.bias is not None else zeros_b())

    w_r, b_r = (zeros_w(), zeros_b()) if "r_none" in form or "r" not in names else wb("r")
    if "g_none" in form or "g" not in names:
        w_g, b_g = zeros_w(), torch.ones(m, dtype=ref.weight.dtype)
    else:
        w_g, b_g = wb("g")
        if "g_plus_one" in form:
            b_g = b_g + 1.0
    w_b, c = (zeros_w(), zeros_b()) if "b_none" in form or "b" not in names else wb("b")
    return {"w_r": w_r, "b_r": b_r, "w_g": w_g, "b_g": b_g, "w_b": w_b, "c": c}


class _FanBuffers(nn.Module):
    def _set(self, layer: QuadLayer) -> None:
        for k, v in fan_tensors(layer).items():
            self.register_buffer(k, v)

    def _args(self) -> tuple[Tensor, ...]:
        return self.w_r, self.b_r, self.w_g, self.b_g, self.w_b, self.c


class FunctionQuadLinear(_FanBuffers):
    """Export form of a :class:`QuadLinear`: ``torch.ops.quadexport.quad_linear`` on the Fan tensors (inputs of
    rank ≠ 2 are flattened to ``[N, K]`` and reshaped back).

    Args:
        layer: the quadratic dense layer (copied).
    """

    def __init__(self, layer: QuadLinear) -> None:
        super().__init__()
        self._set(layer)
        self.in_features, self.out_features = layer.in_features, layer.out_features

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return torch.ops.quadexport.quad_linear(x, *self._args())
        lead = x.shape[:-1]
        y = torch.ops.quadexport.quad_linear(x.reshape(-1, self.in_features), *self._args())
        return y.reshape(*lead, self.out_features)


def conv_pads(layer: _QuadConvNd) -> list[int]:
    """Explicit ONNX pads (begin..., end...) of a quadratic conv, ``'same'``/``'valid'`` resolved as torch does."""
    n = layer._dims
    if layer.padding == "valid":
        return [0] * (2 * n)
    if layer.padding == "same":
        total = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size)]
        return [t // 2 for t in total] + [t - t // 2 for t in total]
    return list(layer.padding) * 2


class FunctionQuadConv(_FanBuffers):
    """Export form of a :class:`QuadConv1d`/:class:`QuadConv2d`: ``torch.ops.quadexport.quad_conv{1,2}d`` on the Fan
    tensors with explicit ONNX ``strides``/``pads``/``dilations``/``group``.

    Args:
        layer: the quadratic conv layer (copied).
    """

    def __init__(self, layer: _QuadConvNd) -> None:
        super().__init__()
        self._set(layer)
        self.dims = layer._dims
        self.strides = [int(s) for s in layer.stride]
        self.pads = conv_pads(layer)
        self.dilations = [int(d) for d in layer.dilation]
        self.group = int(layer.groups)

    def forward(self, x: Tensor) -> Tensor:
        op = torch.ops.quadexport.quad_conv1d if self.dims == 1 else torch.ops.quadexport.quad_conv2d
        return op(x, *self._args(), self.strides, self.pads, self.dilations, self.group)


def prepare_function(model: nn.Module) -> list[tuple[str, str]]:
    """Swap every supported quadratic layer for its custom-op form (in place; call it on a copy).

    Returns:
        ``(layer name, reason)`` of the layers kept decomposed (a warning is also issued for them).
    """
    kept: list[tuple[str, str]] = []

    def swap(name: str, m: nn.Module) -> nn.Module | None:
        if not isinstance(m, QuadLayer):
            return None
        reason = unsupported_reason(m)
        if reason is not None:
            kept.append((name, reason))
            return m
        if has_lowrank_op(m):
            return FunctionLowRank(m, None if isinstance(m, QuadLinear) else conv_pads(m))
        return FunctionQuadLinear(m) if isinstance(m, QuadLinear) else FunctionQuadConv(m)

    replace_modules(model, swap)
    if kept:
        warnings.warn(f"{len(kept)} quadratic layer(s) stay decomposed in function mode: "
                      + "; ".join(f"{n} ({r})" for n, r in kept), RuntimeWarning, stacklevel=2)
    return kept


# ---------------------------------------------------------------------------------------------------------------
# ModelProto passes
# ---------------------------------------------------------------------------------------------------------------

def _ai_onnx_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    raise UsageError("model has no ai.onnx opset import")


def quadexport_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes of the main graph in the ``quadexport`` domain."""
    return [n for n in model.graph.node if n.domain == ops.DOMAIN]


def attach_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add the model-local function bodies of the ``quadexport`` ops used by ``model`` (in place; returned).

    The bodies are written against the model's ai.onnx opset; the ``quadexport`` opset import is added if missing.
    """
    for mod in (ops, lowrank_ops):  # the Fan ops and the low-rank ops (own domain, no kernel)
        used = {n.op_type for n in model.graph.node if n.domain == mod.DOMAIN}
        have = {f.name for f in model.functions if f.domain == mod.DOMAIN}
        for fp in mod.function_protos(sorted(used - have), _ai_onnx_opset(model)):
            model.functions.append(fp)
        if used and not any(o.domain == mod.DOMAIN for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid(mod.DOMAIN, mod.DOMAIN_VERSION))
    return model


def strip_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without the ``quadexport`` function bodies (runs only with the kernel library)."""
    out = copy.deepcopy(model)
    keep = [f for f in out.functions if f.domain != ops.DOMAIN]
    del out.functions[:]
    out.functions.extend(keep)
    return out


def lower_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Lower a function/fused-mode model to standard ONNX ops: every ``quadexport`` node is replaced by its function
    body (``onnx.inliner.inline_local_functions``), the functions and the ``quadexport`` opset import are removed.
    The input is not modified.

    Raises:
        UsageError: a ``quadexport`` node has no function body (e.g. after :func:`strip_functions`): the bodies are
            re-attached first, so this only happens for unknown op types.
    """
    import onnx.inliner

    work = attach_functions(copy.deepcopy(model))
    lowered = onnx.inliner.inline_local_functions(work)
    domains = (ops.DOMAIN, lowrank_ops.DOMAIN)
    left = [n.op_type for n in lowered.graph.node if n.domain in domains]
    if left:
        raise UsageError(f"cannot lower {ops.DOMAIN} nodes without a function body: {sorted(set(left))}")
    keep = [f for f in lowered.functions if f.domain not in domains]
    del lowered.functions[:]
    lowered.functions.extend(keep)
    imports = [o for o in lowered.opset_import if o.domain not in domains]
    del lowered.opset_import[:]
    lowered.opset_import.extend(imports)
    props = {p.key: p.value for p in lowered.metadata_props}
    props["quadexport.lowered_from"] = props.get("quadexport.export_mode", "function")
    props["quadexport.export_mode"] = "decomposed"
    props.pop("quadexport.runtime", None)
    del lowered.metadata_props[:]
    onnx.helper.set_model_props(lowered, props)
    return lowered
