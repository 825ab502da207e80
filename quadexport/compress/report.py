"""The compression report: :func:`build_report` (the dict written to ``compress_report.json``) and
:func:`render_report` (its Markdown form, ``compress_report.md``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from quadexport.compress.plan import Plan
from quadexport.compress.latency import p50
from quadexport.layers.mixed import MixedQuad
from quadexport.layers.quad import QuadLayer
from quadexport.transforms.prune_spec import get_spec

__all__ = ["CompressOutcome", "CompressReport", "build_report", "latency_ratios", "render_report"]


@dataclass
class CompressOutcome:
    """What one :func:`~quadexport.compress.compress` call measured (filled in as it runs).

    Attributes:
        run_dir, out: source and new run dir.
        model, cmodel: the original and the compressed model.
        plan: the pruning plan (``None`` for int8 of an already compressed run).
        acc_orig, acc_pruned, acc_final: test accuracy of the original, the pruned (before fine-tuning) and the
            final model; ``twin_acc``: of the trained ReLU twin, if given.
        macs_orig, macs_c, macs_twin: MACs of the original, compressed and ReLU-twin models.
        timing, int8, parity: latency measurement, int8 results, fp32 parity (``None`` when not run).
        ft_hist, trace, folded: fine-tuning epochs, threshold-search steps, BatchNorms folded into mixed layers.
        rel: relative change of the calibration logits caused by pruning.
        seconds: wall time.
    """

    run_dir: Path
    out: Path
    model: nn.Module
    cmodel: nn.Module | None = None
    plan: Plan | None = None
    acc_orig: float | None = float("nan")  # None: the run is not a classifier (a task loss was measured)
    acc_pruned: float | None = None
    acc_final: float | None = float("nan")
    twin_acc: float | None = None
    macs_orig: int = 0
    macs_c: int = 0
    macs_twin: int = 0
    timing: dict[str, Any] | None = None
    int8: dict[str, Any] | None = None
    parity: dict[str, Any] | None = None
    ft_hist: list[dict[str, Any]] = field(default_factory=list)
    trace: list[dict[str, float]] = field(default_factory=list)
    selection: dict[str, Any] | None = None
    folded: list[str] = field(default_factory=list)
    rel: float = 0.0
    seconds: float = 0.0
    val: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, Any] = field(default_factory=dict)
    unresolved: list[str] = field(default_factory=list)


@dataclass
class CompressReport:
    """The result of :func:`~quadexport.compress.compress` (``compress_report.json`` is :meth:`to_dict`).

    Attributes:
        source, out: the input and output run dirs.
        model, neuron: the model name and neuron type.
        plan: threshold, alignment, per-layer plan, permuted groups, notes.
        layers: one row per quadratic layer (channels, kept prefix ``k``, branches, error, form).
        quadratic_channels: ``{"kept", "total"}``.
        accuracy: test accuracy ``original``/``pruned``/``final``, ``delta_pp``, ``relu_twin``,
            ``calibration_logits_rel_change`` (the accuracies ``None`` for a run that is not a classifier).
        validation: accuracy on the validation split carved from the training data (the budget's measure); with
            a task loss on a run without accuracy, ``task_loss``, ``original_loss`` and ``final_loss`` instead.
        targets: ``max_drop_pp``, ``val_drop_pp``, ``target_ratio``, ``cost``, ``reached_ratio`` and ``missed``
            (plain sentences; empty when every target held).
        macs: MACs of the original, compressed and ReLU-twin models and their ratios.
        latency, latency_ratios: interleaved onnxruntime timing and per-batch ratios to the ReLU twin.
        int8, parity: int8 results and the fp32 parity check (``None`` when not run).
        finetune: fine-tuning epochs; threshold_search: search steps; folded_bn: BatchNorms folded.
        layer_selection: ``--select layers``: every option measured (benefit, cost), the chosen ``keep`` map and the
            combined-model measurements (``None`` otherwise).
        unresolved: channel groups left unpermuted, with the reason (their layers are kept whole or prefix-split).
        seconds: wall time.
    """

    source: str
    out: str
    model: str | None
    neuron: str | None
    plan: dict[str, Any]
    layers: list[dict[str, Any]]
    quadratic_channels: dict[str, Any]
    accuracy: dict[str, Any]
    validation: dict[str, Any]
    targets: dict[str, Any]
    macs: dict[str, Any]
    latency: dict[str, Any] | None
    latency_ratios: list[dict[str, Any]]
    int8: dict[str, Any] | None
    parity: dict[str, Any] | None
    finetune: list[dict[str, Any]]
    threshold_search: list[dict[str, float]]
    layer_selection: dict[str, Any] | None
    folded_bn: list[str]
    unresolved: list[str]
    seconds: float

    @property
    def missed(self) -> list[str]:
        """The targets that were not met, as sentences (empty: all held)."""
        return list(self.targets.get("missed", []))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_report(o: CompressOutcome) -> CompressReport:
    """The :class:`CompressReport` of a compression."""
    run_dir, out, cmodel, pl = o.run_dir, o.out, o.cmodel, o.plan
    layers = []
    spec = get_spec(cmodel) or {}
    if pl is None:  # quantisation of an already compressed run
        pdict = {"threshold": None, "align": None, "layers": [], "permuted_groups": [],
                 "notes": [f"int8 of the already compressed run {run_dir} (its pruning is in its own report)"]}
        kept = sum(m.k for m in cmodel.modules() if isinstance(m, MixedQuad)) + \
            sum(m.r.weight.shape[0] for m in cmodel.modules() if isinstance(m, QuadLayer))
        qch = {"kept": kept, "total": None}
    else:
        pdict = pl.to_dict()
        qch = {"kept": sum(p.k for p in pl.layers.values()), "total": sum(p.channels for p in pl.layers.values())}
        for name, lp in pl.layers.items():
            d = lp.to_dict()
            d["form"] = "quadratic" if lp.unchanged else spec.get("layers", {}).get(name, {}).get("type", "?")
            layers.append(d)
    ratios = latency_ratios(o.timing) if o.timing is not None else []
    return CompressReport(
        source=str(run_dir), out=str(out), model=cmodel.quadexport_config.get("name"),
        neuron=cmodel.quadexport_config.get("neuron"), plan=pdict, layers=layers, quadratic_channels=qch,
        accuracy={"original": o.acc_orig, "pruned": o.acc_pruned, "final": o.acc_final,
                  "delta_pp": (100 * (o.acc_final - o.acc_orig) if o.acc_final is not None and o.acc_orig is not None
                               else None), "relu_twin": o.twin_acc,
                  "calibration_logits_rel_change": o.rel},
        validation=dict(o.val), targets=dict(o.targets),
        macs={"original": o.macs_orig, "compressed": o.macs_c, "relu_twin": o.macs_twin,
              "compressed_ratio": o.macs_c / o.macs_twin, "original_ratio": o.macs_orig / o.macs_twin},
        latency=o.timing, latency_ratios=ratios, int8=o.int8, parity=o.parity, finetune=o.ft_hist,
        threshold_search=o.trace, layer_selection=o.selection, folded_bn=o.folded, unresolved=list(o.unresolved),
        seconds=o.seconds)


def latency_ratios(timing: dict[str, Any]) -> list[dict[str, Any]]:
    """Per batch size: p50 latencies of the timed models and their ratios to the ReLU twin."""
    ratios = []
    for b in timing["config"]["batches"]:
        t = p50(timing, "relu_twin", b)
        row = {"batch": b, "relu_twin_ms": t}
        for k in ("original", "compressed", "compressed_int8", "relu_twin_convsc"):
            v = p50(timing, k, b)
            if v is not None:
                row[f"{k}_ms"] = v
                row[f"{k}_ratio"] = v / t
        if "relu_twin_convsc_ms" in row:  # like for like: both with the shortcut rewrite
            row["compressed_vs_twin_convsc"] = row["compressed_ms"] / row["relu_twin_convsc_ms"]
        ratios.append(row)
    return ratios


def render_report(r: CompressReport | dict[str, Any]) -> str:
    """Markdown rendering of a compression report."""
    r = r.to_dict() if isinstance(r, CompressReport) else r
    a, m = r["accuracy"], r["macs"]
    how = (f"layers chosen by measured cost per accuracy (branch-drop threshold {r['plan']['threshold']:.4g})"
           if r.get("layer_selection") else f"threshold {r['plan']['threshold']:.4g}" if r["plan"]["threshold"]
           is not None else "")
    head = (f"{r['model']} ({r['neuron']}), {how}, alignment {r['plan']['align']}: "
            f"{r['quadratic_channels']['kept']}/{r['quadratic_channels']['total']} quadratic channels kept."
            if r["plan"]["threshold"] is not None else
            f"{r['model']} ({r['neuron']}): int8 of an already compressed run "
            f"({r['quadratic_channels']['kept']} quadratic channels).")
    v = r.get("validation") or {}
    pct = lambda x: "–" if x is None else f"{100 * x:.2f}%"  # noqa: E731  (absent: not a classifier)
    delta = "" if a["delta_pp"] is None else f" ({a['delta_pp']:+.2f} pp)"
    lines = [f"# Compression of `{r['source']}`", "", head, "",
             "| | test accuracy | MACs | MACs / ReLU twin |", "|---|---|---|---|",
             f"| original | {pct(a['original'])} | {m['original'] / 1e6:.2f}M | {m['original_ratio']:.2f} |",
             f"| compressed (pruned{', fine-tuned' if r['finetune'] else ''}) | {pct(a['final'])}{delta} "
             f"| {m['compressed'] / 1e6:.2f}M | {m['compressed_ratio']:.2f} |"]
    if r["finetune"] and a["pruned"] is not None:
        lines.append(f"| pruned, before fine-tuning | {100 * a['pruned']:.2f}% | | |")
    if r.get("int8"):
        lines.append(f"| compressed int8 (keep fp32: {r['int8']['keep_fp32']}) | {100 * r['int8']['test_acc']:.2f}% "
                     f"| | |")
    if a.get("relu_twin") is not None:
        lines.append(f"| ReLU twin (trained) | {100 * a['relu_twin']:.2f}% | {m['relu_twin'] / 1e6:.2f}M | 1.00 |")
    else:
        lines.append(f"| ReLU twin | | {m['relu_twin'] / 1e6:.2f}M | 1.00 |")
    if r.get("latency_ratios"):
        lat = r["latency"]
        lines += ["", f"Latency (onnxruntime CPU, p50, interleaved; threads {lat['config']['threads'] or 'default'}, "
                      f"load average {lat['load_before']} → {lat['load_after']}):", "",
                  "| batch | ReLU twin ms | original ms (ratio) | compressed ms (ratio) |" +
                  (" int8 ms (ratio) |" if r.get("int8") else ""),
                  "|---|---|---|---|" + ("---|" if r.get("int8") else "")]
        for x in r["latency_ratios"]:
            s = (f"| {x['batch']} | {x['relu_twin_ms']:.3f} | {x['original_ms']:.3f} ({x['original_ratio']:.2f}×) | "
                 f"{x['compressed_ms']:.3f} ({x['compressed_ratio']:.2f}×) |")
            if "compressed_int8_ms" in x:
                s += f" {x['compressed_int8_ms']:.3f} ({x['compressed_int8_ratio']:.2f}×) |"
            lines.append(s)
        for x in r["latency_ratios"]:
            if "relu_twin_convsc_ms" in x:
                lines.append(f"- batch {x['batch']}: the ReLU twin with the same 1×1-conv shortcuts runs in "
                             f"{x['relu_twin_convsc_ms']:.3f} ms; compressed / that = "
                             f"{x['compressed_vs_twin_convsc']:.2f}× (like for like)")
    if r.get("parity"):
        lines += ["", f"fp32 parity (`quadexport check`): {'passed' if r['parity']['ok'] else 'FAILED'}, worst rel_l2 "
                      f"{r['parity']['worst_rel_l2']:.1e} (parity.json)."]
    lines += ["", "| layer | channels | quadratic (own) | kept prefix k | g | b | max error of linearised channels |",
              "|---|---|---|---|---|---|---|"]
    for d in r["layers"]:
        lines.append(f"| {d['layer']} | {d['channels']} | {d['quadratic_own']} | {d['k']} | "
                     f"{'✓' if d['g'] else '–'} | {'✓' if d['b'] else '–'} | {d['max_error']:.3f} |")
    if r["plan"]["permuted_groups"]:
        lines += ["", "Permuted channel groups: " + ", ".join(r["plan"]["permuted_groups"])]
    for n in r["plan"]["notes"]:
        lines.append(f"- {n}")
    for n in r.get("unresolved", []):
        lines.append(f"- left unpermuted: {n}")
    lines += _render_selection(r.get("layer_selection"))
    t = r.get("targets") or {}
    if v.get("task_loss"):
        lines += ["", f"Not a classifier: no accuracy. Validation {v['task_loss']} ({v['samples']} inputs, against "
                      f"the uncompressed model): {v['original_loss']:.4g} → {v.get('final_loss', float('nan')):.4g}."]
    if v and v.get("original") is not None and v.get("final") is not None:
        lines += ["", f"Validation split ({v['samples']} training images, not used for calibration or fine-tuning): "
                      f"{100 * v['original']:.2f}% → {100 * v['final']:.2f}% ({t.get('val_drop_pp', 0):+.2f} pp drop; "
                      f"budget {t.get('max_drop_pp')})."]
    for n in t.get("missed", []):
        lines.append(f"- **missed**: {n}")
    lines += ["", f"({r['seconds']:.0f} s)"]
    return "\n".join(lines) + "\n"


def _render_selection(sel: dict[str, Any] | None) -> list[str]:
    """The ``--select layers`` table: each option's measured benefit and cost, best benefit per cost first."""
    if not sel:
        return []
    lines = ["", f"Layer selection by measured cost per accuracy (all-linear validation loss "
                 f"{sel['linear_val_loss']:.4f}; combined cost measured {sel['cost']:.3f}):", "",
             "| layer | option | k | validation loss saved | latency cost (× twin − 1) | chosen |",
             "|---|---|---|---|---|---|"]
    for o in sorted(sel["options"], key=lambda o: -o["benefit"] / max(o["cost"], 1e-3)):
        lines.append(f"| {o['layer']} | {o['kind']} | {o['k']} | {o['benefit']:+.4f} | {o['cost']:+.3f} | "
                     f"{'✓' if o['chosen'] else ''} |")
    return lines
