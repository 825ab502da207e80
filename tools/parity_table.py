"""The float64 parity table of docs/export.md ("Parity judged against float64"): per model, the float32 floor
(torch float32 against torch float64), the exported file's error against float64 and against torch float32, and
the verdicts of the old rule (rel_l2 <= 1e-5) and of the float64 rule (err_fp64 <= max(1e-5, 4 x floor)).

    PYTHONPATH=. .venv/bin/python tools/parity_table.py [--epochs 15] [--out parity_table.json]

Models:
- **demo CNN**: `models/digits-demo.toml`'s model (cnn, fan, width 16, ReLinear sg) trained on digits (`--epochs`,
  default the recipe's 15); checked on random inputs at the run's dataset statistics and on digits' first 360 test
  images.
- **QResNet20**: the zoo's resnet20 with fan neurons, quadratic branches perturbed by N(0, std²) from the ReLinear
  init (tests/test_export.py's `perturb`), BatchNorm statistics from one batch; N(0, 1) inputs 3x32x32. std 0.005
  (the export tests'), 0.0125 (one sample of the batch of 64 explodes to logits ~1e31: the issue's "explosive random
  inputs") and 0.015 (a sample of the batch of 64 overflows to NaN: refused in one line, no figure).
- **deep quadratic MLP**: tests/parity_models.py `DeepQuadMLP` (16 QuadLinear fan layers of width 64, quadratic
  weights N(0, 0.08²), tanh every third layer); N(0, 1) inputs.
- **adopted QResNet20**: the research-style inline QResNet20 of tests/adopt_models.py (weights randomized off the
  ReLinear init, `adopt_models.randomize`), adopted with `quadexport.adopt` (adopt's own float64 figures are shown
  too: its `max_rel` metric), exported fused; inputs 3x32x32 N(0, 1).

Every file is exported in decomposed mode (the adopted one also fused) and checked by `quadexport.check` at batch
sizes 1 and 64 under ORT_DISABLE_ALL and ORT_ENABLE_ALL; the worst line of each figure is reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import adopt_models  # noqa: E402  (tests/adopt_models.py)
from parity_models import DeepQuadMLP  # noqa: E402  (tests/parity_models.py)

import quadexport as q  # noqa: E402
from quadexport.check import check  # noqa: E402
from quadexport.exporter import export  # noqa: E402


def _perturb(model: torch.nn.Module, std: float, shape: tuple[int, ...], seed: int = 0) -> torch.nn.Module:
    from test_export import perturb  # tests/test_export.py: the export tests' perturbation

    return perturb(model, std, seed, shape)


def demo_cnn(tmp: Path, epochs: int) -> torch.nn.Module:
    """The digits demo's model, trained as `models/digits-demo.toml` trains it (through the CLI)."""
    import subprocess

    subprocess.run([sys.executable, "-m", "quadexport", "-q", "train", "--model", "cnn", "--neuron", "fan",
                    "--width", "16", "--dataset", "digits", "--epochs", str(epochs), "--batch-size", "64", "--lr",
                    "0.05", "--seed", "0", "--relinear", "sg", "--lr-ratio", "0.01", "--out", str(tmp / "demo")],
                   check=True, cwd=ROOT)
    return q.load(tmp / "demo")


def qresnet20(std: float) -> torch.nn.Module:
    torch.manual_seed(0)
    m = q.create_model("resnet20", neuron="fan", in_channels=3, input_size=32)
    m = _perturb(m, std, (3, 32, 32))
    m.quadexport_meta = {"input_shape": [3, 32, 32], "dataset": None}
    return m


def deep_mlp() -> torch.nn.Module:
    return DeepQuadMLP().eval()


def adopted_qresnet(rows: list[dict[str, Any]]) -> torch.nn.Module:
    src = adopt_models.build("qresnet20", input_shape=(3, 32, 32))
    model, rep = q.adopt(src, input_shape=(3, 32, 32), return_report=True)
    rows.append({"model": "adopted QResNet20: adopt's conversion (max_rel)", "floor": rep.floor,
                 "err_fp64": rep.err_fp64, "rel_l2": rep.max_rel_diff, "old_ok": rep.max_rel_diff <= 1e-6,
                 "new_ok": True, "rule": rep.rule, "lines": 1, "note": rep.verdict})
    model.quadexport_meta = {"input_shape": [3, 32, 32]}
    return model


def measure(name: str, model: torch.nn.Module, path: Path, mode: str = "decomposed") -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(model, path, mode=mode)
    rep = check(path, model, batches=(1, 64), opt_levels=("disable", "all"), verbose=False)
    lines = rep.lines
    return {"model": f"{name} ({mode})", "floor": rep.worst_floor, "err_fp64": rep.worst_err_fp64,
            "rel_l2": rep.worst_rel_l2, "old_ok": all(line.rel_l2 <= rep.rtol and not line.nan_inf for line in lines),
            "new_ok": rep.ok, "rule": ", ".join(sorted({line.rule for line in lines})), "lines": len(lines),
            "sources": sorted({line.source for line in lines}), "errors": rep.errors,
            "note": "; ".join(e.split(": no parity figure")[0] for e in rep.errors)}


def table(rows: list[dict[str, Any]]) -> str:
    f = lambda v: "—" if v is None else f"{v:.1e}"  # noqa: E731
    out = ["| model | float32 floor (worst) | error vs float64 (worst) | error vs torch float32 (worst) | "
           "old rule (≤ 1e-5) | float64 rule | decided by | note |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {f(r['floor'])} | {f(r['err_fp64'])} | {f(r['rel_l2'])} | "
                   f"{'pass' if r['old_ok'] else 'FAIL'} | {'pass' if r['new_ok'] else 'FAIL'} | {r['rule']} | "
                   f"{r.get('note') or ''} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15, help="demo CNN training epochs (default 15, the recipe's)")
    ap.add_argument("--out", default=None, help="also write the rows as JSON")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows.append(measure("demo CNN", demo_cnn(tmp, a.epochs), tmp / "cnn.onnx"))
        for std in (0.005, 0.0125, 0.015):
            rows.append(measure(f"QResNet20, quadratic weights ±{std:g}", qresnet20(std), tmp / f"q{std}.onnx"))
        rows.append(measure("deep quadratic MLP", deep_mlp(), tmp / "mlp.onnx"))
        adopted = adopted_qresnet(rows)
        rows.append(measure("adopted QResNet20", adopted, tmp / "adopted.onnx"))
        rows.append(measure("adopted QResNet20", adopted, tmp / "adopted-fused.onnx", mode="fused"))
    print(table(rows))
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
