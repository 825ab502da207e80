"""The quadratic custom op, in one place (QONNX style): domain ``quadexport`` v1, ``QuadLinear``, ``QuadConv1d``,
``QuadConv2d``.

Every op takes the Fan form's seven inputs ``X, W_r, B_r, W_g, B_g, W_b, C`` (all required) and computes::

    Y = (X ⊛ W_r + B_r) ⊙ (X ⊛ W_g + B_g) + (X ⊙ X) ⊛ W_b + C

where ⊛ is ``X W^T`` (``QuadLinear``, ``X`` of shape ``[N, K]``, weights ``[M, K]``) or an ONNX ``Conv`` (weights
``[M, C/group, k...]``, attributes ``strides``, ``pads`` (begin..., end...), ``dilations``, ``group``).

This module holds:

- the constants (:data:`DOMAIN`, :data:`DOMAIN_VERSION`, taken from :mod:`quadexport.exporter.kernel_lib` so the
  two can never drift),
- :func:`register_schemas`: ``onnx.defs`` schemas, so ``onnx.checker.check_model(full_check=True)`` accepts the
  nodes and onnxscript can build them,
- :func:`function_proto`: the model-local ``FunctionProto`` body in standard ops (what stock onnxruntime and
  ``onnx.reference`` inline when no kernel is registered),
- :func:`reference` / :func:`reference_ops`: the NumPy reference and ``onnx.reference`` op classes,
- the ``torch.library`` custom ops ``torch.ops.quadexport.quad_linear / quad_conv1d / quad_conv2d`` with fake
  (meta) kernels, and :func:`translation_table` mapping them onto the ONNX nodes for ``torch.onnx.export``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper
from onnx.defs import OpSchema

from quadexport.errors import UsageError
from quadexport.exporter import lowrank_ops
from quadexport.exporter.kernel_lib import DOMAIN, DOMAIN_VERSION  # the kernel library owns the constants

Tensor = torch.Tensor

INPUT_NAMES = ("X", "W_r", "B_r", "W_g", "B_g", "W_b", "C")
CONV_ATTRS = ("strides", "pads", "dilations", "group")
OP_TYPES = ("QuadLinear", "QuadConv1d", "QuadConv2d")
FLOAT_TYPES = ["tensor(float)", "tensor(float16)", "tensor(double)", "tensor(bfloat16)"]

__all__ = ["CONV_ATTRS", "DOMAIN", "DOMAIN_VERSION", "INPUT_NAMES", "OP_TYPES", "conv_op_type", "function_proto",
           "function_protos", "reference", "reference_ops", "register_schemas", "translation_table"]


def conv_op_type(spatial_dims: int) -> str:
    """``QuadConv1d`` or ``QuadConv2d`` for 1 or 2 spatial dimensions."""
    if spatial_dims not in (1, 2):
        raise UsageError(f"the {DOMAIN} domain has QuadConv1d and QuadConv2d only, not {spatial_dims}-d")
    return f"QuadConv{spatial_dims}d"


# ---------------------------------------------------------------------------------------------------------------
# ONNX schema
# ---------------------------------------------------------------------------------------------------------------

_DOC = "Fan quadratic neuron: Y = (X*W_r + B_r) . (X*W_g + B_g) + (X.X)*W_b + C (quadexport)."


def _schema(op_type: str) -> OpSchema:
    inputs = [OpSchema.FormalParameter(n, "T", f"input {n}") for n in INPUT_NAMES]
    attrs = []
    if op_type != "QuadLinear":
        A = OpSchema.AttrType
        attrs = [OpSchema.Attribute("strides", A.INTS, "stride along each spatial axis (default 1)", required=False),
                 OpSchema.Attribute("pads", A.INTS, "explicit padding, begin values then end values (default 0)",
                                    required=False),
                 OpSchema.Attribute("dilations", A.INTS, "dilation along each spatial axis (default 1)",
                                    required=False),
                 OpSchema.Attribute("group", A.INT, "number of groups (default 1)", required=False)]
    return OpSchema(op_type, DOMAIN, DOMAIN_VERSION, doc=_DOC, inputs=inputs,
                    outputs=[OpSchema.FormalParameter("Y", "T", "output")],
                    type_constraints=[("T", FLOAT_TYPES, "floating-point tensors")], attributes=attrs)


def register_schemas() -> None:
    """Register the ``quadexport`` op schemas (and the ``quadexport.lowrank`` ones) with ``onnx.defs``
    (idempotent)."""
    for op_type in OP_TYPES:
        if not onnx.defs.has(op_type, DOMAIN):
            onnx.defs.register_schema(_schema(op_type))
    lowrank_ops.register_schemas()


# ---------------------------------------------------------------------------------------------------------------
# FunctionProto bodies (standard ops)
# ---------------------------------------------------------------------------------------------------------------

def _linear_node(x: str, w: str, b: str, y: str, conv: bool) -> onnx.NodeProto:
    if not conv:
        return helper.make_node("Gemm", [x, w, b], [y], transB=1)
    node = helper.make_node("Conv", [x, w, b], [y])
    A = onnx.AttributeProto
    for name, typ in (("strides", A.INTS), ("pads", A.INTS), ("dilations", A.INTS), ("group", A.INT)):
        node.attribute.append(helper.make_attribute_ref(name, typ, ref_attr_name=name))
    return node


def function_proto(op_type: str, opset: int) -> onnx.FunctionProto:
    """The model-local function defining ``op_type`` in standard ONNX ops (``Gemm``/``Conv``, ``Mul``, ``Add``).

    Args:
        op_type: ``QuadLinear``, ``QuadConv1d`` or ``QuadConv2d``.
        opset: ai.onnx opset the body is written against (the model's opset).
    """
    if op_type not in OP_TYPES:
        raise UsageError(f"unknown {DOMAIN} op {op_type!r}; known: {', '.join(OP_TYPES)}")
    conv = op_type != "QuadLinear"
    nodes = [
        _linear_node("X", "W_r", "B_r", "R", conv),
        _linear_node("X", "W_g", "B_g", "G", conv),
        helper.make_node("Mul", ["X", "X"], ["X2"]),
        _linear_node("X2", "W_b", "C", "P", conv),
        helper.make_node("Mul", ["R", "G"], ["RG"]),
        helper.make_node("Add", ["RG", "P"], ["Y"]),
    ]
    return helper.make_function(DOMAIN, op_type, list(INPUT_NAMES), ["Y"], nodes,
                                [helper.make_opsetid("", int(opset))],
                                attributes=list(CONV_ATTRS) if conv else [], doc_string=_DOC)


def function_protos(op_types: Sequence[str], opset: int) -> list[onnx.FunctionProto]:
    """:func:`function_proto` for each distinct op type in ``op_types`` (stable order)."""
    return [function_proto(t, opset) for t in OP_TYPES if t in set(op_types)]


# ---------------------------------------------------------------------------------------------------------------
# NumPy reference
# ---------------------------------------------------------------------------------------------------------------

def _np_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, strides: Sequence[int], pads: Sequence[int],
             dilations: Sequence[int], group: int) -> np.ndarray:
    nd = x.ndim - 2
    x = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    n, cin = x.shape[:2]
    m, cg = w.shape[:2]
    ks = w.shape[2:]
    out_sp = [(x.shape[2 + i] - dilations[i] * (ks[i] - 1) - 1) // strides[i] + 1 for i in range(nd)]
    y = np.zeros((n, m, *out_sp), dtype=np.float64)
    mg = m // group
    for k in np.ndindex(*ks):
        sl = tuple(slice(k[i] * dilations[i], k[i] * dilations[i] + strides[i] * (out_sp[i] - 1) + 1, strides[i])
                   for i in range(nd))
        patch = x[(slice(None), slice(None)) + sl].astype(np.float64)
        for gi in range(group):
            wk = w[(slice(gi * mg, (gi + 1) * mg), slice(None)) + k].astype(np.float64)
            y[:, gi * mg:(gi + 1) * mg] += np.einsum("nc...,mc->nm...", patch[:, gi * cg:(gi + 1) * cg], wk)
    return y + b.reshape((1, m) + (1,) * nd)


def reference(op_type: str, x: np.ndarray, w_r: np.ndarray, b_r: np.ndarray, w_g: np.ndarray, b_g: np.ndarray,
              w_b: np.ndarray, c: np.ndarray, strides: Sequence[int] | None = None, pads: Sequence[int] | None = None,
              dilations: Sequence[int] | None = None, group: int = 1) -> np.ndarray:
    """NumPy reference of the ``quadexport`` ops (computed in float64, returned in ``x.dtype``).

    Args:
        op_type: ``QuadLinear``, ``QuadConv1d`` or ``QuadConv2d``.
        x, w_r, b_r, w_g, b_g, w_b, c: the seven op inputs.
        strides, pads, dilations, group: ONNX ``Conv`` attributes (conv ops only; defaults 1 / 0 / 1 / 1).
    """
    if op_type == "QuadLinear":
        xd = x.astype(np.float64)
        lin = lambda a, w, b: a @ w.astype(np.float64).T + b  # noqa: E731
        y = lin(xd, w_r, b_r) * lin(xd, w_g, b_g) + lin(xd * xd, w_b, c)
        return y.astype(x.dtype)
    nd = x.ndim - 2
    strides = list(strides or [1] * nd)
    pads = list(pads or [0] * (2 * nd))
    dilations = list(dilations or [1] * nd)
    conv = lambda a, w, b: _np_conv(a, w, b, strides, pads, dilations, int(group))  # noqa: E731
    xd = x.astype(np.float64)
    y = conv(xd, w_r, b_r) * conv(xd, w_g, b_g) + conv(xd * xd, w_b, c)
    return y.astype(x.dtype)


def reference_ops() -> list[type]:
    """``onnx.reference`` op classes for the three ops (``ReferenceEvaluator(model, new_ops=reference_ops())``),
    for graphs whose ``quadexport`` nodes carry no function body."""
    from onnx.reference.op_run import OpRun

    classes = []
    for op_type in OP_TYPES:
        def _run(self, x, w_r, b_r, w_g, b_g, w_b, c, strides=None, pads=None, dilations=None, group=None,
                 _t=op_type):
            return (reference(_t, x, w_r, b_r, w_g, b_g, w_b, c, strides, pads, dilations, group or 1),)

        classes.append(type(op_type, (OpRun,), {"op_domain": DOMAIN, "_run": _run}))
    return classes


# ---------------------------------------------------------------------------------------------------------------
# torch.library custom ops
# ---------------------------------------------------------------------------------------------------------------

@torch.library.custom_op("quadexport::quad_linear", mutates_args=())
def quad_linear(x: Tensor, w_r: Tensor, b_r: Tensor, w_g: Tensor, b_g: Tensor, w_b: Tensor, c: Tensor) -> Tensor:
    """``(x W_r^T + b_r) * (x W_g^T + b_g) + (x*x) W_b^T + c`` for 2-D ``x``."""
    return F.linear(x, w_r, b_r) * F.linear(x, w_g, b_g) + F.linear(x * x, w_b, c)


@quad_linear.register_fake
def _quad_linear_fake(x, w_r, b_r, w_g, b_g, w_b, c):
    return x.new_empty((x.shape[0], w_r.shape[0]))


def _conv_impl(nd: int) -> Callable[..., Tensor]:
    conv = F.conv1d if nd == 1 else F.conv2d

    def impl(x: Tensor, w_r: Tensor, b_r: Tensor, w_g: Tensor, b_g: Tensor, w_b: Tensor, c: Tensor,
             strides: list[int], pads: list[int], dilations: list[int], group: int) -> Tensor:
        begin, end = pads[:nd], pads[nd:]
        if begin == end:
            padding = list(begin)
        else:
            torch_pad = []
            for i in reversed(range(nd)):
                torch_pad += [begin[i], end[i]]
            x = F.pad(x, torch_pad)
            padding = [0] * nd
        args = (strides, padding, dilations, group)
        return conv(x, w_r, b_r, *args) * conv(x, w_g, b_g, *args) + conv(x * x, w_b, c, *args)

    return impl


def _conv_fake(nd: int) -> Callable[..., Tensor]:
    def fake(x, w_r, b_r, w_g, b_g, w_b, c, strides, pads, dilations, group):
        sp = [(x.shape[2 + i] + pads[i] + pads[i + nd] - dilations[i] * (w_r.shape[2 + i] - 1) - 1) // strides[i] + 1
              for i in range(nd)]
        return x.new_empty((x.shape[0], w_r.shape[0], *sp))

    return fake


quad_conv1d = torch.library.custom_op("quadexport::quad_conv1d", _conv_impl(1), mutates_args=())
quad_conv1d.register_fake(_conv_fake(1))
quad_conv2d = torch.library.custom_op("quadexport::quad_conv2d", _conv_impl(2), mutates_args=())
quad_conv2d.register_fake(_conv_fake(2))


def translation_table() -> dict[Any, Callable[..., Any]]:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``: each custom op becomes one node in the
    ``quadexport`` domain (the exporter builds it with onnxscript, which needs :func:`register_schemas`); the
    low-rank ops (:mod:`quadexport.exporter.lowrank_ops`) are included."""
    import onnxscript

    register_schemas()
    qx = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)

    def linear(x, w_r, b_r, w_g, b_g, w_b, c):
        return qx.QuadLinear(x, w_r, b_r, w_g, b_g, w_b, c)

    def conv(op_type: str):
        def tr(x, w_r, b_r, w_g, b_g, w_b, c, strides, pads, dilations, group):
            return getattr(qx, op_type)(x, w_r, b_r, w_g, b_g, w_b, c, strides=list(strides), pads=list(pads),
                                        dilations=list(dilations), group=int(group))
        return tr

    return {torch.ops.quadexport.quad_linear.default: linear,
            torch.ops.quadexport.quad_conv1d.default: conv("QuadConv1d"),
            torch.ops.quadexport.quad_conv2d.default: conv("QuadConv2d"),
            **lowrank_ops.translation_table()}
