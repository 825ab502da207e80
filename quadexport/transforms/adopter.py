"""Adopt a quadratic network trained anywhere (:func:`adopt`, issue #22).

Public research code writes a quadratic neuron as plain layers combined in ``forward`` (the ReLinear authors'
``conv1r(x) * conv1g(x) + conv1b(x.pow(2))``, QuadraLib's ``bn1(conv1(x)) * bn2(conv2(x)) + bn3(conv3(x))``, the
compact ``conv_r(x) + conv_b(x.pow(2))``...). :func:`adopt` traces the model with ``torch.fx``, finds those neurons in
the graph (:mod:`quadexport.transforms.adopt_match`, never by names), replaces each by a quadexport layer of the matching
registered type carrying the trained weights (:mod:`quadexport.transforms.adopted`) and verifies that the outputs are
unchanged. The result exports in every mode (one custom node per neuron in ``function``/``fused``), folds the
BatchNorm after each neuron, trains, compresses and has a ReLU twin (:func:`relu_twin`).
"""

from __future__ import annotations

import copy
import fnmatch
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence, Union

import torch
from torch import fx, nn

from quadexport._torchutil import one_thread
from quadexport.data.inputs import ModelInputs, as_tuple, explain_forward, resolve
from quadexport.errors import QuadexportError, UsageError
from quadexport.layers.mixed import MixedQuad
from quadexport.layers.quad import QuadLayer
from quadexport.parity import ConversionCheck, verify_conversion
from quadexport.zoo import count_macs, count_params
from quadexport.transforms.adopt_match import Match, SkippedForm, find_matches, trace
from quadexport.transforms.adopted import (choose_names, finish, make_spec, merged_spec, neuron_entry, relu_twin,
                                     rewrite)

log = logging.getLogger(__name__)

TOLERANCE = 1e-6
"""Max relative difference (``max|new − old| / max|old|``) between the adopted model's outputs and the source's in
float64, or :data:`quadexport.parity.K` times the source's own float32 floor when that is larger (issue #29)."""

NeuronSelector = Union[str, Sequence[str], Callable[[str, Sequence[str]], bool], None]
"""Glob pattern(s) over a neuron's new name or any of its branch module paths, or a predicate
``(new name, branch paths) -> bool``."""

__all__ = ["AdoptError", "AdoptReport", "AdoptedNeuron", "SkippedForm", "TOLERANCE", "adopt", "relu_twin"]


class AdoptError(QuadexportError, RuntimeError):
    """The adopted model does not compute what the source computed (a bug or an unsupported pattern)."""


@dataclass(frozen=True)
class AdoptedNeuron:
    """One neuron now a quadexport layer: its new module ``name``, ``type``, branch role → source module path, and
    the BatchNorm folded into each branch (``None``: none)."""

    name: str
    type: str
    branches: dict[str, str]
    bn: dict[str, str | None]


