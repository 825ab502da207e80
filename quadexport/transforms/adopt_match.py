"""Find quadratic neurons written as plain layers in a ``torch.fx`` graph (issue #22, #28, #30).

Research code writes a quadratic neuron as linear maps combined inside ``forward``: module calls
(``conv1r(x) * conv1g(x) + conv1b(x.pow(2))``) or functional calls on parameters (``F.conv1d(x, self.weight_r,
self.bias_r, stride, padding) * ...``, ``x @ W.t() + b``). This module reads the *traced graph* (never attribute or
class names):

- a *term* (:mod:`quadexport.transforms.adopt_terms`) is one linear map, optionally followed by a BatchNorm call (folded
  later), reading either ``X`` or the square of ``X`` (``x.pow(2)``, ``x ** 2``, ``x * x``, ``torch.square(x)``,
  ``torch.mul(x, x)``);
- sums, differences and products of terms of one ``X`` (scalars allowed) are read as a polynomial over the terms and
  matched against every registered neuron type's ``combine`` (:mod:`quadexport.transforms.adopt_patterns`), operands in any
  order, the largest expression first: ``r*g + b(x²)`` is ``fan``, ``r*g + l`` ``quadralib``, ``r*g + r`` ``qres``,
  ``r*g`` ``t4``, ``r + b(x²)`` ``compact``, ``b(x²)`` ``t2``, and a type added with ``register_neuron`` is
  whatever its ``combine`` computes.

Forms that look quadratic but fit no type (a factor passes through a nonlinearity, branches of different geometry,
shared or externally used branches, a polynomial no registered type has, 3-d convolutions) are returned as
:class:`SkippedForm` with the reason.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from quadexport.layers.mixed import MixedQuad
from quadexport.layers.quad import QuadLayer
from quadexport.transforms.adopt_patterns import Poly, match
from quadexport.transforms.adopt_terms import Term, TermGraph, is_call, square_base

__all__ = ["AdoptedGraphModule", "Match", "SkippedForm", "Term", "Tracer", "find_matches", "square_base", "trace"]

_MULS = {operator.mul, torch.mul, torch.Tensor.mul}
_ADDS = {operator.add, operator.iadd, torch.add, torch.Tensor.add}
_SUBS = {operator.sub, operator.isub, torch.sub, torch.Tensor.sub}
_NEGS = {operator.neg, torch.neg, torch.Tensor.neg}
_POWS = {operator.pow, torch.pow, torch.Tensor.pow}
_GEOMETRY = (("in_features", "input size"), ("out_features", "output size"), ("in_channels", "input channels"),
             ("out_channels", "output channels"), ("kernel_size", "kernel size"), ("stride", "stride"),
             ("padding", "padding"), ("output_padding", "output padding"), ("dilation", "dilation"),
             ("groups", "groups"), ("padding_mode", "padding mode"))
_MAX_TERMS = 6
_MAX_DEGREE = 4
"""Expressions of more linear maps, or of higher degree, are no neuron (and are not expanded further)."""
_KIND = {"linear": "linear", "conv1d": "conv1d", "conv2d": "conv2d", "conv3d": "conv3d",
         "convT1d": "transposed conv1d", "convT2d": "transposed conv2d", "convT3d": "transposed conv3d"}


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


def _binary(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    if len(node.args) == 2 and all(isinstance(a, fx.Node) for a in node.args):
        return node.args[0], node.args[1]
    return None


def _skip(product: fx.Node, terms: list[Term], reason: str, g: TermGraph) -> SkippedForm:
    """A skipped form around ``product``: its factor terms and a term added to it (so no smaller neuron is carved
    out of the form afterwards)."""
    user = next(iter(product.users)) if len(product.users) == 1 else None
    pair = _binary(user) if user is not None and is_call(user, _ADDS, "add") else None
    if pair is not None:
        partner = g.term(pair[1] if pair[0] is product else pair[0])
        terms = terms + ([partner] if partner is not None else [])
    nodes = tuple(n for t in terms for n in t.nodes()) + (product,)
    return SkippedForm(tuple(dict.fromkeys(t.module for t in terms)), product.name, reason, nodes)


def _through(node: Any, g: TermGraph, depth: int = 4) -> tuple[Term | None, list[str]]:
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


def _suspicious(node: fx.Node, g: TermGraph) -> SkippedForm | None:
    """A product of two linear maps of one input that no type can take for a structural reason: a factor passes
    through a nonlinearity, or the factors read different inputs."""
    ab = _binary(node) if is_call(node, _MULS, "mul") else None
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
    return None


class _Expr:
    """A node read as a polynomial over terms: symbols are the terms' output node names, in the order written."""

    def __init__(self, g: TermGraph) -> None:
        self.g, self.terms, self.ops, self.seen = g, {}, [], {}

    def walk(self, n: Any) -> Poly | None:
        if isinstance(n, (int, float)) and not isinstance(n, bool):
            return Poly({(): float(n)})
        if not isinstance(n, fx.Node) or len(self.terms) > _MAX_TERMS:
            return None
        if n not in self.seen:  # a node reached twice (qres's h1) is read once
            poly = self._read(n)
            big = poly is not None and (len(poly.terms) > 4 * _MAX_TERMS or poly.degree() > _MAX_DEGREE)
            self.seen[n] = None if big else poly
        return self.seen[n]

    def _read(self, n: fx.Node) -> Poly | None:
        t = self.g.term(n)
        if t is not None:
            self.terms.setdefault(n.name, t)
            return Poly.symbol(n.name)
        args = list(n.args)
        if n.kwargs or len(args) not in (1, 2):
            return None
        if len(args) == 2 and is_call(n, _POWS, "pow") and args[1] == 2 and not isinstance(args[1], bool):
            args = [args[0], args[0]]
            fn = lambda a, b: a * b  # noqa: E731
        elif len(args) == 2 and (is_call(n, _MULS, "mul") or is_call(n, _ADDS, "add") or is_call(n, _SUBS, "sub")):
            fn = ((lambda a, b: a * b) if is_call(n, _MULS, "mul") else (lambda a, b: a + b)
                  if is_call(n, _ADDS, "add") else (lambda a, b: a - b))
        elif len(args) == 1 and is_call(n, _NEGS, "neg"):
            args, fn = [args[0], -1.0], (lambda a, b: a * b)
        else:
            return None
        self.ops.append(n)
        if is_call(n, _ADDS, "add") and len(args) == 2:
            for e, b in (args, args[::-1]):
                p = self.g.param(b)
                if p is not None and p.dim() == 1 and not isinstance(self.g.param(e), torch.Tensor):
                    poly = self.walk(e)
                    return None if poly is None else self._bias(poly, b)
        parts = [self.walk(a) for a in args]
        return None if any(p is None for p in parts) else fn(*parts)

    def _bias(self, poly: Poly, b: fx.Node) -> Poly | None:
        """``poly + b`` for a 1-D parameter ``b`` added after a sum (``r * g + x2 @ W_b.t() + b_b``): ``b`` becomes
        the bias of the dense term that enters ``poly`` only additively (and has none), else ``None``."""
        n = int(self.g.param(b).shape[0])
        for s, t in self.terms.items():
            alone = poly.terms.get((s,)) == 1.0 and sum(s in k for k in poly.terms) == 1
            if alone and t.kind == "linear" and t.bias_path is None and t.bn_node is None and t.out_features == n:
                t.bias_path, t.params = str(b.target), [*t.params, b]
                return poly
        return None


