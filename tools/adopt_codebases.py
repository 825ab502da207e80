"""The public-codebases table of docs/adopt.md: one model per public quadratic-network codebase, written in its style
(tests/adopt_models.py, tests/adopt_functional_models.py; the project's own code), saved in that codebase's
checkpoint layout, loaded as ``quadexport adopt`` loads it, adopted, and exported fused.

    python tools/adopt_codebases.py --out docs/adopt/codebases.json     # markdown table on stdout

Per codebase: neurons adopted / neurons in the model (by type), what was left alone and why, exactness in torch
(max |adopted − source| / max |source| on 8 inputs: N(0, 1), or uniform [0, 1] for the CT autoencoder), and the
fused file under onnxruntime (custom-domain nodes; the same measure with the function bodies, and with the kernel
library when it is built). Models are at the ReLinear init with every parameter perturbed and BN statistics from
one batch (the fixtures' ``randomize``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import adopt_functional_models as fm  # noqa: E402
import adopt_models as am  # noqa: E402

import quadexport as q  # noqa: E402
from quadexport.transforms.statedict import load_into  # noqa: E402

CODEBASES = [
    ("FengleiFan/ReLinear (QResNet)", "inline `conv1r(x) * conv1g(x) + conv1b(x.pow(2))`, BN after the sum",
     "am:qresnet20", "DataParallel `module.` keys under `state_dict`, `argparse.Namespace`, numpy scalars"),
    ("zarekxu/QuadraLib", "`torch.mul(bn1(conv1(x)), bn2(conv2(x))) + bn3(conv3(x))`, BN per branch",
     "am:quadralib_net", "`{'net', 'acc', 'epoch'}`"),
    ("zarekxu/QuadraLib (types 1-4)", "type 2 `conv(x * x)`, type 3 `y = conv(x); y * y`, type 4 "
     "`torch.mul(conv1(x), conv2(x))`, type 1 `nn.Bilinear`", "fm:quadralib_types", "`{'net', 'acc', 'epoch'}`"),
    ("miniHuiHui/QuadraNet", "depthwise `dwa(x) * dwb(x) + dwc(x)`, NHWC `nn.Linear` MLP (ConvNeXt base)",
     "fm:quadranet", "`{'model', 'optimizer', 'args'}`"),
    ("asdvfghg/QCNN_for_bearing_diagnosis", "raw `nn.Parameter`s, `F.conv1d` ×3: `r·g + b(x**2)`; a "
     "`ParameterList` layer", "fm:qcnn1d", "bare state dict"),
    ("asdvfghg/quadratic_efficiency (QMLP)", "raw parameters, `torch.matmul(x, W.t()) + b` and `x @ W`",
     "fm:qmlp", "`{'model', 'optimizer', 'args'}`"),
    ("asdvfghg/quadratic_efficiency (QU-Net)", "raw parameters, `F.conv2d` ×3, U-Net with a skip",
     "fm:qunet", "`{'model', 'optimizer', 'args'}`"),
    ("jayroxis/qres, AdityaLab/pinnsformer (QRes)", "`F.linear` ×2: `tanh(h1 * h2 + h1)`; PINNs take "
     "`forward(x, t)`", "fm:qres_mlp", "`{'epoch', 'model_state_dict', 'optimizer_state_dict', 'loss'}`"),
    ("Robust-Jay/PyTorch-QAE-for-Low-Dose-CT-Denoising", "`nn.Conv2d` ×3 down, `nn.ConvTranspose2d` ×3 up: "
     "`r·g + b(x*x)`, inputs in [0, 1]", "fm:qae", "DataParallel `module.` keys, bare"),
]
"""(codebase, its style, fixture ``module:builder``, its checkpoint layout)."""


def _fixture(ref: str, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, str]:
    mod, name = ref.split(":")
    if mod == "am":
        shape = (3, 32, 32) if name == "qresnet20" else am.INPUT_SHAPES[name]
        model = am.build(name, seed=seed, input_shape=shape)
        x = torch.randn((8, *shape), generator=torch.Generator().manual_seed(1))
        return model, x, name
    return fm.build(name, seed=seed), fm.example(name, 8), name


def _reload(ref: str, trained: torch.nn.Module, tmp: Path) -> torch.nn.Module:
    """``trained`` saved in its codebase's layout and loaded into a fresh build, as ``quadexport adopt`` does."""
    mod, name = ref.split(":")
    path = tmp / f"{name}.pth"
    torch.manual_seed(123)
    if mod == "am":
        fresh = getattr(am, name)(in_channels=trained.conv1.in_channels if name == "qresnet20" else
                                  am.INPUT_SHAPES[name][0])
        if name == "qresnet20":
            am.save_dataparallel_checkpoint(trained, path, with_args=True, numpy_scalars=True)
        else:
            torch.save({"net": trained.state_dict(), "acc": 91.2, "epoch": 199}, path)
    else:
        fresh = getattr(fm, name)()
        fm.save_checkpoint(name, trained, path)
    load_into(fresh, path)
    return fresh.eval()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def measure(ref: str, tmp: Path) -> dict:
    trained, x, name = _fixture(ref)
    model = _reload(ref, trained, tmp)
    adopted, rep = q.adopt(model, example_input=x, return_report=True)
    with torch.no_grad():
        src = model(x).numpy()
        exact = _rel(adopted(x).numpy(), src)
    row = {"fixture": ref, "adopted": dict(Counter(n.type for n in rep.neurons)), "neurons": len(rep.neurons),
           "left_alone": [{"modules": list(s.modules), "reason": s.reason} for s in rep.skipped],
           "max_rel_err_torch": exact, "params": [rep.params_before, rep.params_after],
           "macs": [rep.macs_before, rep.macs_after]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = q.export(adopted, tmp / f"{name}.onnx", mode="fused", input_shape=tuple(x.shape[1:]))
    row["export_notes"] = sorted({str(w.message) for w in caught if "decomposed" in str(w.message)})
    nodes = onnx.load(str(path)).graph.node
    row["custom_nodes"] = sum(n.domain not in ("", "ai.onnx") for n in nodes)
    for key, kw in (("ort_function_bodies", {"kernel_library": "never"}), ("ort_kernel", {})):
        sess = q.make_session(path, **kw)
        if key == "ort_kernel" and getattr(sess, "quadexport_kernel", None) is None:
            row[key] = None
            continue
        row[key] = _rel(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0], src)
    return row


