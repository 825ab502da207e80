"""The linear maps a quadratic neuron is made of, as they appear in a ``torch.fx`` graph (issue #22, #30).

A *term* is one linear map of an input ``X`` (or of its square), optionally followed by a BatchNorm call (folded
later). Research code writes it two ways, both read here into the same :class:`Term` (kind, geometry, where its
weight and bias live):

- **module calls**: ``nn.Linear``, ``nn.Conv1d``/``2d``, ``nn.ConvTranspose1d``/``2d`` (``Conv3d`` and
  ``ConvTranspose3d`` are seen and named as having no quadexport layer);
- **functional calls** on parameters (``get_attr`` nodes: plain, in ``ParameterList``s, or on a submodule):
  ``F.linear(x, W, b)``, ``F.conv1d``/``conv2d``/``conv_transpose1d``/``conv_transpose2d`` with stride, padding,
  dilation, groups (and output padding) read from the call, and ``x @ W.t()`` / ``torch.matmul(x, W.T)`` (a weight
  ``[out, in]`` used transposed) or ``x @ W`` (a weight stored ``[in, out]``), each optionally ``+ b``.

A functional term is identified by its weight's path (``layer1.weight_r``), a module term by the module's path.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from quadexport.layers.convert import plain_layer_problem, unsupported_reason

__all__ = ["Term", "TermGraph", "square_base"]

_BN = nn.modules.batchnorm._BatchNorm
_MODULES = {nn.Linear: "linear", nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Conv3d: "conv3d",
            nn.ConvTranspose1d: "convT1d", nn.ConvTranspose2d: "convT2d", nn.ConvTranspose3d: "convT3d"}
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONVT_ARGS = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
_FUNCS = {F.linear: ("linear", ("input", "weight", "bias")), F.conv1d: ("conv1d", _CONV_ARGS),
          F.conv2d: ("conv2d", _CONV_ARGS), F.conv3d: ("conv3d", _CONV_ARGS),
          F.conv_transpose1d: ("convT1d", _CONVT_ARGS), F.conv_transpose2d: ("convT2d", _CONVT_ARGS),
          F.conv_transpose3d: ("convT3d", _CONVT_ARGS)}
_MATMUL = {operator.matmul, torch.matmul, torch.mm}
_ADDS = {operator.add, operator.iadd, torch.add, torch.Tensor.add}
_MULS = {operator.mul, torch.mul, torch.Tensor.mul}
_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1, "output_padding": 0}


def is_call(node: Any, fns: set, method: str) -> bool:
    """``node`` calls one of ``fns`` (or the tensor method ``method``/``method_``) with positional args only."""
    if not isinstance(node, fx.Node) or node.kwargs:
        return False
    if node.op == "call_function":
        return node.target in fns
    return node.op == "call_method" and node.target in (method, f"{method}_")


def square_base(node: Any) -> fx.Node | None:
    """``X`` if ``node`` computes ``X²`` (pow 2, ``**2``, ``x*x``, ``torch.square``, ``torch.mul(x, x)``)."""
    if not isinstance(node, fx.Node) or node.kwargs:
        return None
    if is_call(node, {operator.pow, torch.pow, torch.Tensor.pow}, "pow") and len(node.args) == 2:
        x, e = node.args
        return x if isinstance(x, fx.Node) and not isinstance(e, (fx.Node, bool)) and e == 2 else None
    if is_call(node, {torch.square, torch.Tensor.square}, "square") and len(node.args) == 1:
        return node.args[0] if isinstance(node.args[0], fx.Node) else None
    if is_call(node, _MULS, "mul") and len(node.args) == 2 and node.args[0] is node.args[1]:
        return node.args[0] if isinstance(node.args[0], fx.Node) else None
    return None


@dataclass
class Term:
    """One linear map of a neuron.

    Attributes:
        node: the linear call (a module call, ``F.*`` call or matmul).
        module: what identifies the branch in reports and the adopt spec: the module path, or (functional) the
            weight parameter's path.
        bn_node: a BatchNorm call right after it (folded into the branch), or ``None``.
        base: the neuron input ``X``; ``square``: the ``X²`` node the map reads, ``None`` when it reads ``X``.
        kind: ``linear``, ``conv1d``, ``conv2d``, ``conv3d``, ``convT1d``, ``convT2d`` or ``convT3d``.
        config: the layer geometry (constructor arguments of the matching torch layer, without ``bias``).
        weight_path / bias_path: where the weight and bias parameters live (``bias_path`` ``None``: no bias).
        stored_transposed: the weight is stored ``[in, out]`` (``x @ W``) and is transposed when moved in.
        owner: the module holding a functional term's parameters (``""``: the root); the module path otherwise.
        inner: nodes of the term besides ``node`` and ``bn_node`` (a weight transpose, a bias add).
        params: the ``get_attr`` nodes of a functional term (erased when the rewrite leaves them unused).
    """

    node: fx.Node
    module: str
    bn_node: fx.Node | None
    base: fx.Node
    square: fx.Node | None
    kind: str = "linear"
    config: dict[str, Any] = field(default_factory=dict)
    weight_path: str = ""
    bias_path: str | None = None
    stored_transposed: bool = False
    owner: str = ""
    inner: list[fx.Node] = field(default_factory=list)
    params: list[fx.Node] = field(default_factory=list)
    tail: fx.Node | None = None

    @property
    def functional(self) -> bool:
        return self.node.op != "call_module"

    @property
    def linear_out(self) -> fx.Node:
        """The node giving the linear map's output (a bias add after a matmul, else :attr:`node`)."""
        return self.tail if self.tail is not None else self.node

    @property
    def out(self) -> fx.Node:
        return self.bn_node if self.bn_node is not None else self.linear_out

    @property
    def bn(self) -> str | None:
        return None if self.bn_node is None else str(self.bn_node.target)

    @property
    def out_features(self) -> int:
        return int(self.config.get("out_features", self.config.get("out_channels", 0)))

    def nodes(self) -> list[fx.Node]:
        return [self.node, *self.inner] + ([self.bn_node] if self.bn_node is not None else [])