def _candidate(root: fx.Node, g: TermGraph) -> tuple[Match | None, str | None]:
    """``(the neuron rooted at root, None)``, ``(None, why a quadratic-looking form fits no type)`` or
    ``(None, None)`` when ``root`` is no polynomial of linear maps of one input."""
    e = _Expr(g)
    poly = e.walk(root)
    if poly is None or not e.terms:
        return None, None  # not an expression of linear maps
    if not e.ops and (e.terms[root.name].square is None or e.terms[root.name].bn_node is not None):
        return None, None  # one linear map of x; or of x² with a BatchNorm after it, which follows the neuron
    bases = {t.base for t in e.terms.values()}
    if len(bases) != 1 or () in poly.terms:
        return None, None
    inputs = {s: "x2" if t.square is not None else "x" for s, t in e.terms.items()}
    found = match(poly, list(e.terms), inputs)
    if found is None:
        quadratic = poly.degree() >= 2 or "x2" in inputs.values()
        return None, (f"{poly.rename({s: t.module for s, t in e.terms.items()})} fits no registered neuron type"
                      if quadratic else None)
    ntype, roles = found
    return Match(ntype, {r: e.terms[s] for r, s in roles.items()}, root, next(iter(bases)), e.ops), None


def _weight(t: Term, g: TermGraph) -> torch.Tensor | None:
    try:
        return g.gm.get_parameter(t.weight_path)
    except AttributeError:
        return None


