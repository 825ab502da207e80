""":class:`BenchReport`: the result of :func:`quadexport.bench.bench` - typed rows and ratios, the run's config and
environment, warnings (busy machine, unsteady rows), and its renderings: terminal table (<= 120 columns),
Markdown, ``bench.json`` (same keys as before the typed rows, plus ``warnings``, ``spread`` and ``trusted``)."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from quadexport.bench.markdown import render_markdown
from quadexport.bench.plots import save_plots
from quadexport.bench.rows import BenchRow, ModeRatio, OrtTorchRatio, PairRatio, fmt_ratio, fmt_spread
from quadexport.bench.timing import LOAD_WARN_PER_CORE

__all__ = ["BenchReport", "TABLE_WIDTH"]

TABLE_WIDTH = 120
_MAX_ROW_WARNINGS = 8


@dataclass
class BenchReport:
    """Result of :func:`quadexport.bench.bench`.

    Attributes:
        rows: one :class:`BenchRow` per (model, mode, batch).
        ratios: :class:`PairRatio` per (quadratic, baseline, batch, mode).
        ort_vs_torch: :class:`OrtTorchRatio` per (model, batch, ONNX mode).
        mode_ratios: :class:`ModeRatio` per (quadratic model, batch, mode other than decomposed).
        models: what each model id is (:meth:`BenchModel.info`, free-form metadata).
        notes: skipped baselines and other remarks.
        config: the options of the run (:meth:`BenchConfig.to_dict` plus the resolved values).
        environment: CPU, versions, provider, load average before/after, date.
        files: paths written by :meth:`save`.
    """

    rows: list[BenchRow]
    ratios: list[PairRatio] = field(default_factory=list)
    ort_vs_torch: list[OrtTorchRatio] = field(default_factory=list)
    mode_ratios: list[ModeRatio] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    # -- (de)serialisation -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"rows": [r.to_dict() for r in self.rows], "ratios": [x.to_dict() for x in self.ratios],
                "ort_vs_torch": [x.to_dict() for x in self.ort_vs_torch],
                "mode_ratios": [x.to_dict() for x in self.mode_ratios], "models": self.models, "notes": self.notes,
                "warnings": self.warnings, "config": self.config, "environment": self.environment}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BenchReport":
        """Read a ``bench.json`` (of this version or an earlier one)."""
        return cls(rows=[BenchRow.from_dict(r) for r in d.get("rows", [])],
                   ratios=[PairRatio.from_dict(x) for x in d.get("ratios", [])],
                   ort_vs_torch=[OrtTorchRatio.from_dict(x) for x in d.get("ort_vs_torch", [])],
                   mode_ratios=[ModeRatio.from_dict(x) for x in d.get("mode_ratios", [])],
                   models=list(d.get("models", [])), notes=list(d.get("notes", [])),
                   config=dict(d.get("config", {})), environment=dict(d.get("environment", {})))

    @classmethod
    def load(cls, path: str | Path) -> "BenchReport":
        return cls.from_dict(json.loads(Path(path).read_text()))

    # -- lookups ---------------------------------------------------------------------------------------------------
    def row(self, model_id: str, mode: str, batch: int) -> BenchRow | None:
        return next((r for r in self.rows if r.id == model_id and r.mode == mode and r.batch == batch), None)

    def _reference(self, r: BenchRow) -> BenchRow | None:
        """The ReLU twin row a row is compared with in the tables (twins: themselves)."""
        pairs = {(x.quadratic, x.role): x.baseline for x in self.ratios}
        ref_id = None
        if r.role == "quadratic":
            ref_id = pairs.get((r.id, "twin")) or pairs.get((r.id, "mac_matched"))
        elif r.role in ("twin", "relu"):
            ref_id = r.id
        elif r.role == "mac_matched":
            q = next((x.quadratic for x in self.ratios if x.baseline == r.id), None)
            ref_id = pairs.get((q, "twin")) if q else None
        if ref_id is None:
            return None
        modes = ["torch"] if r.mode == "torch" else [r.mode, "decomposed"]
        return next((ref for m in modes if (ref := self.row(ref_id, m, r.batch)) is not None), None)

    # -- warnings --------------------------------------------------------------------------------------------------
    @property
    def warnings(self) -> list[str]:
        """Why numbers of this report may not be trustworthy: a busy machine (1-minute load average above
        :data:`LOAD_WARN_PER_CORE` per usable core, before or after the run) and unsteady rows (spread between
        chunks above :data:`~quadexport.bench.timing.SPREAD_WARN`; every ratio such a row enters is untrustworthy)."""
        out = []
        cores = self.environment.get("usable_cores") or 1
        for key, when in (("load_average", "before"), ("load_average_after", "after")):
            la = self.environment.get(key)
            if la and la[0] > LOAD_WARN_PER_CORE * cores:
                out.append(f"busy machine: 1-minute load average {la[0]:.2f} {when} the run, above "
                           f"{LOAD_WARN_PER_CORE:g} per usable core ({cores} core(s)); other jobs competed with the "
                           f"timing - rerun on a quiet machine for numbers to quote")
        bad = [r for r in self.rows if not r.trusted]
        for r in bad[:_MAX_ROW_WARNINGS]:
            out.append(f"unsteady timing: {r.id} [{r.mode}] batch {r.batch} spreads by {100 * r.spread:.0f}% "
                       f"between chunks (p50 {r.p50_ms:.4g} ms, p99 {r.p99_ms:.4g} ms); its ratios are "
                       f"untrustworthy")
        if len(bad) > _MAX_ROW_WARNINGS:
            out.append(f"... and {len(bad) - _MAX_ROW_WARNINGS} more unsteady row(s) (see 'spread' in bench.json)")
        return out

    # -- rendering -------------------------------------------------------------------------------------------------
    def _ovt(self) -> dict[tuple[str, str, int], float]:
        return {(x.id, x.mode, x.batch): x.ratio for x in self.ort_vs_torch}

    _TERM_HEAD = ["model", "role", "mode", "batch", "p50 ms", "p99 ms", "spread", "MACs", "lat ratio", "MAC ratio",
                  "ORT/torch"]

    def _term_rows(self) -> list[list[str]]:
        ovt, out = self._ovt(), []
        for r in self.rows:
            ref = self._reference(r)
            out.append([r.id, r.role, r.mode, str(r.batch), f"{r.p50_ms:.4g}", f"{r.p99_ms:.4g}",
                        fmt_spread(r.spread), f"{r.macs / 1e6:.2f}M",
                        fmt_ratio(r.p50_ms / ref.p50_ms) if ref else "–", fmt_ratio(r.macs / ref.macs) if ref else "–",
                        fmt_ratio(ovt.get((r.id, r.mode, r.batch)))])
        return out

    def table(self, width: int = TABLE_WIDTH) -> str:
        """Plain-text table for the terminal, at most ``width`` columns (long model ids are shortened)."""
        rows = [self._TERM_HEAD] + self._term_rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._TERM_HEAD))]
        excess = sum(widths) + 2 * (len(widths) - 1) - width
        if excess > 0:
            widths[0] = max(len("model"), widths[0] - excess)
        lines = ["  ".join(_fit(c, w).rjust(w) if i >= 3 else _fit(c, w).ljust(w)
                           for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines += ["", "ratios: p50 / p50 of the ReLU twin (quadratic and MAC-matched rows); spread: between chunks",
                  "", "latency ratio vs MAC ratio (p50, quadratic / baseline):"]
        for x in self.ratios:
            flag = "" if x.trusted else "  (untrustworthy: unsteady timing)"
            lines.append(_fit(f"  {x.quadratic} / {x.baseline}  b={x.batch} {x.mode}: latency "
                              f"{fmt_ratio(x.latency_ratio)}  MACs {fmt_ratio(x.mac_ratio)}{flag}", width))
        for n in self.notes:
            lines += textwrap.wrap(f"note: {n}", width, subsequent_indent="  ")
        for w in self.warnings:
            lines += textwrap.wrap(f"WARNING: {w}", width, subsequent_indent="  ")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """Markdown report: setup, warnings, one row per measurement with its ratio next to its MAC ratio, pair
        ratios, ORT vs torch eager, export modes compared."""
        return render_markdown(self)

    # -- files -----------------------------------------------------------------------------------------------------
    def plot(self, out: str | Path) -> list[Path]:
        """Latency bars per batch size (``latency_b<batch>.png``) and, when models carry test accuracies,
        ``accuracy_vs_latency.png``."""
        return save_plots(self, Path(out))

    def save(self, out: str | Path) -> dict[str, str]:
        """Write ``bench.json``, ``bench.md`` and the PNG plots into ``out``."""
        from quadexport.runs.atomicfile import write_json

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "bench.json", self.to_dict())
        (out / "bench.md").write_text(self.to_markdown())
        files = {"json": str(out / "bench.json"), "markdown": str(out / "bench.md")}
        for p in self.plot(out):
            files[p.stem] = str(p)
        self.files = files
        return files


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"
