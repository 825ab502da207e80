"""Exact ONNX graph rewrites and op histograms of the compression-overhead study (issue #13, ``tools/compress_overhead.py``).

- :func:`relu_before_concat`: ``Concat → Relu`` becomes ``Relu`` per input, then ``Concat`` (lets onnxruntime fuse
  the ReLUs into the convs again);
- :func:`bias_add_to_bn`: a per-channel constant ``Add`` becomes a ``BatchNormalization`` (kept in NCHWc layout);
- :func:`op_histogram`: ``{op: count}`` of a graph, onnxruntime's NCHWc and fused convs told apart;
- :func:`rel_diff`: how far a rewrite moved the outputs (onnxruntime).

Written by hand: the two small rewrites are exact patterns no library offers.
"""

from __future__ import annotations

import collections
import copy
from pathlib import Path
from typing import Any

import numpy as np
import onnx

__all__ = ["bias_add_to_bn", "constant_value", "op_histogram", "rel_diff", "relu_before_concat"]


def relu_before_concat(src: Path, dst: Path) -> int:
    """Rewrite every ``Concat`` whose only consumer is a ``Relu`` into ``Relu`` per input, then ``Concat`` (exact:
    ReLU is elementwise). Returns the number rewritten. Written by hand: a 20-line pattern, no library needed."""
    m = onnx.load(str(src))
    g = m.graph
    consumers: dict[str, list[Any]] = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    outputs = {o.name for o in g.output}
    nodes, dropped, count = [], set(), 0
    for n in g.node:
        if id(n) in dropped:
            continue
        use = consumers[n.output[0]] if n.output else []
        if n.op_type == "Concat" and n.output[0] not in outputs and len(use) == 1 and use[0].op_type == "Relu":
            relu = use[0]
            ins = [f"{i}__relu1st" for i in n.input]
            nodes += [onnx.helper.make_node("Relu", [i], [o], name=f"{o}_node") for i, o in zip(n.input, ins)]
            new = copy.deepcopy(n)
            del new.input[:]
            new.input.extend(ins)
            new.output[0] = relu.output[0]
            nodes.append(new)
            dropped.add(id(relu))
            count += 1
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(dst))
    return count


def constant_value(g: Any, name: str) -> np.ndarray | None:
    """The value of ``name`` in graph ``g`` if it is an initializer or a ``Constant`` node's output, else None."""
    for t in g.initializer:
        if t.name == name:
            return onnx.numpy_helper.to_array(t)
    for n in g.node:
        if n.op_type == "Constant" and n.output[0] == name and n.attribute[0].name == "value":
            return onnx.numpy_helper.to_array(n.attribute[0].t)
    return None


def bias_add_to_bn(src: Path, dst: Path, eps: float = 1e-5) -> int:
    """Rewrite every ``Add(x, c)`` with a per-channel constant ``c`` of shape ``(1, C, 1, 1)`` into
    ``BatchNormalization(x, scale=1, B=c, mean=0, var=1-eps)`` (exact up to rounding): onnxruntime's NCHWc layout
    takes a BatchNormalization (as a depthwise conv) but not a broadcast ``Add``. Returns the number rewritten."""
    m = onnx.load(str(src))
    g = m.graph
    count = 0
    for i, n in enumerate(list(g.node)):
        if n.op_type != "Add":
            continue
        for a, b in ((0, 1), (1, 0)):
            c = constant_value(g, n.input[b])
            if c is None or c.ndim != 4 or c.shape[0] != 1 or c.shape[2:] != (1, 1):
                continue
            ch, out = c.shape[1], n.output[0]
            vals = {"s": np.ones(ch), "b": c.reshape(ch), "m": np.zeros(ch), "v": np.full(ch, 1 - eps)}
            g.initializer.extend(onnx.numpy_helper.from_array(v.astype(np.float32), f"{out}__bn_{k}")
                                 for k, v in vals.items())
            ins = [n.input[a]] + [f"{out}__bn_{k}" for k in vals]
            g.node.remove(n)
            g.node.insert(i, onnx.helper.make_node("BatchNormalization", ins, [out], name=f"{out}__bn", epsilon=eps))
            count += 1
            break
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(dst))
    return count


def op_histogram(nodes: Any) -> dict[str, int]:
    """``{op: count}``; onnxruntime's NCHWc ops as ``nchwc.<op>`` (``nchwc.Conv`` with its fused ``+act``/``+sum``),
    ``FusedConv`` with its activation."""
    hist: collections.Counter = collections.Counter()
    for n in nodes:
        op = ("nchwc." if n.domain.endswith("nchwc") else "") + n.op_type
        if n.op_type in ("Conv", "FusedConv"):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            op += "+sum" if len(n.input) > 3 and n.input[3] else ""
            op += "+act" if attrs.get("activation") else ""
        hist[op] += 1
    return dict(sorted(hist.items()))


def rel_diff(a: Path, b: Path, shape: tuple[int, ...]) -> float:
    """Relative L2 difference of the first outputs of two ONNX files under onnxruntime on N(0, 1) inputs."""
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
    ya, yb = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
              for p in (a, b))
    return float(np.linalg.norm(ya - yb) / max(float(np.linalg.norm(ya)), 1e-30))