def _n(v: Any, n: int) -> Any:
    return v if isinstance(v, str) else tuple(int(i) for i in v) if isinstance(v, (tuple, list)) else (int(v),) * n


class TermGraph:
    """The traced graph with its modules, call counts and node order; :meth:`term` reads a term ending at a node."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.mods = dict(gm.named_modules())
        self.order = {n: i for i, n in enumerate(gm.graph.nodes)}
        self.calls: dict[str, int] = {}
        for n in gm.graph.nodes:
            if n.op == "call_module":
                self.calls[str(n.target)] = self.calls.get(str(n.target), 0) + 1

    def module(self, node: Any) -> nn.Module | None:
        return self.mods.get(str(node.target)) if isinstance(node, fx.Node) and node.op == "call_module" else None

    def param(self, node: Any) -> torch.Tensor | None:
        """The tensor a ``get_attr`` node reads (``None`` for anything else)."""
        if not isinstance(node, fx.Node) or node.op != "get_attr":
            return None
        try:
            v = self.gm.get_parameter(str(node.target))
        except AttributeError:
            try:
                v = self.gm.get_buffer(str(node.target))
            except AttributeError:
                return None
        return v

    def term(self, node: Any) -> Term | None:
        """The term whose output is ``node`` (``None`` if ``node`` is not a linear map, optionally + BN)."""
        bn_node = None
        if isinstance(self.module(node), _BN) and len(node.args) == 1 and not node.kwargs:
            bn_node, node = node, node.args[0]
            if not isinstance(node, fx.Node) or len(node.users) != 1:
                return None
        t = self._module_term(node) or self._functional_term(node) or self._matmul_term(node)
        if t is None:
            return None
        t.bn_node = bn_node
        x = t.base
        sq = square_base(x)
        t.base, t.square = (sq, x) if sq is not None else (x, None)
        return t

    # ----------------------------------------------------------------------------------------- module calls
    def _module_term(self, node: fx.Node) -> Term | None:
        m = self.module(node)
        kind = next((k for cls, k in _MODULES.items() if isinstance(m, cls)), None)
        if kind is None or node.kwargs or len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
            return None
        if kind == "linear":
            cfg: dict[str, Any] = {"in_features": m.in_features, "out_features": m.out_features}
        else:
            cfg = {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": m.kernel_size,
                   "stride": m.stride, "padding": m.padding, "dilation": m.dilation, "groups": m.groups,
                   "padding_mode": m.padding_mode}
            if kind.startswith("convT"):
                cfg["output_padding"] = m.output_padding
        path = str(node.target)
        return Term(node, path, None, node.args[0], None, kind, cfg, f"{path}.weight",
                    f"{path}.bias" if getattr(m, "bias", None) is not None else None, owner=path)

    # ----------------------------------------------------------------------------------------- F.* calls
    def _functional_term(self, node: fx.Node) -> Term | None:
        if node.op != "call_function" or node.target not in _FUNCS:
            return None
        kind, names = _FUNCS[node.target]
        if len(node.args) > len(names) or any(k not in names for k in node.kwargs):
            return None
        a = {**_DEFAULTS, **dict(zip(names, node.args)), **node.kwargs}
        x, w, b = a["input"], a["weight"], a["bias"]
        if not isinstance(x, fx.Node) or self.param(w) is None or (b is not None and self.param(b) is None):
            return None
        if any(isinstance(a[k], fx.Node) for k in names[3:]):
            return None  # geometry computed at run time: not a fixed layer
        shape = tuple(self.param(w).shape)
        if kind == "linear":
            cfg: dict[str, Any] = {"in_features": shape[1], "out_features": shape[0]}
        else:
            n, groups = len(shape) - 2, int(a["groups"])
            transposed = kind.startswith("convT")
            cfg = {"in_channels": shape[0] if transposed else shape[1] * groups,
                   "out_channels": shape[1] * groups if transposed else shape[0],
                   "kernel_size": tuple(shape[2:]), "stride": _n(a["stride"], n), "padding": _n(a["padding"], n),
                   "dilation": _n(a["dilation"], n), "groups": groups, "padding_mode": "zeros"}
            if transposed:
                cfg["output_padding"] = _n(a["output_padding"], n)
        return self._param_term(node, x, kind, cfg, w, b, [], False)

    def _param_term(self, node: fx.Node, x: fx.Node, kind: str, cfg: dict[str, Any], w: fx.Node,
                    b: fx.Node | None, inner: list[fx.Node], stored_transposed: bool) -> Term:
        wpath = str(w.target)
        owner, _, leaf = wpath.rpartition(".")
        if leaf.isdigit():  # an nn.ParameterList entry: the module holding the list names the neuron
            owner = owner.rpartition(".")[0]
        return Term(node, wpath, None, x, None, kind, cfg, wpath, None if b is None else str(b.target),
                    stored_transposed, owner, inner, [w] + ([b] if b is not None else []))

    # ----------------------------------------------------------------------------------------- x @ W.t() (+ b)
    def _transposed_param(self, node: Any) -> fx.Node | None:
        """The ``get_attr`` node ``W`` if ``node`` is ``W.t()``, ``W.T``, ``W.transpose(0, 1)``, ``W.permute(1, 0)``
        or ``torch.t(W)`` of a 2-D parameter."""
        if not isinstance(node, fx.Node) or node.kwargs or not node.args:
            return None
        w, rest = node.args[0], tuple(node.args[1:])
        is_t = ((node.op == "call_method" and node.target == "t" and not rest)
                or (node.op == "call_function" and node.target is torch.t and not rest)
                or (node.op == "call_function" and node.target is getattr and rest in (("T",), ("mT",)))
                or (node.op == "call_method" and node.target == "transpose" and rest in ((0, 1), (1, 0), (-1, -2),
                                                                                          (-2, -1)))
                or (node.op == "call_method" and node.target == "permute" and rest in ((1, 0),)))
        p = self.param(w)
        return w if is_t and p is not None and p.dim() == 2 else None

    def _matmul_term(self, node: fx.Node) -> Term | None:
        bias = None
        if is_call(node, _ADDS, "add") and len(node.args) == 2:  # (x @ W.t()) + b, either order
            for mm, b in (node.args, node.args[::-1]):
                p = self.param(b)
                if isinstance(mm, fx.Node) and len(mm.users) == 1 and p is not None and p.dim() == 1:
                    t = self._matmul_term(mm)
                    if t is not None and t.bias_path is None and p.shape[0] == t.out_features:
                        t.bias_path, t.inner, t.params = str(b.target), [*t.inner, node], [*t.params, b]
                        t.tail = node
                        return t
            return None
        if not is_call(node, _MATMUL, "matmul") and not is_call(node, {torch.mm}, "mm"):
            return None
        if len(node.args) != 2 or not isinstance(node.args[0], fx.Node):
            return None
        x, wn = node.args
        w = self._transposed_param(wn)
        if w is not None and len(wn.users) == 1:
            shape = tuple(self.param(w).shape)  # [out, in], used transposed
            return self._param_term(node, x, "linear", {"in_features": shape[1], "out_features": shape[0]}, w,
                                    None, [wn], False)
        p = self.param(wn)
        if p is not None and p.dim() == 2:  # stored [in, out]
            return self._param_term(node, x, "linear", {"in_features": p.shape[0], "out_features": p.shape[1]},
                                    wn, None, [], True)
        return None

    # ----------------------------------------------------------------------------------------- problems
    def problem(self, t: Term) -> str | None:
        """Why term ``t`` cannot become a branch of a quadexport layer (``None``: it can)."""
        if t.kind in ("conv3d", "convT3d"):
            return f"{t.module}: 3-d convolutions have no quadexport layer"
        if not t.functional:
            reason = _module_problem(self.mods[t.module])
            if reason is not None:
                return f"{t.module}: {reason}"
            if self.calls[t.module] > 1:
                return f"{t.module} is called more than once (shared weights)"
        else:
            for p in t.params:
                if not isinstance(self.param(p), nn.Parameter):
                    return f"{p.target} is a buffer, not a parameter"
                if len(p.users) > 1:
                    return f"{p.target} is used more than once (shared weights)"
        if t.bn_node is not None:
            bn = self.mods[t.bn]
            if bn.running_mean is None or bn.running_var is None:
                return f"BatchNorm {t.bn} keeps no running statistics (cannot fold)"
            if self.calls[t.bn] > 1:
                return f"BatchNorm {t.bn} is called more than once"
            if bn.num_features != t.out_features:
                return f"BatchNorm {t.bn} does not match {t.module}'s outputs"
        return None


def _module_problem(m: nn.Module) -> str | None:
    """:func:`~quadexport.layers.convert.unsupported_reason` for forward layers; the same checks for transposed."""
    if not isinstance(m, nn.modules.conv._ConvTransposeNd):
        return unsupported_reason(m)
    base = next(c for c in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d) if isinstance(m, c))
    return plain_layer_problem(m, base)