def _mismatch(a: Term, b: Term, g: TermGraph) -> str | None:
    if a.kind != b.kind:
        return f"branches differ in layer type ({_KIND[a.kind]} vs {_KIND[b.kind]})"
    for attr, what in _GEOMETRY:
        if a.config.get(attr) != b.config.get(attr):
            return f"branches differ in {what}"
    wa, wb = _weight(a, g), _weight(b, g)
    if wa is not None and wb is not None and (wa.dtype != wb.dtype or wa.device != wb.device):
        return "branches differ in dtype or device"
    return None


def _problem(m: Match, g: TermGraph) -> str | None:
    terms = list({id(t.out): t for t in m.roles.values()}.values())
    for t in terms[1:]:
        reason = _mismatch(terms[0], t, g)
        if reason:
            return reason
    for t in terms:
        reason = g.problem(t)
        if reason:
            return reason
    inside = set(m.nodes())
    for n in inside:
        if n is not m.output and any(u not in inside for u in n.users):
            return f"a branch output ({n.name}) is also used outside the neuron"
    return None


def _claimed(m: Match) -> set[fx.Node]:
    """The nodes a neuron takes, its square inputs included."""
    return set(m.nodes()) | {t.square for t in m.roles.values() if t.square is not None}


def find_matches(gm: fx.GraphModule) -> tuple[list[Match], list[SkippedForm]]:
    """Every quadratic neuron of the traced ``gm`` (in graph order) and the quadratic-looking forms left alone."""
    g = TermGraph(gm)
    matches: list[Match] = []
    skipped: list[SkippedForm] = []
    used: set[fx.Node] = set()
    for node in gm.graph.nodes:
        s = _suspicious(node, g)
        if s is not None:
            skipped.append(s)
            used.update(s.nodes)
    pending: list[tuple[list[str], fx.Node, str, set[fx.Node]]] = []
    for node in reversed(list(gm.graph.nodes)):  # the largest expression first: it ends last
        if node in used:
            continue
        m, why = _candidate(node, g)
        if m is None:
            if why is not None:
                e = _Expr(g)
                e.walk(node)
                pending.append(([t.module for t in e.terms.values()], node, why,
                                {n for t in e.terms.values() for n in t.nodes()} | set(e.ops)))
            continue
        claim = _claimed(m)
        if claim & used:
            continue
        reason = _problem(m, g)
        if reason is None:
            matches.append(m)
            used.update(claim)
        else:
            pending.append((m.modules(), node, reason, set(m.nodes())))
    for modules, node, reason, nodes in pending:  # the largest form that nothing inside it was adopted from
        if not nodes & used:
            skipped.append(SkippedForm(tuple(dict.fromkeys(modules)), node.name, reason, tuple(nodes)))
            used.update(nodes)
    for node in gm.graph.nodes:  # QuadraLib's type 1: a full quadratic form over patches
        if isinstance(g.module(node), nn.Bilinear):
            skipped.append(SkippedForm((str(node.target),), node.name, "nn.Bilinear is a full quadratic form x^T W y "
                                       "(QuadraLib type 1): no registered neuron type matches it"))
    matches.sort(key=lambda m: g.order[m.output])
    return matches, skipped
