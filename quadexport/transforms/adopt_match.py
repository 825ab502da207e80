"""Find quadratic neurons written as plain layers in a ``torch.fx`` graph (issue #22).

Research code writes a quadratic neuron as plain ``nn.Conv1d``/``nn.Conv2d``/``nn.Linear`` layers combined inside
``forward`` (``conv1r(x) * conv1g(x) + conv1b(x.pow(2))``). This module reads the *traced graph* (never attribute or
class names) and matches those combinations against the registered neuron types:

- a *term* is one linear module call, optionally followed by a BatchNorm call (folded later), reading either ``X``
  or the square of ``X`` (``x.pow(2)``, ``x ** 2``, ``x * x``, ``torch.square(x)``, ``torch.mul(x, x)``);
- ``P = A * B`` (two terms of the same ``X``, either order) plus ``Q`` (a term of ``X²``) is ``fan``; plus a term
  ``C`` of ``X`` is ``quadralib``; plus ``A`` itself is ``qres``; alone it is ``t4``;
- ``A + Q`` is ``compact``; ``Q`` alone is ``t2``.

Products that look quadratic but fit no type (a factor passes through a nonlinearity, branches of different
geometry, shared or externally used branches) are returned as :class:`SkippedForm` with the reason.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from quadexport.layers.convert import unsupported_reason
from quadexport.layers.mixed import MixedQuad
from quadexport.layers.quad import QuadLayer

__all__ = ["AdoptedGraphModule", "Match", "SkippedForm", "Term", "Tracer", "find_matches", "trace"]

_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d)
_BN = nn.modules.batchnorm._BatchNorm
_MULS = {operator.mul, torch.mul, torch.Tensor.mul}
_ADDS = {operator.add, operator.iadd, torch.add, torch.Tensor.add}
_GEOMETRY = (("in_features", "input size"), ("out_features", "output size"), ("in_channels", "input channels"),
             ("out_channels", "output channels"), ("kernel_size", "kernel size"), ("stride", "stride"),
             ("padding", "padding"), ("dilation", "dilation"), ("groups", "groups"),
             ("padding_mode", "padding mode"))


class Tracer(fx.Tracer):
    """``torch.fx`` tracer that keeps quadexport's quadratic layers as leaves (they are neurons already)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (QuadLayer, MixedQuad)) or super().is_leaf_module(m, qualname)


class AdoptedGraphModule(fx.GraphModule):
    """A ``GraphModule`` whose deep copies keep the ``quadexport_*`` attributes (``quadexport_config``,
    ``quadexport_meta``...): ``GraphModule.__deepcopy__`` rebuilds the module and drops attributes it does not know,
    and every tool deep-copies before it exports, quadratizes or compresses."""

    def __deepcopy__(self, memo: dict) -> "AdoptedGraphModule":
        res = super().__deepcopy__(memo)
        for k, v in self.__dict__.items():
            if k.startswith("quadexport_"):
                setattr(res, k, copy.deepcopy(v, memo))
        return res

    def __reduce__(self) -> tuple:
        return _unpickle, super().__reduce__()


def _unpickle(fn: Any, args: tuple) -> AdoptedGraphModule:
    """Unpickle as :class:`AdoptedGraphModule` (``GraphModule`` pickles rebuild a plain ``GraphModule``)."""
    plain = fn(*args)
    res = AdoptedGraphModule(plain, plain.graph, type(plain).__name__)
    res.__dict__.update({k: v for k, v in plain.__dict__.items() if k.startswith("quadexport_")})
    return res.train(plain.training)


def trace(model: nn.Module) -> AdoptedGraphModule:
    """``model`` as a ``GraphModule`` sharing its submodules (raises what ``torch.fx`` raises)."""
    return AdoptedGraphModule(model, Tracer().trace(model), type(model).__name__)


@dataclass
class Term:
    """One linear map in a neuron: a module call (``node``), an optional BatchNorm call after it (``bn_node``)."""

    node: fx.Node
    module: str
    bn_node: fx.Node | None
    base: fx.Node
    square: fx.Node | None

    @property
    def out(self) -> fx.Node:
        return self.bn_node if self.bn_node is not None else self.node

    @property
    def bn(self) -> str | None:
        return None if self.bn_node is None else str(self.bn_node.target)

    def nodes(self) -> list[fx.Node]:
        return [self.node] + ([self.bn_node] if self.bn_node is not None else [])


@dataclass
class Match:
    """A neuron found in the graph: its type, the term of each branch role, its input and output nodes."""

    type: str
    roles: dict[str, Term]
    output: fx.Node
    base: fx.Node
    ops: list[fx.Node] = field(default_factory=list)

    def nodes(self) -> list[fx.Node]:
        seen: dict[fx.Node, None] = {}
        for t in self.roles.values():
            seen.update(dict.fromkeys(t.nodes()))
        seen.update(dict.fromkeys(self.ops))
        return list(seen)

    def modules(self) -> list[str]:
        return list(dict.fromkeys(t.module for t in self.roles.values()))


