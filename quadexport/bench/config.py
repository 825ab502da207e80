"""Options of :func:`quadexport.bench.bench` (:class:`BenchConfig`), the modes, :class:`BenchError` and the input
shape parser."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

import numpy as np

from quadexport.errors import QuadexportError

__all__ = ["BenchConfig", "BenchError", "DEFAULT_INPUT_SHAPE", "MODES", "ONNX_MODES", "PERTURB_STD", "ROLES",
           "parse_input_shape"]

ONNX_MODES = ("decomposed", "function", "fused")
MODES = ONNX_MODES + ("torch",)
ROLES = ("quadratic", "twin", "mac_matched", "relu")
DEFAULT_INPUT_SHAPE = (1, 28, 28)
PERTURB_STD = 1e-3
"""Std of the normal perturbation added to ``W_g`` and ``W_b`` of untrained (ReLinear-initialised) zoo models: the
quadratic terms are live (non-zero; the kernels do the same work whatever the values, as long as they are finite and
not denormal) and, with calibrated BatchNorm statistics, QResNet-8 … QResNet-110 stay finite on N(0, 1) batches of 64
(0.02 overflows QResNet-20 at 28×28, 0.005 QResNet-110)."""


class BenchError(QuadexportError, ValueError):
    """A benchmark that cannot run: bad input shape, unknown model, non-finite outputs, missing provider..."""


@dataclass
class BenchConfig:
    """Options of :func:`quadexport.bench.bench`.

    Attributes:
        neuron: neuron type of the zoo models (``"relu"``: plain models, no baselines).
        modes: export mode(s) timed under the runtime (``decomposed``, ``function``, ``fused``) and/or ``torch``.
        provider: ``"cpu"`` or ``"cuda"`` (onnxruntime's; ``"cuda"`` is runtime ``onnxruntime-cuda``, and torch eager
            rows run on the GPU).
        runtime: the runtime that runs the ONNX modes: a registered name (:func:`quadexport.list_runtimes`),
            ``MODULE:CLASS`` or a :class:`~quadexport.runtimes.Runtime` (``None``: onnxruntime on ``provider``).
        threads: intra-op threads of onnxruntime and torch (default 1: steady, comparable numbers; more threads
            are an explicit choice).
        batches: batch sizes.
        opt_level: onnxruntime graph optimisation level (``disable``, ``basic``, ``extended``, ``all``).
        baselines: add the ReLU twin and the MAC-matched ReLU model of every quadratic model.
        torch_eager: also time every model in torch eager (mode ``torch``).
        warmup: untimed runs per (model, mode, batch).
        min_iters: minimum timed runs per row.
        min_seconds: minimum timed seconds per row.
        input_shape: one sample's ``(C, H, W)``; default: the run dir's, else ``(1, 28, 28)``.
        out: folder for ``bench.json``, ``bench.md``, PNGs and the ONNX files (``onnx/``); ``None``: nothing kept.
        seed: seed of the model init/perturbation and of the random inputs.
        opset: ONNX opset of the exports.
        chunk_seconds: target length of one interleaving turn (default ``clip(min_seconds / 10, 0.002, 0.1)``).
        command: command line recorded in the report (the CLI sets it).
    """

    neuron: str = "fan"
    modes: Sequence[str] = ("decomposed",)
    provider: str = "cpu"
    runtime: Any = None
    threads: int = 1
    batches: Sequence[int] = (1, 64)
    opt_level: str = "all"
    baselines: bool = True
    torch_eager: bool = True
    warmup: int = 10
    min_iters: int = 20
    min_seconds: float = 1.0
    input_shape: Sequence[Any] | None = None
    out: str | os.PathLike | None = None
    seed: int = 0
    opset: int = 20
    chunk_seconds: float | None = None
    command: str | None = None

    @property
    def chunk(self) -> float:
        """The interleaving turn length actually used (seconds)."""
        return float(self.chunk_seconds) if self.chunk_seconds else min(0.1, max(0.002, self.min_seconds / 10))

    def mode_list(self) -> list[str]:
        """The validated modes, ``torch`` appended when :attr:`torch_eager`."""
        ms = [self.modes] if isinstance(self.modes, str) else list(self.modes)
        if not ms:
            raise BenchError(f"no mode given; choose from {', '.join(MODES)}")
        for m in ms:
            if m not in MODES:
                raise BenchError(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
        if self.torch_eager and "torch" not in ms:
            ms.append("torch")
        return list(dict.fromkeys(ms))

    def resolved_runtime(self) -> Any:
        """The :class:`~quadexport.runtimes.Runtime` of the ONNX modes (:attr:`runtime` with :attr:`provider`)."""
        from quadexport.errors import UsageError
        from quadexport.runtimes import resolve_runtime

        try:
            return resolve_runtime(self.runtime, self.provider)
        except UsageError as e:
            raise BenchError(str(e)) from None

    def validate(self) -> None:
        """Raise :class:`BenchError` for an option out of range (one line naming the fix)."""
        from quadexport.exporter.session import OPT_LEVELS

        self.mode_list()
        if self.provider not in ("cpu", "cuda"):
            raise BenchError(f"unknown provider {self.provider!r}; choose cpu or cuda")
        self.resolved_runtime()
        bs = list(self.batches)
        if not bs or any(int(b) < 1 for b in bs):
            raise BenchError(f"batch sizes must be >= 1, got {bs}")
        if self.opt_level not in OPT_LEVELS:
            raise BenchError(f"unknown opt_level {self.opt_level!r}; choose one of {', '.join(OPT_LEVELS)}")
        if int(self.threads) < 1:
            raise BenchError(f"threads must be >= 1, got {self.threads}")
        if self.warmup < 0 or self.min_iters < 1 or not (self.min_seconds >= 0 and math.isfinite(self.min_seconds)):
            raise BenchError("warmup must be >= 0, min_iters >= 1 and min_seconds a finite number >= 0")
        parse_input_shape(self.input_shape)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(replace(self, runtime=getattr(self.runtime, "name", self.runtime)))  # a Runtime: its name
        d["out"] = None if self.out is None else str(self.out)
        return d


def parse_input_shape(values: Sequence[Any] | None) -> tuple[int, ...] | None:
    """Validate one sample's input shape ``(C, H, W)`` (no batch dimension), or ``(L,)``: a token model's sequence
    length.

    Args:
        values: three positive integers (or strings of them, as given on the command line), or ``None``.

    Raises:
        BenchError: wrong rank, non-integer entries (e.g. ``28.5``, ``float``) or entries < 1.
    """
    if values is None:
        return None
    vals = list(values)
    hint = ("give one sample's shape as three positive integers C H W (no batch dimension), e.g. 1 28 28, or a "
            "token model's sequence length L")
    if len(vals) not in (1, 3):
        raise BenchError(f"input shape {' '.join(map(str, vals))} has rank {len(vals)}, expected 3 (C H W) or 1 "
                         f"(a sequence length L); {hint}")
    return tuple(_shape_entry(v, hint) for v in vals)  # type: ignore[return-value]


def _shape_entry(v: Any, hint: str) -> int:
    if isinstance(v, bool):
        raise BenchError(f"input shape entry {v!r} is not an integer; {hint}")
    if isinstance(v, (int, np.integer)):
        n = int(v)
    elif isinstance(v, float) and v.is_integer():
        n = int(v)
    else:
        try:
            n = int(str(v).strip())
        except ValueError:
            raise BenchError(f"input shape entry {v!r} is not an integer (the benchmark input is float32, the "
                             f"shape takes integers only); {hint}") from None
    if n < 1:
        raise BenchError(f"input shape entry {n} must be >= 1; {hint}")
    return n
