"""How a gate-only compressed layer's per-channel bias (``MixedQuad.qbias``) is best exported: measured.

A gate-only layer (``b`` dropped) keeps the folded BatchNorm's shift in ``qbias``. The library exports it as a 1×1
depthwise ``Conv`` with unit weights (:meth:`quadexport.layers.mixed.MixedQuad._add_qbias`). This script rewrites that
node back into the broadcast ``Add`` of earlier versions, and into a ``BatchNormalization``, and times the three
forms interleaved against the ReLU twin. Each rewrite is checked against the library's export under onnxruntime
(relative L2 ≤ 1e-5).

    PYTHONPATH=$PWD python tools/qbias_forms.py --layer layer1.0.conv2 --json docs/compression/qbias_forms.json

Models come from ``tools/compress_overhead.py`` (a Fan-quadratic ResNet20 whose other layers are linear, refitted):
``quad-g`` is the layer wholly quadratic with the gate only, ``mixed8-g`` its 8-channel mixed form.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compress_overhead as co  # noqa: E402  (tools/ is not a package)

from quadexport.compress.latency import p50, time_onnx  # noqa: E402
from quadexport.compress.stats import channel_scores, collect_stats  # noqa: E402
from quadexport.compress.structure import describe  # noqa: E402
from quadexport.experiments.onnx_rewrites import bias_add_to_bn, constant_value, rel_diff  # noqa: E402


def _ones_depthwise(g: onnx.GraphProto, n: onnx.NodeProto) -> np.ndarray | None:
    """The bias of a 1×1 depthwise ``Conv`` with unit weights (the library's qbias form), else None."""
    if n.op_type != "Conv" or len(n.input) < 3:
        return None
    w, b = (constant_value(g, i) for i in n.input[1:3])  # initializers or Constant nodes
    if w is None or b is None or w.shape[1:] != (1, 1, 1) or not np.all(w == 1):
        return None
    return b


def conv_to_add(src: Path, dst: Path) -> int:
    """Rewrite each unit-weight 1×1 depthwise ``Conv`` into ``Add(x, bias[1, C, 1, 1])``; returns the count."""
    m = onnx.load(str(src))
    g = m.graph
    count = 0
    for i, n in enumerate(list(g.node)):
        b = _ones_depthwise(g, n)
        if b is None:
            continue
        name = f"{n.output[0]}__bias"
        g.initializer.append(onnx.numpy_helper.from_array(b.reshape(1, -1, 1, 1).astype(np.float32), name))
        g.node.remove(n)
        g.node.insert(i, onnx.helper.make_node("Add", [n.input[0], name], [n.output[0]], name=f"{n.name}__add"))
        count += 1
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(dst))
    return count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", default="layer1.0.conv2")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    fan = co.fan_model(a.model, 0, 0.1)
    shape = co.input_shape(fan)
    structure = describe(fan, shape)
    scores = channel_scores(collect_stats(fan, torch.randn(128, *shape, generator=torch.Generator().manual_seed(1))))
    out = Path(tempfile.mkdtemp())
    paths: dict[str, Path] = {}
    rewrites: dict[str, dict[str, float]] = {}
    for v in co.variants({a.layer: int(scores[a.layer]["lin"].score.numel())}, [a.layer], [8], 0):
        if v.key == "twin" or v.key.endswith(("quad-g", "mixed8-g")):
            paths[v.key] = co.export_variant(v, co.build(v, fan, scores, structure, "auto"), shape, out, 17)["path"]
    for key in [k for k in paths if k != "twin"]:
        add = out / f"{paths[key].stem}-add.onnx"
        bn = out / f"{paths[key].stem}-bn.onnx"
        n_add = conv_to_add(paths[key], add)
        n_bn = bias_add_to_bn(add, bn)
        rewrites[key] = {"add": n_add, "bn": n_bn, "rel_diff_add": rel_diff(paths[key], add, shape),
                         "rel_diff_bn": rel_diff(paths[key], bn, shape)}
        if n_add != 1 or max(rewrites[key]["rel_diff_add"], rewrites[key]["rel_diff_bn"]) > 1e-5:
            raise SystemExit(f"{key}: rewrite failed {rewrites[key]}")
        paths[f"{key} [add]"], paths[f"{key} [bn]"] = add, bn
        paths[f"{key} [conv]"] = paths.pop(key)
    runs = []
    for rep in range(a.repeats):
        t = time_onnx(paths, shape, [1, 64], 1, min_seconds=a.min_seconds, seed=rep)
        runs.append({k: {str(b): p50(t, k, b) / p50(t, "twin", b) for b in (1, 64)} for k in paths})
    for k in paths:
        print(f"{k:34s}", "   ".join(f"b1 {r[k]['1']:.3f} b64 {r[k]['64']:.3f}" for r in runs))
    if a.json:
        Path(a.json).write_text(json.dumps({"model": a.model, "layer": a.layer, "rewrites": rewrites,
                                            "ratios_to_twin": runs, "argv": sys.argv[1:]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
