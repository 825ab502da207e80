"""``quadexport info``: list models, neurons and datasets, with parameter and MAC counts."""

from __future__ import annotations

import argparse

from quadexport.cli.argtypes import pos_int

WHAT = ("models", "neurons", "datasets", "all")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], right: set[int] = frozenset()) -> list[str]:
    """Aligned text columns under a header (columns in ``right`` right-aligned)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  " + "  ".join(v.rjust(w) if i in right else v.ljust(w)  # noqa: E731
                                     for i, (v, w) in enumerate(zip(r, widths))).rstrip()
    return [fmt(header), *map(fmt, rows)]


def mac_factor(neuron: str) -> float:
    """MACs of a 3x3 conv layer of this neuron type over a plain conv (cheap depthwise/1x1 branches included)."""
    import torch
    from torch import nn

    import quadexport as q

    with torch.device("meta"):  # shapes only: no weights are initialised or computed
        layer = nn.Conv2d(32, 32, 3, padding=1) if neuron == "relu" else q.QuadConv2d(32, 32, 3, padding=1,
                                                                                       neuron=neuron)
        return q.count_macs(layer, (32, 8, 8)) / (32 * 32 * 9 * 64)


def _neurons() -> list[str]:
    import quadexport as q

    rows = [("relu", "ReLU(W x + b)  (the twin baseline)", "-", "x1")]
    for n in q.list_neurons():
        t = q.get_neuron(n)
        rows.append((n, t.formula, ",".join(t.quadratic_branches), f"x{mac_factor(n):.3g}"))
    return ["neurons (MACs: a 3x3 conv layer of this type over a plain one):",
            *_table(("name", "formula", "quadratic", "MACs"), rows, {3})]


def _models(neuron: str, in_channels: int, size: int) -> list[str]:
    import torch

    import quadexport as q

    from quadexport.zoo.tokens import token_input

    shape, rows = (in_channels, size, size), []
    for m in q.list_models():
        cells = [m]
        for n in ("relu", neuron):
            with torch.device("meta"):  # counts only: built without initialising weights
                model = q.create_model(m, n, in_channels=in_channels, input_size=size)
            tok = token_input(model)  # a language model: MACs of one full-context sequence
            macs = q.count_macs(model, (tok.context,) if tok else shape)
            cells += [f"{q.count_params(model):,d}", f"{macs / 1e6:.2f}M" + (f" ({tok.context} tokens)" if tok else "")]
        rows.append(tuple(cells))
    return [f"models (input {in_channels}x{size}x{size}):",
            *_table(("model", "params relu", "MACs relu", f"params {neuron}", f"MACs {neuron}"), rows, {1, 2, 3, 4})]


def _run_info(path: str) -> list[str]:
    """What a run dir holds: model, neuron, task, input, and each output (name, shape, kind)."""
    from quadexport.runs.checkpoint import load
    from quadexport.exporter.outputs import run_structure

    model = load(path)
    meta, cfg = model.quadexport_meta or {}, model.quadexport_config or {}
    shape = meta.get("input_shape")
    desc, label = ("x".join(map(str, shape)) if shape else "?"), "input"
    from quadexport.runmeta import RunMeta

    rec = RunMeta.of(model)
    if rec.inputs or rec.input_range:  # several inputs (names, shapes), a range
        from quadexport.data.inputs import resolve

        inputs = resolve(model)
        desc, label = inputs.describe(), ("inputs" if inputs.several else "input")
    s = run_structure(model)
    out = [f"run {path}: {cfg.get('name', '?')} ({cfg.get('neuron', '?')})",
           f"  task: {s.task if s else 'unknown (no input shape recorded)'}",
           f"  {label}: {desc}"
           + (f" (dataset {meta['dataset']})" if meta.get("dataset") else " (no dataset: random inputs)")]
    from quadexport.zoo.tokens import token_input

    tok = token_input(model)
    if tok is not None:  # a language model: what it takes, and its validation bits per byte
        out.insert(1, f"  {tok.describe()}")
        if meta.get("val_bpb") is not None:
            out.append(f"  validation: {meta['val_bpb']:.4f} bits per byte")
    if s:
        out.append("  outputs:")
        out += _table(("name", "shape", "kind"), [(o.name, "x".join(["N", *map(str, o.shape[1:])]), o.kind)
                                                  for o in s.outputs])
    return out


def run(a: argparse.Namespace) -> int:
    import quadexport as q
    from quadexport.errors import UsageError, did_you_mean

    if a.what not in WHAT:
        from pathlib import Path

        if not Path(a.what).is_dir():
            raise UsageError(f"{a.what!r} is neither a run dir nor one of {', '.join(WHAT)}"
                             f"{did_you_mean(a.what, WHAT)}")
        print("\n".join(_run_info(a.what)))
        return 0

    if a.neuron != "relu" and a.neuron not in q.list_neurons():
        raise UsageError(f"unknown neuron type {a.neuron!r}{did_you_mean(a.neuron, q.list_neurons())}; see "
                         "`quadexport info neurons`")
    out: list[str] = []
    if a.what in ("neurons", "all"):
        out += _neurons()
    if a.what in ("models", "all"):
        out += _models(a.neuron, a.in_channels, a.size)
    if a.what in ("datasets", "all"):
        from quadexport.cli.argtypes import BUILTIN_DATASETS

        out += ["datasets: " + ", ".join(BUILTIN_DATASETS) + ", imagefolder:PATH, npz:FILE; text (language models): "
                "pystdlib, text:PATH"]
    print("\n".join(out))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="list models, neuron types and datasets, or describe a run dir",
                       description="List the neuron types (formula, quadratic branches, MAC cost over a plain "
                                   "layer), the zoo models (parameters and MACs of the ReLU twin and of the "
                                   "quadratic model) and the datasets.")
    p.add_argument("what", nargs="?", default="all", metavar="{models,neurons,datasets,all,RUN_DIR}",
                   help="what to list, or a run dir to describe (its model, task, input and outputs) "
                        "(default: all)")
    p.add_argument("--neuron", default="fan", help="neuron type of the models table (default: fan)")
    p.add_argument("--in-channels", type=pos_int, default=1, help="input channels of the models (default: 1)")
    p.add_argument("--size", type=pos_int, default=28, help="input height and width of the models (default: 28)")
    p.set_defaults(func=run)
