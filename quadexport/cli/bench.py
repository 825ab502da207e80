"""``quadexport bench MODEL...``: latency of quadratic models vs their ReLU baselines (ONNX Runtime, or any registered
runtime with ``--runtime``, and torch eager)."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from quadexport.errors import UsageError
from quadexport.cli.argtypes import nonneg_float, nonneg_int, pos_int, runtime_help

_HANDLER_NAME = "quadexport-bench-cli"


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno <= logging.INFO else f"{record.levelname}: "
        return f"[bench] {level}{record.getMessage()}"


def _show_progress(quiet: bool) -> None:
    """Progress (INFO) of the ``quadexport.bench`` loggers on stderr; ``--quiet``: warnings only."""
    lg = logging.getLogger("quadexport.bench")
    lg.setLevel(logging.WARNING if quiet else logging.INFO)
    if not any(h.get_name() == _HANDLER_NAME for h in lg.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.set_name(_HANDLER_NAME)
        h.setFormatter(_Format())
        lg.addHandler(h)


def run(a: argparse.Namespace) -> int:
    from quadexport.bench import MODES, BenchConfig, bench, parse_input_shape

    shape = parse_input_shape(a.input_shape)  # BenchError (a ValueError) -> one-line error, exit 2
    modes = a.mode or ["decomposed"]
    if "torch" in modes and a.no_torch_eager:
        modes = [m for m in modes if m != "torch"]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise UsageError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    _show_progress(a.quiet)
    cfg = BenchConfig(neuron=a.neuron, modes=modes, provider=a.provider, runtime=a.runtime, threads=a.threads,
                      batches=a.batch,
                      opt_level=a.opt_level, baselines=not a.no_baselines, torch_eager=not a.no_torch_eager,
                      warmup=a.warmup, min_iters=a.min_iters, min_seconds=a.min_seconds, input_shape=shape,
                      out=a.out, seed=a.seed, opset=a.opset,
                      command="quadexport bench " + " ".join(shlex.quote(x) for x in _argv_from(a)))
    report = bench(a.models, cfg)
    print(report.table())
    if a.out:
        print(f"\nwrote {', '.join(report.files.values())}")
    else:
        print("\n(pass --out DIR to keep bench.json, bench.md, the plots and the ONNX files)", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from quadexport.cli.argtypes import OPT_LEVELS

    p = sub.add_parser(
        "bench", help="latency of quadratic models vs their ReLU twin and MAC-matched ReLU model",
        description="Time quadratic models (zoo names, untrained: ReLinear init plus a small perturbation; or run "
                    "dirs, trained) against their ReLU twin and the ReLU model matched on MACs, under onnxruntime "
                    "(each export mode) and torch eager. Interleaved round-robin timing after a warm-up; p50/p90/p99, "
                    "throughput, latency ratio next to MAC ratio. Writes DIR/bench.json, bench.md and PNG plots.",
        epilog="example: quadexport bench resnet20 --neuron fan --batch 1 64 --mode decomposed function fused torch "
               "--out reports/bench")
    p.add_argument("models", nargs="+", metavar="MODEL", help="zoo model name (e.g. resnet20) or run dir")
    p.add_argument("--neuron", default="fan", help="neuron type of zoo models")
    p.add_argument("--mode", nargs="+", default=None, metavar="MODE",
                   help="decomposed, function, fused and/or torch (None: decomposed; torch eager is added anyway "
                        "unless --no-torch-eager)")
    p.add_argument("--batch", "--batches", dest="batch", nargs="+", type=pos_int, default=[1, 64], metavar="N",
                   help="batch sizes")
    p.add_argument("--runtime", default=None, metavar="NAME",
                   help=runtime_help("time the ONNX modes under") + "; default: onnxruntime on --provider")
    p.add_argument("--provider", choices=("cpu", "cuda"), default="cpu", help="onnxruntime execution provider")
    p.add_argument("--threads", type=pos_int, default=1,
                   help="intra-op threads of onnxruntime and torch (1 gives the steadiest, comparable numbers)")
    p.add_argument("--opt-level", "--opt-levels", dest="opt_level", choices=OPT_LEVELS, default="all",
                   help="onnxruntime graph optimisation level")
    p.add_argument("--no-baselines", action="store_true", help="time only the given models (pairs among them)")
    p.add_argument("--no-torch-eager", action="store_true", help="skip the torch eager rows")
    p.add_argument("--warmup", type=nonneg_int, default=10, help="untimed runs per row")
    p.add_argument("--min-iters", type=pos_int, default=20, help="minimum timed runs per row")
    p.add_argument("--min-seconds", type=nonneg_float, default=1.0, help="minimum timed seconds per row")
    p.add_argument("--input-shape", nargs="+", default=None, metavar="D",
                   help="one sample's shape C H W, or a token model's sequence length L (None: the run dir's, a "
                        "token model's context, else 1 28 28)")
    p.add_argument("--opset", type=int, default=20, help="ONNX opset of the exports")
    p.add_argument("--seed", type=int, default=0, help="seed of the model init and the random inputs")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write bench.json, bench.md, PNGs and onnx/ here (None: keep nothing)")
    p.add_argument("--quiet", action="store_true", help="no progress lines (warnings still show)")
    p.set_defaults(func=run)


def _argv_from(a: argparse.Namespace) -> list[str]:
    """The command line of the run, options spelled out (recorded in bench.json/bench.md)."""
    out = list(map(str, a.models))
    for flag, val in (("--neuron", a.neuron), ("--mode", a.mode), ("--batch", a.batch),
                      ("--runtime", a.runtime), ("--provider", a.provider), ("--threads", a.threads),
                      ("--opt-level", a.opt_level),
                      ("--warmup", a.warmup), ("--min-iters", a.min_iters), ("--min-seconds", a.min_seconds),
                      ("--input-shape", a.input_shape), ("--seed", a.seed), ("--out", a.out)):
        if val is None:
            continue
        out += [flag] + ([str(v) for v in val] if isinstance(val, list) else [str(val)])
    for flag, val in (("--no-baselines", a.no_baselines), ("--no-torch-eager", a.no_torch_eager)):
        if val:
            out.append(flag)
    return out
