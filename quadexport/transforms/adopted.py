"""Rewrite quadratic neurons written as plain layers into quadexport layers, replayable from a spec (issue #22).

:func:`rewrite` replaces each neuron :mod:`quadexport.transforms.adopt_match` found in a traced ``GraphModule`` by one
:class:`~quadexport.layers.QuadConv1d` / ``QuadConv2d`` / ``QuadLinear`` of the matching type carrying the branch
weights (a BatchNorm on a branch folded into that branch with its running statistics). :func:`quadexport.adopt`
records what it did in ``model.quadexport_config["adopt"]`` (:func:`make_spec`); :func:`apply_adopt_spec` replays it
on a freshly built model of the same class (the run dir then loads the adopted ``state_dict``, whose keys are the
same). :func:`relu_twin` gives the plain network the authors compare against; :func:`scan` tells
:func:`quadexport.quadratize` and the exporter whether a model still holds such neurons.

Spec (plain JSON, version :data:`SPEC_VERSION`)::

    {"version": 1, "input_shape": [3, 32, 32],
     "neurons": [{"name": "layer1.0.conv1", "type": "fan",
                  "branches": {"r": "layer1.0.conv1r", "g": "layer1.0.conv1g", "b": "layer1.0.conv1b"},
                  "bn": {"r": null, "g": null, "b": null}}, ...]}
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import fx, nn

from quadexport.runmeta import config_dict
from quadexport.errors import UsageError
from quadexport.layers.bnfold import bn_scale_shift, fold_bn
from quadexport.layers.neurons import get_neuron
from quadexport.layers.quad import QuadConv1d, QuadConv2d, QuadLayer, QuadLinear
from quadexport.layers.transposed import QuadConvTranspose1d, QuadConvTranspose2d, scale_out_channels
from quadexport.transforms.adopt_match import Match, SkippedForm, Term, find_matches, square_base, trace

SPEC_VERSION = 1

__all__ = ["SPEC_VERSION", "Scan", "apply_adopt_spec", "choose_names", "make_spec", "merged_spec", "neuron_entry",
           "relu_twin", "rewrite", "scan"]

_QUAD: dict[str, type[QuadLayer]] = {"linear": QuadLinear, "conv1d": QuadConv1d, "conv2d": QuadConv2d,
                                     "convT1d": QuadConvTranspose1d, "convT2d": QuadConvTranspose2d}


# ---------------------------------------------------------------------------------------------------------------
# One neuron -> one quadexport layer
# ---------------------------------------------------------------------------------------------------------------

def _tensor(root: nn.Module, path: str) -> torch.Tensor:
    owner, _, name = path.rpartition(".")
    return getattr(root.get_submodule(owner) if owner else root, name)


@torch.no_grad()
def _folded(t: Term, root: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The term's weight (``[out, in, k...]`` as the torch layer holds it) and bias, its BatchNorm (running
    statistics) folded in, in float64 then the layer dtype."""
    w = _tensor(root, t.weight_path).detach()
    w = w.t() if t.stored_transposed else w
    b = None if t.bias_path is None else _tensor(root, t.bias_path).detach()
    if t.bn is None:
        return w.clone(), None if b is None else b.clone()
    bn = root.get_submodule(t.bn)
    transposed, groups = t.kind.startswith("convT"), int(t.config.get("groups", 1))
    if not (transposed and groups > 1):
        return fold_bn(w, b, bn, transpose=transposed)
    # a grouped transposed weight [in, out/groups, k...] (torch's fuse_conv_bn_weights scales dim 1 whole)
    s, shift = bn_scale_shift(bn)  # the model is in eval mode here (adopt), so the BN is an affine map
    b64 = b.double() if b is not None else torch.zeros_like(s)
    return scale_out_channels(w, s, True, groups), (b64 * s + shift).to(w.dtype)


