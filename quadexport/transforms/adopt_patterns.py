"""What each registered neuron type looks like in a graph: its ``combine`` probed into a polynomial (issue #28).

:func:`quadexport.adopt` does not know the neuron types by name. For every registered type it calls ``combine`` on
symbols (:class:`Poly`, one per branch) and reads back a polynomial over the branch outputs: ``fan``'s
``o["r"] * o["g"] + o["b"]`` is ``{(g, r): 1, (b,): 1}`` with ``b`` reading ``x²``. The matcher
(:mod:`quadexport.transforms.adopt_match`) builds the same kind of polynomial over the linear maps it finds in the user's
graph and asks :func:`match` which type, if any, has that polynomial under some assignment of branches to maps
(operand order is free: the polynomial is commutative). A type added with ``register_neuron`` is adopted as itself
with no code here.

A type takes part when all its branches are full-size linear maps of ``x`` or ``x²`` (no pointwise/depthwise
branch, no low-rank bottleneck), its ``combine`` uses only ``+``, ``-``, ``*``, integer powers, scalars and
``torch.mul``/``add``/``sub``/``square`` (checked numerically against the probed polynomial), and it is quadratic (a
product of branches or a branch of ``x²``). Types are tried in registration order, so a built-in type wins over a
later one with the same polynomial.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any, Hashable, Mapping, Sequence

import torch

from quadexport.layers.neurons import NeuronType, registered_neurons

log = logging.getLogger(__name__)

Monomial = tuple[Hashable, ...]

__all__ = ["NeuronPattern", "Poly", "match", "patterns"]


class Poly:
    """A polynomial with real coefficients over symbols (branch names, or term ids of a graph): ``{monomial: coef}``
    with each monomial a sorted tuple of symbols."""

    __slots__ = ("terms",)

    def __init__(self, terms: Mapping[Monomial, float] | None = None) -> None:
        self.terms = {k: float(v) for k, v in (terms or {}).items() if v != 0}

    @classmethod
    def symbol(cls, name: Hashable) -> "Poly":
        return cls({(name,): 1.0})

    @staticmethod
    def _lift(v: Any) -> "Poly":
        if isinstance(v, Poly):
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return Poly({(): float(v)})
        raise TypeError(f"not a polynomial operand: {type(v).__name__}")

    def __add__(self, other: Any) -> "Poly":
        out = dict(self.terms)
        for k, v in self._lift(other).terms.items():
            out[k] = out.get(k, 0.0) + v
        return Poly(out)

    __radd__ = __add__

    def __neg__(self) -> "Poly":
        return Poly({k: -v for k, v in self.terms.items()})

    def __sub__(self, other: Any) -> "Poly":
        return self + -self._lift(other)

    def __rsub__(self, other: Any) -> "Poly":
        return self._lift(other) + -self

    def __mul__(self, other: Any) -> "Poly":
        out: dict[Monomial, float] = {}
        for (ka, va), (kb, vb) in itertools.product(self.terms.items(), self._lift(other).terms.items()):
            k = tuple(sorted(ka + kb, key=repr))
            out[k] = out.get(k, 0.0) + va * vb
        return Poly(out)

    __rmul__ = __mul__

    def __pow__(self, n: Any) -> "Poly":
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise TypeError("only non-negative integer powers")
        out = Poly({(): 1.0})
        for _ in range(n):
            out = out * self
        return out

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if kwargs:
            return NotImplemented
        ops = {torch.mul: lambda a, b: Poly._lift(a) * b, torch.add: lambda a, b: Poly._lift(a) + b,
               torch.sub: lambda a, b: Poly._lift(a) - b, torch.square: lambda a: a * a,
               torch.pow: lambda a, n: a ** n, torch.neg: lambda a: -a}
        for name in ("mul", "add", "sub", "square", "pow", "neg"):
            ops[getattr(torch.Tensor, name)] = ops[getattr(torch, name)]
        if func in ops:
            return ops[func](*args)
        return NotImplemented

    def symbols(self) -> set[Hashable]:
        return {s for k in self.terms for s in k}

    def degree(self) -> int:
        return max((len(k) for k in self.terms), default=0)

    def rename(self, mapping: Mapping[Hashable, Hashable]) -> "Poly":
        out = Poly()
        for k, v in self.terms.items():
            mono = Poly({(): v})
            for s in k:
                mono = mono * Poly.symbol(mapping[s])
            out = out + mono
        return out

    def same(self, other: "Poly", rtol: float = 1e-9) -> bool:
        keys = set(self.terms) | set(other.terms)
        return all(abs(self.terms.get(k, 0.0) - other.terms.get(k, 0.0))
                   <= rtol * max(1.0, abs(self.terms.get(k, 0.0))) for k in keys)

    def __repr__(self) -> str:
        return " + ".join(f"{v:g}*{'*'.join(map(str, k)) or '1'}" for k, v in self.terms.items()) or "0"


@dataclass(frozen=True)
class NeuronPattern:
    """A registered type as a polynomial over its branch names, and the input (``x`` / ``x2``) of each branch."""

    type: str
    poly: Poly
    inputs: dict[str, str]


def _evaluate(poly: Poly, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
    out = torch.zeros_like(next(iter(values.values())))
    for k, v in poly.terms.items():
        t = torch.full_like(out, v)
        for s in k:
            t = t * values[s]
        out = out + t
    return out


def _probe(nt: NeuronType) -> NeuronPattern | None:
    """``nt``'s pattern, or ``None`` (with the reason logged at debug level) when it cannot take part."""
    if any(b.kind != "full" for b in nt.branches) or hasattr(nt, "make_branch") or hasattr(nt, "branch_outputs"):
        return None  # pointwise/depthwise/low-rank branches: research code does not write those inline
    names = [b.name for b in nt.branches]
    try:
        poly = Poly._lift(nt.combine({n: Poly.symbol(n) for n in names}))
    except Exception as e:  # any combine that is not a polynomial of the branch outputs
        log.debug("neuron %r: combine is not a polynomial of its branches (%s)", nt.name, e)
        return None
    g = torch.Generator().manual_seed(0)
    values = {n: torch.randn(6, generator=g, dtype=torch.float64) for n in names}
    ref = nt.combine(dict(values))
    if not isinstance(ref, torch.Tensor) or not torch.allclose(ref, _evaluate(poly, values), rtol=1e-9, atol=1e-12):
        log.debug("neuron %r: combine differs from its probed polynomial %s", nt.name, poly)
        return None
    inputs = {b.name: b.input for b in nt.branches}
    quadratic = poly.degree() >= 2 or any(inputs[s] == "x2" for s in poly.symbols())
    if not quadratic or poly.symbols() != set(names) or () in poly.terms:
        return None  # linear in x, a branch that does not count, or a constant: not a neuron adopt can find
    return NeuronPattern(nt.name, poly, inputs)


