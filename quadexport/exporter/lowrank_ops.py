"""Function-mode ops of the low-rank neuron (``neuron="lowrank"``, :mod:`quadexport.layers.lowrank`).

Domain ``quadexport.lowrank`` v1 (its own domain: the fused kernel library owns ``quadexport`` and has no
low-rank kernel, so these nodes always run their function body). Ops ``QuadLowRankLinear``,
``QuadLowRankConv1d``, ``QuadLowRankConv2d``, inputs ``X, W_r, B_r, V, U_g, B_g, U_b, C`` (all required)::

    Z = X ⊛_v V                 (V's own pads: ``v_pads``; the layer's strides, dilations, group)
    Y = (X ⊛ W_r + B_r) ⊙ (Z ⊛ U_g + B_g) + (Z ⊙ Z) ⊛ U_b + C

where ⊛ is ``X W^T`` (dense) or an ONNX ``Conv`` (``U_g``, ``U_b`` are 1×1 with ``group``). The model-local
function body is exactly the decomposed graph (``Conv``/``Gemm``, ``Mul``, ``Add``). Like
:mod:`quadexport.exporter.ops` this module holds the schemas, the bodies, the ``torch.library`` custom ops with fake
kernels and the ``custom_translation_table`` entries; :class:`FunctionLowRank` is the layer's export form.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import onnx
import torch
import torch.nn.functional as F
from onnx import helper
from onnx.defs import OpSchema
from torch import nn

from quadexport.errors import UsageError

Tensor = torch.Tensor

DOMAIN = "quadexport.lowrank"
DOMAIN_VERSION = 1
INPUT_NAMES = ("X", "W_r", "B_r", "V", "U_g", "B_g", "U_b", "C")
CONV_ATTRS = ("strides", "pads", "v_pads", "dilations", "group")
OP_TYPES = ("QuadLowRankLinear", "QuadLowRankConv1d", "QuadLowRankConv2d")
_DOC = "Low-rank quadratic neuron: Y = (X*W_r + B_r) . ((X*V)*U_g + B_g) + ((X*V).(X*V))*U_b + C (quadexport)."

__all__ = ["DOMAIN", "DOMAIN_VERSION", "FunctionLowRank", "OP_TYPES", "function_protos", "register_schemas",
           "translation_table"]


def _schema(op_type: str) -> OpSchema:
    A = OpSchema.AttrType
    attrs = [] if op_type == "QuadLowRankLinear" else [
        OpSchema.Attribute(n, A.INT if n == "group" else A.INTS, f"Conv {n} ({'V' if n == 'v_pads' else 'W_r, V'})",
                           required=False) for n in CONV_ATTRS]
    return OpSchema(op_type, DOMAIN, DOMAIN_VERSION, doc=_DOC,
                    inputs=[OpSchema.FormalParameter(n, "T", f"input {n}") for n in INPUT_NAMES],
                    outputs=[OpSchema.FormalParameter("Y", "T", "output")],
                    type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(double)"], "floats")],
                    attributes=attrs)


def register_schemas() -> None:
    """Register the ``quadexport.lowrank`` op schemas with ``onnx.defs`` (idempotent)."""
    for op_type in OP_TYPES:
        if not onnx.defs.has(op_type, DOMAIN):
            onnx.defs.register_schema(_schema(op_type))


def _node(op: str, inputs: list[str], out: str, conv: bool, refs: Sequence[tuple[str, str]] = ()) -> onnx.NodeProto:
    if not conv:
        return helper.make_node("Gemm", inputs, [out], transB=1)
    node = helper.make_node("Conv", inputs, [out])
    A = onnx.AttributeProto
    for name, ref in refs:
        node.attribute.append(helper.make_attribute_ref(name, A.INT if name == "group" else A.INTS,
                                                        ref_attr_name=ref))
    return node


def function_proto(op_type: str, opset: int) -> onnx.FunctionProto:
    """The model-local function of ``op_type`` in standard ops: the decomposed graph of the layer."""
    if op_type not in OP_TYPES:
        raise UsageError(f"unknown {DOMAIN} op {op_type!r}; known: {', '.join(OP_TYPES)}")
    conv = op_type != "QuadLowRankLinear"
    full = [("strides", "strides"), ("pads", "pads"), ("dilations", "dilations"), ("group", "group")]
    v = [("strides", "strides"), ("pads", "v_pads"), ("dilations", "dilations"), ("group", "group")]
    nodes = [_node("Conv", ["X", "W_r", "B_r"], "R", conv, full), _node("Conv", ["X", "V"], "Z", conv, v),
             _node("Conv", ["Z", "U_g", "B_g"], "G", conv, [("group", "group")]),
             helper.make_node("Mul", ["Z", "Z"], ["Z2"]),
             _node("Conv", ["Z2", "U_b", "C"], "P", conv, [("group", "group")]),
             helper.make_node("Mul", ["R", "G"], ["RG"]), helper.make_node("Add", ["RG", "P"], ["Y"])]
    return helper.make_function(DOMAIN, op_type, list(INPUT_NAMES), ["Y"], nodes,
                                [helper.make_opsetid("", int(opset))],
                                attributes=list(CONV_ATTRS) if conv else [], doc_string=_DOC)


def function_protos(op_types: Sequence[str], opset: int) -> list[onnx.FunctionProto]:
    """:func:`function_proto` for each op of this domain in ``op_types`` (stable order)."""
    return [function_proto(t, opset) for t in OP_TYPES if t in set(op_types)]


# ---------------------------------------------------------------------------------------------------------------
# torch.library custom ops
# ---------------------------------------------------------------------------------------------------------------

@torch.library.custom_op("quadexport::lowrank_linear", mutates_args=())
def lowrank_linear(x: Tensor, w_r: Tensor, b_r: Tensor, v: Tensor, u_g: Tensor, b_g: Tensor, u_b: Tensor,
                   c: Tensor) -> Tensor:
    z = F.linear(x, v)
    return F.linear(x, w_r, b_r) * F.linear(z, u_g, b_g) + F.linear(z * z, u_b, c)


@lowrank_linear.register_fake
def _lowrank_linear_fake(x, w_r, b_r, v, u_g, b_g, u_b, c):
    return x.new_empty((x.shape[0], w_r.shape[0]))


def _padded(x: Tensor, pads: list[int], nd: int) -> tuple[Tensor, list[int]]:
    begin, end = pads[:nd], pads[nd:]
    if begin == end:
        return x, list(begin)
    torch_pad: list[int] = []
    for i in reversed(range(nd)):
        torch_pad += [begin[i], end[i]]
    return F.pad(x, torch_pad), [0] * nd


def _conv_impl(nd: int) -> Callable[..., Tensor]:
    conv = F.conv1d if nd == 1 else F.conv2d

    def impl(x: Tensor, w_r: Tensor, b_r: Tensor, v: Tensor, u_g: Tensor, b_g: Tensor, u_b: Tensor, c: Tensor,
             strides: list[int], pads: list[int], v_pads: list[int], dilations: list[int], group: int) -> Tensor:
        xr, pr = _padded(x, pads, nd)
        xv, pv = _padded(x, v_pads, nd)
        z = conv(xv, v, None, strides, pv, dilations, group)
        return (conv(xr, w_r, b_r, strides, pr, dilations, group) * conv(z, u_g, b_g, groups=group)
                + conv(z * z, u_b, c, groups=group))

    return impl


def _conv_fake(nd: int) -> Callable[..., Tensor]:
    def fake(x, w_r, b_r, v, u_g, b_g, u_b, c, strides, pads, v_pads, dilations, group):
        sp = [(x.shape[2 + i] + pads[i] + pads[i + nd] - dilations[i] * (w_r.shape[2 + i] - 1) - 1) // strides[i] + 1
              for i in range(nd)]
        return x.new_empty((x.shape[0], w_r.shape[0], *sp))

    return fake


lowrank_conv1d = torch.library.custom_op("quadexport::lowrank_conv1d", _conv_impl(1), mutates_args=())
lowrank_conv1d.register_fake(_conv_fake(1))
lowrank_conv2d = torch.library.custom_op("quadexport::lowrank_conv2d", _conv_impl(2), mutates_args=())
lowrank_conv2d.register_fake(_conv_fake(2))


def translation_table() -> dict[Any, Callable[..., Any]]:
    """``custom_translation_table`` entries mapping the custom ops onto ``quadexport.lowrank`` nodes."""
    import onnxscript

    register_schemas()
    qx = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)

    def linear(x, w_r, b_r, v, u_g, b_g, u_b, c):
        return qx.QuadLowRankLinear(x, w_r, b_r, v, u_g, b_g, u_b, c)

    def conv(op_type: str):
        def tr(x, w_r, b_r, v, u_g, b_g, u_b, c, strides, pads, v_pads, dilations, group):
            return getattr(qx, op_type)(x, w_r, b_r, v, u_g, b_g, u_b, c, strides=list(strides), pads=list(pads),
                                        v_pads=list(v_pads), dilations=list(dilations), group=int(group))
        return tr

    return {torch.ops.quadexport.lowrank_linear.default: linear,
            torch.ops.quadexport.lowrank_conv1d.default: conv("QuadLowRankConv1d"),
            torch.ops.quadexport.lowrank_conv2d.default: conv("QuadLowRankConv2d")}


# ---------------------------------------------------------------------------------------------------------------
# export form of a layer
# ---------------------------------------------------------------------------------------------------------------

class FunctionLowRank(nn.Module):
    """Export form of a ``lowrank`` QuadLinear/QuadConv1d/QuadConv2d: one ``quadexport.lowrank`` node.

    Args:
        layer: the quadratic layer (its tensors are copied).
        pads: the layer's explicit ONNX pads (conv layers; ``quadexport.exporter.function.conv_pads``).
    """

    def __init__(self, layer: nn.Module, pads: list[int] | None = None) -> None:
        super().__init__()
        r, v, u_g, u_b = layer.r, layer.g.v, layer.g.u, layer.b
        m = r.weight.shape[0]
        zeros = torch.zeros(m, dtype=r.weight.dtype)
        for name, t in (("w_r", r.weight), ("b_r", r.bias), ("v", v.weight), ("u_g", u_g.weight),
                        ("b_g", u_g.bias), ("u_b", u_b.weight), ("c", u_b.bias)):
            self.register_buffer(name, (t if t is not None else zeros).detach().clone())
        self.dense = not hasattr(layer, "kernel_size")
        self.in_features, self.out_features = getattr(layer, "in_features", 0), m
        if not self.dense:
            nd = layer._dims
            self.dims, self.strides = nd, [int(s) for s in layer.stride]
            self.pads = list(pads)
            self.v_pads = self.pads if v.kernel_size != (1,) * nd else [0] * (2 * nd)
            self.dilations, self.group = [int(d) for d in layer.dilation], int(layer.groups)

    def _args(self) -> tuple[Tensor, ...]:
        return self.w_r, self.b_r, self.v, self.u_g, self.b_g, self.u_b, self.c

    def forward(self, x: Tensor) -> Tensor:
        if self.dense:
            if x.dim() == 2:
                return torch.ops.quadexport.lowrank_linear(x, *self._args())
            y = torch.ops.quadexport.lowrank_linear(x.reshape(-1, self.in_features), *self._args())
            return y.reshape(*x.shape[:-1], self.out_features)
        op = torch.ops.quadexport.lowrank_conv1d if self.dims == 1 else torch.ops.quadexport.lowrank_conv2d
        return op(x, *self._args(), self.strides, self.pads, self.v_pads, self.dilations, self.group)