@torch.no_grad()
def build_layer(match: Match, root: nn.Module) -> QuadLayer:
    """The quadexport layer of ``match.type`` computing the neuron, each branch holding its term's weights."""
    nt = get_neuron(match.type)
    src = {role: _folded(t, root) for role, t in match.roles.items()}
    first = next(iter(match.roles.values()))
    w0 = _tensor(root, first.weight_path)
    per_layer = [b.name for b in nt.branches if b.bias == "layer"]
    bias = any(src[r][1] is not None for r in per_layer)
    layer = _QUAD[first.kind](neuron=match.type, bias=bias, device=w0.device, dtype=w0.dtype, **first.config)
    for role, (w, b) in src.items():
        br = getattr(layer, role)
        br.weight.copy_(w)
        br.weight.requires_grad_(_tensor(root, match.roles[role].weight_path).requires_grad)
        if br.bias is not None:
            br.bias.copy_(b if b is not None else torch.zeros_like(br.bias))
    owner = root.get_submodule(first.module) if not first.functional else root
    return layer.train(owner.training)


# ---------------------------------------------------------------------------------------------------------------
# Names, spec entries, the graph rewrite
# ---------------------------------------------------------------------------------------------------------------

def _candidate(paths: Sequence[str]) -> str:
    """``layer1.0.conv1`` for ``layer1.0.conv1r/g/b``: the common parent plus the common start of the leaf names."""
    parts = [p.split(".") for p in paths]
    parent: list[str] = []
    for level in zip(*[p[:-1] for p in parts]):
        if len(set(level)) != 1:
            break
        parent.append(level[0])
    leaves = [".".join(p[len(parent):]) for p in parts]
    leaf = leaves[0] if len(set(leaves)) == 1 else os.path.commonprefix(leaves)
    leaf = re.sub(r"[^0-9A-Za-z_]+", "_", leaf).strip("_") or "quad"
    return ".".join(parent + [leaf])


def _params_going(matches: Sequence[Match]) -> set[str]:
    """Paths of the parameters functional branches read (they move into the new layers)."""
    return {p for m in matches for t in m.roles.values() if t.functional
            for p in (t.weight_path, t.bias_path) if p}


def _emptied(gm: fx.GraphModule, params: set[str], modules: set[str]) -> set[str]:
    """Modules (other than the root) left with nothing once ``params`` and ``modules`` are gone: no parameter,
    buffer or child of their own, and no graph node that names them."""
    named = {str(n.target) for n in gm.graph.nodes if n.op in ("call_module", "get_attr")} - params - modules
    out: set[str] = set()
    for path, mod in sorted(gm.named_modules(), key=lambda pm: -pm[0].count(".")):
        if not path or path in modules:
            continue
        own = ([f"{path}.{k}" for k, v in mod._parameters.items() if v is not None]
               + [f"{path}.{k}" for k, v in mod._buffers.items() if v is not None])
        kids = [f"{path}.{k}" for k in mod._modules]
        if (all(p in params for p in own) and all(k in out or k in modules for k in kids)
                and not any(n == path or n.startswith(path + ".") for n in named) and (own or kids)):
            out.add(path)
    return out


def _name_source(t: Term) -> str:
    """What a branch contributes to its neuron's name: its module, or the module holding a functional branch's
    parameters (a root-level ``ParameterList``: the list; a root-level parameter: its own name)."""
    if t.owner:
        return t.owner
    head, _, leaf = t.module.rpartition(".")
    return head if leaf.isdigit() and head else t.module


def choose_names(gm: fx.GraphModule, matches: Sequence[Match]) -> list[str]:
    """A new module name per neuron (deterministic): the branches' common name (for functional branches, the
    module holding their parameters), made unique among the modules that stay."""
    going = {p for m in matches for t in m.roles.values() for p in (t.module, t.bn) if p and not t.functional}
    going |= _emptied(gm, _params_going(matches), going)
    taken = {n for n, _ in gm.named_modules() if n and n not in going}
    names = []
    for m in matches:
        base = cand = _candidate([_name_source(t) for t in m.roles.values()])
        i = 2
        while cand in taken or any(t.startswith(cand + ".") for t in taken):
            cand, i = f"{base}_{i}", i + 1
        taken.add(cand)
        names.append(cand)
    return names