_CACHE: dict[NeuronType, NeuronPattern | None] = {}


def patterns() -> list[NeuronPattern]:
    """The patterns of every registered type that can take part, in registration order."""
    out = []
    for nt in registered_neurons():
        if nt not in _CACHE:
            _CACHE[nt] = _probe(nt)
        if _CACHE[nt] is not None:
            out.append(_CACHE[nt])
    return out


def match(poly: Poly, order: Sequence[Hashable], inputs: Mapping[Hashable, str]
          ) -> tuple[str, dict[str, Hashable]] | None:
    """``(type, {branch: symbol})`` of the first registered type whose polynomial becomes ``poly`` when its branches
    are assigned to the symbols ``order`` (every symbol used; a branch and its symbol read the same input
    ``inputs[symbol]``), or ``None``. Assignments are tried in ``order``'s order, so ``r`` is the first factor as
    written."""
    symbols = list(order)
    found = patterns()  # one branch per symbol first (qres's r*g + r is not quadralib's r*g + l with l = r)
    for p in [p for p in found if len(p.inputs) == len(symbols)] + [p for p in found if len(p.inputs) > len(symbols)]:
        branches = list(p.inputs)
        if len(p.poly.terms) != len(poly.terms):
            continue
        for pick in itertools.product(range(len(symbols)), repeat=len(branches)):
            if len(set(pick)) != len(symbols):
                continue
            roles = {b: symbols[i] for b, i in zip(branches, pick)}
            if any(p.inputs[b] != inputs[s] for b, s in roles.items()):
                continue
            if p.poly.rename(roles).same(poly):
                return p.type, roles
    return None