def _markdown(rows: list[dict]) -> str:
    out = ["| codebase | style | checkpoint layout | adopted | left alone (why) | exact in torch (max rel err) | "
           "fused file under onnxruntime |", "|---|---|---|---|---|---|---|"]
    for (base, style, _, layout), r in zip(CODEBASES, rows):
        adopted = ", ".join(f"{v} {k}" for k, v in r["adopted"].items()) or "none"
        alone = "; ".join(f"{', '.join(s['modules'])}: {s['reason']}" for s in r["left_alone"]) or "–"
        kern = f", kernel {r['ort_kernel']:.1e}" if r["ort_kernel"] is not None else ""
        note = f" ({len(r['export_notes'])} note: stays decomposed)" if r["export_notes"] else ""
        out.append(f"| {base} | {style} | {layout} | {r['neurons']} ({adopted}) | {alone} | "
                   f"{r['max_rel_err_torch']:.1e} | {r['custom_nodes']} custom nodes{note}; function bodies "
                   f"{r['ort_function_bodies']:.1e}{kern} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="JSON file for the raw numbers")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        rows = [measure(ref, Path(d)) for _, _, ref, _ in CODEBASES]
    print(_markdown(rows))
    for (base, *_), r in zip(CODEBASES, rows):
        for n in r["export_notes"]:
            print(f"{base}: {n}")
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                     "torch": torch.__version__, "codebases": [
                                         {"codebase": c[0], "style": c[1], "layout": c[3], **r}
                                         for c, r in zip(CODEBASES, rows)]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