def neuron_entry(match: Match, name: str) -> dict[str, Any]:
    """The spec entry of one adopted neuron (plain JSON)."""
    return {"name": name, "type": match.type,
            "branches": {r: t.module for r, t in match.roles.items()},
            "bn": {r: t.bn for r, t in match.roles.items()}}


def make_spec(entries: Sequence[Mapping[str, Any]], input_shape: Sequence[int] | None) -> dict[str, Any]:
    """The ``quadexport_config["adopt"]`` entry."""
    return {"version": SPEC_VERSION, "input_shape": list(input_shape) if input_shape else None,
            "neurons": [dict(e) for e in entries]}


def _drop(gm: fx.GraphModule, modules: set[str], params: set[str]) -> None:
    """Delete the branch modules, the parameters functional branches read, and the modules that leaves empty."""
    emptied = _emptied(gm, params, modules)
    for path in sorted(params):
        owner, _, name = path.rpartition(".")
        delattr(gm.get_submodule(owner) if owner else gm, name)
    for path in sorted(modules | emptied, key=lambda p: -p.count(".")):  # children before their parents
        gm.delete_submodule(path)


def rewrite(gm: fx.GraphModule, chosen: Sequence[tuple[Match, str]]) -> fx.GraphModule:
    """Replace each ``(match, name)`` of ``gm`` (traced, with ``find_matches``) by one quadexport layer called
    ``name``, in place; the branch modules and their BatchNorms leave ``gm``. Returns ``gm`` recompiled."""
    layers = [build_layer(m, gm) for m, _ in chosen]
    graph, erased, going = gm.graph, set(), set()
    for (m, name) in chosen:
        first = next(iter(m.roles.values()))
        x = first.node.args[0] if first.node.args else first.node.kwargs["input"]
        x = square_base(x) if first.square is not None else x  # args are live: earlier rewrites updated them
        with graph.inserting_before(m.output):
            new = graph.create_node("call_module", name, (x,), {}, name=name.replace(".", "_"))
        m.output.replace_all_uses_with(new)
        order = {n: i for i, n in enumerate(graph.nodes)}
        for n in sorted(m.nodes(), key=order.__getitem__, reverse=True):
            graph.erase_node(n)
            erased.add(n)
        for t in m.roles.values():
            if t.square is not None and t.square not in erased and not t.square.users:
                graph.erase_node(t.square)
                erased.add(t.square)
            going.update(p for p in (t.module, t.bn) if p and not t.functional)
            for p in t.params:
                if p not in erased and not p.users:
                    graph.erase_node(p)
                    erased.add(p)
    _drop(gm, going, _params_going([m for m, _ in chosen]))
    for (_, name), layer in zip(chosen, layers):
        gm.add_submodule(name, layer)
    for n in graph.nodes:  # type annotations from the user's forward: this torch's fx cannot pickle their globals
        n.type = None
    graph.lint()
    gm.recompile()
    return gm


# ---------------------------------------------------------------------------------------------------------------
# Replay, ReLU twin, scan
# ---------------------------------------------------------------------------------------------------------------

