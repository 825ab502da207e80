"""Typed results of a benchmark: one :class:`BenchRow` per (model, mode, batch) and the ratios derived from them.

``to_dict()`` of each gives the ``bench.json`` keys of earlier versions (plus ``spread`` / ``trusted``), and
``from_dict`` reads old and new files alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping

from quadexport.bench.config import ONNX_MODES
from quadexport.bench.timing import SPREAD_WARN

__all__ = ["BenchRow", "ModeRatio", "OrtTorchRatio", "PairRatio", "RATIO_KEYS", "ROW_KEYS", "compute_ratios",
           "fmt_ratio", "fmt_spread"]

ROW_KEYS = ("model", "neuron", "mode", "provider", "batch", "threads", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
            "stdev_ms", "throughput", "macs", "params", "file_bytes", "role")
RATIO_KEYS = ("quadratic", "baseline", "batch", "mode", "latency_ratio", "mac_ratio")


def fmt_spread(x: float | None) -> str:
    """A spread as a percentage (``–`` when unknown)."""
    return "–" if x is None else f"{100 * x:.0f}%"


def fmt_ratio(x: float | None) -> str:
    """A ratio with three significant digits (``0.00371``, ``1.23``, ``270``): never rounded to ``0.00``."""
    return "–" if x is None else f"{x:.3g}"


class _Record:
    """``to_dict``/``from_dict`` for the result dataclasses (unknown keys of a file are ignored)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class BenchRow(_Record):
    """One measurement: a model in one mode at one batch size (times in ms, see :class:`TimingStats`).

    ``spread`` is :attr:`TimingStats.spread` (relative spread between the row's chunks; ``None`` in files
    written before it was recorded); ``cpu_*`` the process CPU
    time per run; ``file_bytes``/``onnx``/``kernel`` are ``None`` for torch eager rows; ``runtime`` is the runtime of
    an ONNX-mode row (``None`` for torch eager rows and in files written before runtimes were recorded: onnxruntime).
    """

    id: str
    model: str
    neuron: str
    mode: str
    provider: str
    batch: int
    threads: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    throughput: float
    macs: int
    params: int
    file_bytes: int | None
    role: str
    min_ms: float
    cpu_p50_ms: float
    cpu_mean_ms: float
    iters: int
    timed_s: float
    rounds: int
    test_acc: float | None = None
    source: str = "zoo"
    onnx: str | None = None
    kernel: str | None = None
    spread: float | None = None
    runtime: str | None = None

    @property
    def trusted(self) -> bool:
        """Whether the row's timings are steady enough for ratios (``spread <= SPREAD_WARN``)."""
        return self.spread is None or self.spread <= SPREAD_WARN


@dataclass
class PairRatio(_Record):
    """Quadratic model vs one baseline at one batch and mode: ``latency_ratio`` (p50 / p50) next to ``mac_ratio``;
    ``min_latency_ratio``, ``cpu_ratio`` (p50 process CPU time; ``None`` when the baseline's reads 0); ``spread``:
    the larger spread of the two rows, ``trusted``: both rows steady."""

    quadratic: str
    baseline: str
    role: str
    batch: int
    mode: str
    baseline_mode: str
    latency_ratio: float
    mac_ratio: float
    quadratic_p50_ms: float
    baseline_p50_ms: float
    min_latency_ratio: float
    cpu_ratio: float | None
    spread: float | None = None
    trusted: bool = True


@dataclass
class OrtTorchRatio(_Record):
    """A model's ONNX-mode row vs its torch eager row: ``ratio`` = p50 ORT / p50 torch (``speedup`` = 1 / ratio)."""

    id: str
    model: str
    mode: str
    batch: int
    ort_p50_ms: float
    torch_p50_ms: float
    ratio: float
    speedup: float


@dataclass
class ModeRatio(_Record):
    """A quadratic model's export mode vs ``decomposed``: ``ratio`` = p50 of the mode / p50 of decomposed."""

    model: str
    batch: int
    mode: str
    p50_ms: float
    decomposed_p50_ms: float
    ratio: float


def _pair(r: BenchRow, br: BenchRow, q: str, b: str, role: str, macs: Mapping[str, int]) -> PairRatio:
    return PairRatio(quadratic=q, baseline=b, role=role, batch=r.batch, mode=r.mode, baseline_mode=br.mode,
                     latency_ratio=r.p50_ms / br.p50_ms, mac_ratio=macs[q] / macs[b], quadratic_p50_ms=r.p50_ms,
                     baseline_p50_ms=br.p50_ms, min_latency_ratio=r.min_ms / br.min_ms,
                     cpu_ratio=r.cpu_p50_ms / br.cpu_p50_ms if br.cpu_p50_ms > 0 else None,
                     spread=max((x for x in (r.spread, br.spread) if x is not None), default=None),
                     trusted=r.trusted and br.trusted)


def compute_ratios(rows: list[BenchRow], macs: Mapping[str, int], pairs: Iterable[tuple[str, str, str]]
                   ) -> tuple[list[PairRatio], list[OrtTorchRatio], list[ModeRatio]]:
    """Pair ratios (``pairs``: quadratic id, baseline id, role; a ReLU baseline's ONNX rows are ``decomposed``),
    ORT vs torch eager, and export mode vs decomposed."""
    idx = {(r.id, r.mode, r.batch): r for r in rows}
    ratios = []
    for q, b, role in pairs:
        for r in (r for r in rows if r.id == q):
            bmode = r.mode if (b, r.mode, r.batch) in idx or r.mode == "torch" else "decomposed"
            br = idx.get((b, bmode, r.batch))
            if br is not None:
                ratios.append(_pair(r, br, q, b, role, macs))
    ovt, mode_ratios = [], []
    for r in (r for r in rows if r.mode in ONNX_MODES):
        t = idx.get((r.id, "torch", r.batch))
        if t is not None:
            ovt.append(OrtTorchRatio(id=r.id, model=r.id, mode=r.mode, batch=r.batch, ort_p50_ms=r.p50_ms,
                                     torch_p50_ms=t.p50_ms, ratio=r.p50_ms / t.p50_ms, speedup=t.p50_ms / r.p50_ms))
        d = idx.get((r.id, "decomposed", r.batch))
        if r.mode != "decomposed" and d is not None:
            mode_ratios.append(ModeRatio(model=r.id, batch=r.batch, mode=r.mode, p50_ms=r.p50_ms,
                                         decomposed_p50_ms=d.p50_ms, ratio=r.p50_ms / d.p50_ms))
    return ratios, ovt, mode_ratios