@dataclass(frozen=True)
class SkippedForm:
    """A quadratic-looking form left as it is: the linear modules involved, where, and why."""

    modules: tuple[str, ...]
    node: str
    reason: str
    nodes: tuple[fx.Node, ...] = field(default=(), compare=False, repr=False)


def _skip(product: fx.Node, terms: list[Term], reason: str, g: "_Graph") -> SkippedForm:
    """A skipped form around ``product``: its factor terms and a term added to it (so no smaller neuron is carved
    out of the form afterwards)."""
    user = next(iter(product.users)) if len(product.users) == 1 else None
    pair = _binary(user) if user is not None and _is(user, _ADDS, "add") else None
    if pair is not None:
        partner = g.term(pair[1] if pair[0] is product else pair[0])
        terms = terms + ([partner] if partner is not None else [])
    nodes = tuple(n for t in terms for n in t.nodes()) + (product,)
    return SkippedForm(tuple(dict.fromkeys(t.module for t in terms)), product.name, reason, nodes)


def _is(node: Any, fns: set, method: str) -> bool:
    if not isinstance(node, fx.Node) or node.kwargs:
        return False
    if node.op == "call_function":
        return node.target in fns
    return node.op == "call_method" and node.target in (method, f"{method}_")


def _binary(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    if len(node.args) == 2 and all(isinstance(a, fx.Node) for a in node.args):
        return node.args[0], node.args[1]
    return None


def square_base(node: Any) -> fx.Node | None:
    """``X`` if ``node`` computes ``X²`` (pow 2, ``**2``, ``x*x``, ``torch.square``, ``torch.mul(x, x)``)."""
    if not isinstance(node, fx.Node) or node.kwargs:
        return None
    if _is(node, {operator.pow, torch.pow, torch.Tensor.pow}, "pow") and len(node.args) == 2:
        x, e = node.args
        return x if isinstance(x, fx.Node) and not isinstance(e, (fx.Node, bool)) and e == 2 else None
    if _is(node, {torch.square, torch.Tensor.square}, "square") and len(node.args) == 1:
        return node.args[0] if isinstance(node.args[0], fx.Node) else None
    if _is(node, _MULS, "mul"):
        ab = _binary(node)
        return ab[0] if ab and ab[0] is ab[1] else None
    return None


class _Graph:
    """The traced graph with its modules, call counts and node order."""

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

    def term(self, node: Any) -> Term | None:
        """The term whose output is ``node`` (``None`` if ``node`` is not a linear call, optionally + BN)."""
        bn_node = None
        if isinstance(self.module(node), _BN) and len(node.args) == 1 and not node.kwargs:
            bn_node, node = node, node.args[0]
            if not isinstance(node, fx.Node) or len(node.users) != 1:
                return None
        if not isinstance(self.module(node), _LINEAR) or node.kwargs or len(node.args) != 1:
            return None
        x = node.args[0]
        if not isinstance(x, fx.Node):
            return None
        base = square_base(x)
        return Term(node, str(node.target), bn_node, base if base is not None else x, x if base is not None else None)


def _mismatch(a: Term, b: Term, g: _Graph) -> str | None:
    ma, mb = g.mods[a.module], g.mods[b.module]
    if type(ma) is not type(mb):
        return f"branches differ in layer type ({type(ma).__name__} vs {type(mb).__name__})"
    for attr, what in _GEOMETRY:
        if getattr(ma, attr, None) != getattr(mb, attr, None):
            return f"branches differ in {what}"
    if ma.weight.dtype != mb.weight.dtype or ma.weight.device != mb.weight.device:
        return "branches differ in dtype or device"
    return None


def _term_problem(t: Term, g: _Graph) -> str | None:
    m = g.mods[t.module]
    reason = unsupported_reason(m)
    if reason is not None:
        return f"{t.module}: {reason}"
    if g.calls[t.module] > 1:
        return f"{t.module} is called more than once (shared weights)"
    if t.bn_node is not None:
        bn = g.mods[t.bn]
        if bn.running_mean is None or bn.running_var is None:
            return f"BatchNorm {t.bn} keeps no running statistics (cannot fold)"
        if g.calls[t.bn] > 1:
            return f"BatchNorm {t.bn} is called more than once"
        if bn.num_features != (m.out_features if isinstance(m, nn.Linear) else m.out_channels):
            return f"BatchNorm {t.bn} does not match {t.module}'s outputs"
    return None


def _problem(match: Match, g: _Graph) -> str | None:
    terms = list(match.roles.values())
    for t in terms[1:]:
        reason = _mismatch(terms[0], t, g)
        if reason:
            return reason
    for t in terms:
        reason = _term_problem(t, g)
        if reason:
            return reason
    inside = set(match.nodes())
    for n in inside:
        if n is not match.output and any(u not in inside for u in n.users):
            return f"a branch output ({n.name}) is also used outside the neuron"
    return None


def _through(node: Any, g: _Graph, depth: int = 4) -> tuple[Term | None, list[str]]:
    """Walk up from ``node`` through one-input ops to a term: ``(term, names of the ops passed)``."""
    ops: list[str] = []
    for _ in range(depth):
        t = g.term(node)
        if t is not None or not isinstance(node, fx.Node) or node.op not in ("call_function", "call_method",
                                                                                "call_module"):
            return t, ops
        inputs = [a for a in node.all_input_nodes]
        if len(inputs) != 1:
            return None, ops
        m = g.module(node)
        ops.append(type(m).__name__.lower() if m is not None else getattr(node.target, "__name__",
                                                                          str(node.target)))
        node = inputs[0]
    return None, ops


def _product(node: fx.Node, g: _Graph) -> Match | SkippedForm | None:
    """The neuron rooted at the product ``node`` (with the sum that follows it, if any), a skipped form, or
    ``None`` when the product is not quadratic-looking."""
    ab = _binary(node) if _is(node, _MULS, "mul") else None
    if ab is None or square_base(node) is not None and g.term(ab[0]) is None:
        return None
    ta, tb = g.term(ab[0]), g.term(ab[1])
    if ta is None or tb is None or ta.square is not None or tb.square is not None:
        (wa, oa), (wb, ob) = _through(ab[0], g), _through(ab[1], g)
        # two different linear maps of one input, one through an op (y * sigmoid(y) of one map is an activation)
        if wa is not None and wb is not None and wa.node is not wb.node and wa.base is wb.base and (oa or ob):
            return _skip(node, [wa, wb], f"a factor passes through {(oa or ob)[0]}", g)
        return None
    if ta.base is not tb.base:
        return _skip(node, [ta, tb], "the factors read different inputs", g)
    match = Match("t4", {"r": ta, "g": tb}, node, ta.base, [node])
    user = next(iter(node.users)) if len(node.users) == 1 else None
    pair = _binary(user) if user is not None and _is(user, _ADDS, "add") else None
    if pair is not None:
        other = pair[1] if pair[0] is node else pair[0]
        tc = g.term(other)
        if other is ta.out or other is tb.out:
            r = ta if other is ta.out else tb
            full = Match("qres", {"r": r, "g": tb if r is ta else ta}, user, ta.base, [node, user])
        elif tc is not None and tc.base is ta.base:
            full = Match("fan" if tc.square is not None else "quadralib",
                         {"r": ta, "g": tb, "b" if tc.square is not None else "l": tc}, user, ta.base, [node, user])
        else:
            full = None
        if full is not None and _problem(full, g) is None:
            return full
    reason = _problem(match, g)
    return match if reason is None else _skip(node, [ta, tb], reason, g)


def _compact(node: fx.Node, g: _Graph) -> Match | None:
    """A ``compact`` neuron rooted at the sum ``node``."""
    if _is(node, _ADDS, "add") and _binary(node) is not None:
        ta, tb = (g.term(a) for a in node.args)
        if ta is not None and tb is not None and ta.base is tb.base and (ta.square is None) != (tb.square is None):
            r, b = (ta, tb) if tb.square is not None else (tb, ta)
            m = Match("compact", {"r": r, "b": b}, node, r.base, [node])
            return m if _problem(m, g) is None else None
    return None


def _t2(node: fx.Node, g: _Graph) -> Match | None:
    """A ``t2`` neuron (a linear map of ``X²``) whose output is ``node``."""
    t = g.term(node)
    if t is not None and t.square is not None:
        m = Match("t2", {"b": t}, node, t.base, [])
        return m if _problem(m, g) is None else None
    return None


def _free(m: Match, used: set[fx.Node]) -> bool:
    """``m`` shares no node with a neuron found before (its square input included)."""
    squares = {t.square for t in m.roles.values() if t.square is not None}
    return not (set(m.nodes()) | squares) & used


def find_matches(gm: fx.GraphModule) -> tuple[list[Match], list[SkippedForm]]:
    """Every quadratic neuron of the traced ``gm`` (in graph order) and the quadratic-looking forms left alone."""
    g = _Graph(gm)
    matches: list[Match] = []
    skipped: list[SkippedForm] = []
    used: set[fx.Node] = set()
    for find in (_product, _compact, _t2):
        for node in list(gm.graph.nodes):
            found = None if node in used else find(node, g)
            if isinstance(found, SkippedForm):
                skipped.append(found)
                used.update(found.nodes)
            elif found is not None and _free(found, used):
                matches.append(found)
                used.update(found.nodes())
    for node in gm.graph.nodes:  # QuadraLib's type 1: a full quadratic form over patches
        if isinstance(g.module(node), nn.Bilinear):
            skipped.append(SkippedForm((str(node.target),), node.name, "nn.Bilinear is a full quadratic form x^T W y "
                                       "(QuadraLib type 1): no registered neuron type matches it"))
    matches.sort(key=lambda m: g.order[m.output])
    return matches, skipped