def merged_spec(source: nn.Module, spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` after the adopt spec ``source`` already records (adopting an adopted model again adds neurons; one
    replay on a fresh model finds them all, with their recorded names)."""
    old = (config_dict(source)).get("adopt")
    if not old:
        return copy.deepcopy(dict(spec))
    return make_spec([*old["neurons"], *spec["neurons"]], spec.get("input_shape") or old.get("input_shape"))


def _config(model: nn.Module, spec: Mapping[str, Any], result: nn.Module) -> dict[str, Any]:
    """The source's config plus the spec; ``neuron`` is the most common type among the quadratic layers of
    ``result`` (adopted or already quadexport layers; a registered name, as tools read it with ``get_neuron``),
    the source's own ``neuron`` (``"relu"``: none) when it has none."""
    cfg = copy.deepcopy(config_dict(model))
    types = [m.neuron for m in result.modules() if isinstance(m, QuadLayer)]
    common = max(sorted(set(types)), key=types.count) if types else cfg.get("neuron", "relu")
    cfg.update(neuron=common, adopt=copy.deepcopy(dict(spec)))
    return cfg


def finish(gm: fx.GraphModule, source: nn.Module, spec: Mapping[str, Any]) -> fx.GraphModule:
    """Give the rewritten ``gm`` the source's ``quadexport_meta`` and a config recording ``spec`` (which must already
    include what the source recorded: :func:`merged_spec`)."""
    gm.quadexport_config = _config(source, spec, gm)
    meta = getattr(source, "quadexport_meta", None)
    if meta is not None:
        gm.quadexport_meta = copy.deepcopy(meta)
    return gm.train(source.training)


def apply_adopt_spec(model: nn.Module, spec: Mapping[str, Any]) -> fx.GraphModule:
    """Replay an adoption (``model.quadexport_config["adopt"]`` of an adopted model) on a freshly built ``model`` of
    the source class: same neurons, same names, so the adopted ``state_dict`` loads into the result. ``model``'s
    submodules are shared with the result (build a fresh one per call).

    Raises:
        UsageError: the spec is malformed or names a neuron this model's graph does not have.
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("neurons"), list):
        raise UsageError("adopt spec must be a mapping with a 'neurons' list (model.quadexport_config['adopt'])")
    try:
        gm = trace(model)
    except Exception:  # nothing rewritten (a model of quadexport layers fx cannot trace): adopt kept it as it is
        if spec["neurons"]:
            raise
        return finish(model, model, merged_spec(model, spec))
    matches, _ = find_matches(gm)
    by_branches = {tuple(sorted((r, t.module) for r, t in m.roles.items())): m for m in matches}
    chosen = []
    for e in spec["neurons"]:
        m = by_branches.get(tuple(sorted(e["branches"].items())))
        if m is None or m.type != e["type"] or {r: t.bn for r, t in m.roles.items()} != dict(e.get("bn") or {}):
            raise UsageError(f"the adopt spec's neuron {e.get('name')!r} ({e.get('type')}: "
                             f"{', '.join(e['branches'].values())}) is not in this model's traced graph; does the "
                             f"spec belong to this model file and builder arguments?")
        chosen.append((m, e["name"]))
    return finish(rewrite(gm, chosen), model, merged_spec(model, spec))


def _twin_branch(layer: QuadLayer) -> nn.Module:
    nt = layer.neuron_type
    br = next((b for b in nt.branches if b.input == "x" and b.kind == "full" and not b.quadratic), nt.branches[0])
    return copy.deepcopy(getattr(layer, br.name))


def relu_twin(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in which every quadexport quadratic layer is its plain linear twin: the ``r`` branch
    (the first branch for types without one, e.g. ``t2``) as an ``nn.Conv1d``/``nn.Conv2d``/``nn.Linear`` under the
    same name; everything else (graph, BatchNorms, activations) unchanged."""
    twin = copy.deepcopy(model)
    outer = [(n, m) for n, m in twin.named_modules() if isinstance(m, QuadLayer)]
    for name, layer in outer:
        twin.set_submodule(name, _twin_branch(layer))
    cfg = getattr(twin, "quadexport_config", None)
    if cfg is not None:
        twin.quadexport_config = {**cfg, "neuron": "relu"}
    return twin


@dataclass
class Scan:
    """What :func:`scan` found: adoptable neurons (type, branch modules) and quadratic-looking forms left alone."""

    traced: bool
    neurons: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    skipped: list[SkippedForm] = field(default_factory=list)

    def branch_modules(self) -> set[str]:
        return {p for _, mods in self.neurons for p in mods}


def scan(model: nn.Module) -> Scan:
    """Quadratic neurons written as plain layers in ``model`` (``traced=False`` when ``torch.fx`` cannot trace it;
    the model is not modified)."""
    try:
        gm = trace(model)
    except Exception:  # data-dependent control flow etc.: nothing can be said
        return Scan(False)
    matches, skipped = find_matches(gm)
    return Scan(True, [(m.type, tuple(m.modules())) for m in matches], skipped)