@dataclass
class AdoptReport:
    """What :func:`adopt` did.

    Attributes:
        neurons: the adopted neurons, in graph order.
        skipped: quadratic-looking forms left as standard ops, each with its reason.
        params_before: learnable parameters of the source model.
        params_after: learnable parameters of the adopted model (BatchNorms on branches are gone).
        macs_before: MACs of one sample before (``None`` when the input shape is unknown).
        macs_after: MACs after.
        input_shape: the per-sample shape used (``None``: not verified); the first input's for several.
        inputs: the inputs verified with (names, shapes, ranges; ``None``: not verified).
        max_rel_diff: ``max|adopted − source| / max|source|`` on a random batch (``None``: not verified).
        err_fp64: the same figure against the source run in float64 (``None``: not verified or no float64 run).
        floor: the source's own float32 figure against float64 (its float32 floor).
        rule: what accepted or refused the conversion (``rtol``: within :data:`TOLERANCE`; ``floor``: within
            K × floor; ``fp32``: no float64 reference, the old rule; ``nonfinite``).
        spec: the JSON spec recorded in ``quadexport_config["adopt"]``.
        already: quadratic layers the source already held as quadexport layers (kept as they are).
    """

    neurons: list[AdoptedNeuron] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    skipped: list[SkippedForm] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int | None = None
    macs_after: int | None = None
    input_shape: tuple[int, ...] | None = None
    inputs: ModelInputs | None = None
    max_rel_diff: float | None = None
    err_fp64: float | None = None
    floor: float | None = None
    rule: str | None = None
    verdict: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    source: nn.Module | None = field(default=None, repr=False, compare=False)
    adopted: nn.Module | None = field(default=None, repr=False, compare=False)

    @torch.no_grad()
    def verify(self, x: torch.Tensor | Sequence[torch.Tensor]) -> float:
        """``max|adopted(x) − source(x)| / max|source(x)|`` on a batch of real inputs (both in eval mode); ``x``: a
        tensor, or a tuple of them for a model with several inputs."""
        if self.source is None or self.adopted is None:
            raise UsageError("this report holds no models to verify (it was rebuilt from a dict)")
        return _rel_diff(_eval_out(self.source, x), _eval_out(self.adopted, x))

    def verify_fp64(self, x: Any, inputs: str = "the inputs used") -> ConversionCheck:
        """Judge the adopted model against the source in float64 on ``x`` (a batch or a tuple of batches) and record
        the figures; ``ok`` when within ``max(TOLERANCE, K x the source's float32 floor)``.

        Raises:
            quadexport.parity.NonFiniteOutputs: the source's own outputs are NaN/Inf on ``x`` (one line).
        """
        if self.source is None or self.adopted is None:
            raise UsageError("this report holds no models to verify (it was rebuilt from a dict)")
        res = verify_conversion(self.source, self.adopted, x, TOLERANCE, inputs_desc=inputs)
        self.max_rel_diff, self.err_fp64, self.floor = res.max_rel_diff, res.err_fp64, res.floor
        self.rule, self.verdict = res.verdict.rule, res.summary()
        return res

    def summary(self) -> str:
        """One line: neurons per type, forms left alone, params/MACs, verification."""
        counts: dict[str, int] = {}
        for n in self.neurons:
            counts[n.type] = counts.get(n.type, 0) + 1
        types = ", ".join(f"{v} {k}" for k, v in counts.items()) or "none"
        s = (f"adopt: {len(self.neurons)} neuron(s) rewritten ({types}), {len(self.already)} already quadexport, "
             f"{len(self.skipped)} form(s) left alone; params {self.params_before:,} -> {self.params_after:,}")
        if self.macs_before is not None:
            s += f", MACs {self.macs_before:,} -> {self.macs_after:,}"
        if self.max_rel_diff is None:
            return s + "; not verified (pass input_shape= or example_input=)"
        return s + f"; outputs unchanged ({self.verdict or f'max rel diff {self.max_rel_diff:.1e}'})"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (for a run dir)."""
        extra = {k: v for k, v in (self.inputs.meta() if self.inputs is not None else {}).items()
                 if k != "input_shape"}  # several inputs: their names and shapes; a range: the range
        return {**extra, "neurons": [asdict(n) for n in self.neurons], "already": list(self.already),
                "skipped": [{"modules": list(s.modules), "node": s.node, "reason": s.reason} for s in self.skipped],
                "params_before": self.params_before, "params_after": self.params_after,
                "macs_before": self.macs_before, "macs_after": self.macs_after,
                "input_shape": list(self.input_shape) if self.input_shape else None,
                "max_rel_diff": self.max_rel_diff, "err_fp64": self.err_fp64, "floor": self.floor,
                "rule": self.rule, "spec": self.spec}


def _outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in _outputs(o)] if isinstance(out, (list, tuple)) else []


def _eval_out(model: nn.Module, x: Any) -> list[torch.Tensor]:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _outputs(model(*as_tuple(x)))
    finally:
        model.train(was)


def _rel_diff(ref: list[torch.Tensor], new: list[torch.Tensor]) -> float:
    if len(ref) != len(new) or any(a.shape != b.shape for a, b in zip(ref, new)):
        return float("inf")
    worst = 0.0
    for a, b in zip(ref, new):
        if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
            return float("inf")  # NaN compares false: a NaN must never read as "unchanged"
        if a.numel():
            scale = float(a.abs().max())
            diff = float((a.double() - b.double()).abs().max())
            worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def _selector(sel: NeuronSelector, what: str, matches: list[Match], names: list[str]
              ) -> Callable[[str, Sequence[str]], bool]:
    if callable(sel):
        return sel
    patterns = [sel] if isinstance(sel, str) else list(sel or [])
    known = [p for m, n in zip(matches, names) for p in (n, *m.modules())]
    for p in patterns:
        if not any(fnmatch.fnmatchcase(k, p) for k in known):
            raise UsageError(f"{what} pattern {p!r} matches no quadratic neuron; neurons read "
                             f"{', '.join(names[:3]) or '(none found)'}")
    return lambda name, paths: any(fnmatch.fnmatchcase(k, p) for p in patterns for k in (name, *paths))


def _choose(gm: fx.GraphModule, matches: list[Match], include: NeuronSelector, exclude: NeuronSelector,
            report: AdoptReport) -> list[tuple[Match, str]]:
    names = choose_names(gm, matches)
    inc = _selector(include, "include", matches, names) if include is not None else None
    exc = _selector(exclude, "exclude", matches, names) if exclude is not None else None
    chosen = []
    for m, n in zip(matches, names):
        why = ("not selected by include" if inc is not None and not inc(n, m.modules()) else
               "excluded" if exc is not None and exc(n, m.modules()) else None)
        if why is None:
            chosen.append((m, n))
        else:
            report.skipped.append(SkippedForm(tuple(m.modules()), m.output.name, f"{m.type} neuron {why}"))
    # names again over the chosen neurons only, so a replay (which sees exactly these) picks the same ones
    return list(zip([m for m, _ in chosen], choose_names(gm, [m for m, _ in chosen])))


def _example(model: nn.Module, example_input: Any, input_shape: Any, input_range: Any
             ) -> tuple[ModelInputs | None, tuple[torch.Tensor, ...] | None]:
    """The inputs (:func:`quadexport.data.inputs.resolve`) and a batch of 2 to verify with: ``example_input``, or
    random inputs drawn from the specs (uniform in their range where one is given)."""
    if isinstance(example_input, (tuple, list)) and len(example_input) == 1:
        example_input = example_input[0]
    inputs = resolve(model, example_input=example_input, input_shape=input_shape, input_range=input_range)
    if inputs is None:
        return None, None
    if example_input is not None:
        return inputs, tuple(t.detach() for t in as_tuple(example_input))
    p = next(model.parameters(), None)
    xs = inputs.example(2)
    if p is not None and p.is_floating_point():
        xs = tuple(x.to(p.device, p.dtype) for x in xs)
    return inputs, xs


def _described(inputs: ModelInputs) -> str:
    """The random verification inputs in words (for the one-line refusal of a non-finite model)."""
    if all(r is None for r in inputs.ranges):
        return "N(0, 1) random inputs"
    return "random inputs " + ", ".join("N(0, 1)" if r is None else f"uniform in [{r[0]:g}, {r[1]:g}]"
                                        for r in inputs.ranges)


def adopt(model: nn.Module, example_input: torch.Tensor | Sequence[torch.Tensor] | None = None,
          input_shape: Sequence[int] | Sequence[Sequence[int]] | None = None, include: NeuronSelector = None,
          exclude: NeuronSelector = None, return_report: bool = False, input_range: Any = None) -> Any:
    """Make every quadratic neuron written as plain layers a quadexport layer that computes exactly the same.

    Neurons are found in the ``torch.fx`` graph: products and sums of ``nn.Conv1d``/``nn.Conv2d``/``nn.Linear`` calls
    (each optionally followed by a BatchNorm, folded into its branch) on one input ``x`` and its square (``x.pow(2)``,
    ``x ** 2``, ``x * x``, ``torch.square``, ``torch.mul(x, x)``), operands in any order: ``r*g + b(x²)`` → ``fan``,
    ``r*g`` → ``t4``, ``r*g + l`` → ``quadralib``, ``r*g + r`` → ``qres``, ``r + b(x²)`` → ``compact``, ``b(x²)`` →
    ``t2``. Branches must share their geometry (stride, padding, dilation, groups); forms that fit no type stay
    standard ops and the report says why ("a factor passes through relu", "branches differ in stride").

    Args:
        model: the trained model (not modified).
        example_input: a batch to verify with (default: random inputs of ``input_shape``); a tuple of batches for a
            model whose ``forward`` takes several tensors.
        input_shape: one sample's shape (e.g. ``(3, 32, 32)``) for the MAC counts and the verification; one shape
            per input for several (``[(1,), (1,)]`` for ``forward(x, t)``).
        include: neurons to adopt: glob(s) over the new name or a branch module path, or a predicate
            ``(name, branch paths) -> bool``; ``None`` = all.
        exclude: neurons to leave alone (same forms).
        return_report: return ``(model, AdoptReport)``.
        input_range: draw the random verification inputs uniformly in ``(lo, hi)`` (one pair for all inputs, or one
            per input) instead of N(0, 1): a model trained on [0, 1] images may overflow on N(0, 1) inputs.

    Returns:
        A ``torch.fx.GraphModule`` (deep-copyable, exportable, trainable) whose ``quadexport_config["adopt"]`` records
        the rewrite (:func:`quadexport.transforms.adopted.apply_adopt_spec` replays it on a fresh model), or
        ``(model, report)``.

    Raises:
        UsageError: ``torch.fx`` cannot trace the model, an include/exclude glob matches no neuron, or the model
            does not take the given inputs (their count or shapes; the message names the layer).
        AdoptError: the adopted model's output differs from the source's in float64 by more than
            ``max(TOLERANCE, K x the source's own float32 floor)``, or holds NaN/Inf.
        quadexport.parity.NonFiniteOutputs: the source's own outputs are NaN/Inf on the verification inputs.
    """
    source = copy.deepcopy(model)
    already: list[str] = []
    for n, m in model.named_modules():  # the outermost quadexport quadratic layers
        if isinstance(m, (QuadLayer, MixedQuad)) and not any(n.startswith(a + ".") for a in already):
            already.append(n)
    try:
        gm = trace(copy.deepcopy(model))
    except Exception as e:  # torch.fx raises many types on untraceable code
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if not already:
            raise UsageError(f"adopt needs a model torch.fx can trace ({why}); make forward free of "
                             f"data-dependent control flow") from None
        log.warning("adopt: torch.fx cannot trace the model (%s): its %d quadexport layer(s) are kept, no inline "
                    "neuron was searched for", why, len(already))
        gm = None
    inputs, x = _example(model, example_input, input_shape, input_range)
    shape = inputs.shapes[0] if inputs is not None else None
    if x is not None:
        with explain_forward(source, inputs), one_thread():
            _eval_out(source, x)  # a wrong shape: one line naming the layer, before any other work
    report = AdoptReport(params_before=count_params(source), input_shape=shape, inputs=inputs, source=source,
                         already=already)
    functional: list[str] = []  # adopted neurons whose branches were F.* calls: count_macs of the source misses them
    if gm is None:  # nothing to rewrite: the model as it is, its quadexport layers kept
        report.spec = merged_spec(model, make_spec([], shape))
        report.skipped.append(SkippedForm(("(model)",), "", "torch.fx cannot trace the model: no inline neuron "
                                          "was searched for"))
        adopted = finish(copy.deepcopy(model), model, report.spec)
    else:
        matches, skipped = find_matches(gm)
        report.skipped = list(skipped)
        chosen = _choose(gm, matches, include, exclude, report)
        report.neurons = [AdoptedNeuron(**neuron_entry(m, n)) for m, n in chosen]
        report.spec = merged_spec(model, make_spec([neuron_entry(m, n) for m, n in chosen], shape))
        functional = [n for m, n in chosen if any(t.functional for t in m.roles.values())]
        adopted = finish(rewrite(gm, chosen), model, report.spec)
    report.params_after, report.adopted = count_params(adopted), adopted
    if x is not None:
        with one_thread():
            shapes = inputs.shapes if inputs.several else shape
            report.macs_before, report.macs_after = count_macs(source, shapes), count_macs(adopted, shapes)
            report.macs_before += count_macs(adopted, shapes, within=functional) if functional else 0
            res = report.verify_fp64(x, "the given example input" if example_input is not None else
                                     _described(inputs))
        if not res.ok:
            raise AdoptError(f"the adopted model's output differs from the source's ({res.summary()}); please "
                             f"report this model")
    for s in report.skipped:
        log.info("adopt: left alone %s: %s", ", ".join(s.modules), s.reason)
    log.debug("%s", report.summary())
    return (adopted, report) if return_report else adopted

