"""int8 static quantisation of (compressed) quadratic models with onnxruntime (issue #5, technique 3).

QDQ format, per-channel int8 weights (``QInt8``), uint8 activations (``QUInt8``; U8S8 is the fast path of MLAS on
x86, with VNNI where the CPU has it), MinMax calibration on real training images through a
``CalibrationDataReader``. The fp32 model is first run through ``quant_pre_process`` (shape inference + basic graph
optimisation), as onnxruntime recommends.

Quadratic terms amplify quantisation error (about ×2 per quadratic layer, docs/notes), so parts can stay fp32
(``keep_fp32``), found structurally in the graph:

- ``"none"``: everything quantised (in QDQ form a ``Mul`` computes in float between ``DequantizeLinear`` and
  ``QuantizeLinear`` anyway: its output is re-quantised for the next quantised op).
- ``"products"``: the square ``x*x`` (a ``Mul`` of a tensor with itself), the gate product ``r*g`` and the ``Add``
  that joins the quadratic terms stay fp32, so the product and the sum are not re-quantised to 8 bits (excluding the
  ``Mul`` alone changes nothing: the joining ``Add`` would quantise its output). The branch convs stay int8.
- ``"quadratic"``: also the power-branch conv (reading ``x*x``, whose range is the square of the input's) in fp32.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import onnx

from quadexport.errors import UsageError

KEEP_FP32 = ("none", "products", "quadratic")


def quadratic_nodes(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Names of the quadratic-term nodes of a decomposed graph: ``squares`` (``Mul(x, x)``), ``products``
    (``Mul`` of two computed tensors, not a square), ``power`` (``Conv``/``Gemm``/``MatMul`` reading a square) and
    ``joins`` (``Add`` reading a product or a power-branch output)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    squares, products, power, joins = [], [], [], []
    square_out, product_out, power_out = set(), set(), set()
    for n in model.graph.node:
        if n.op_type == "Mul" and len(n.input) == 2:
            a, b = n.input
            if a == b:
                squares.append(n.name)
                square_out.update(n.output)
            elif a not in inits and b not in inits and a in producer and b in producer:
                products.append(n.name)
                product_out.update(n.output)
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm", "MatMul") and n.input and n.input[0] in square_out:
            power.append(n.name)
            power_out.update(n.output)
    for n in model.graph.node:
        if n.op_type == "Add" and any(i in product_out or i in power_out for i in n.input):
            joins.append(n.name)
    return {"squares": squares, "products": products, "power": power, "joins": joins}


def nodes_to_keep_fp32(model: onnx.ModelProto, keep_fp32: str) -> list[str]:
    """The node names excluded from quantisation for a ``keep_fp32`` choice (see the module docstring)."""
    if keep_fp32 not in KEEP_FP32:
        raise UsageError(f"keep_fp32 must be one of {KEEP_FP32}, got {keep_fp32!r}")
    if keep_fp32 == "none":
        return []
    q = quadratic_nodes(model)
    names = q["squares"] + q["products"] + q["joins"]
    if keep_fp32 == "quadratic":
        names += q["power"]
    return names


class ArrayReader:
    """``CalibrationDataReader`` over a float32 array, in batches (onnxruntime's calibration API)."""

    def __init__(self, input_name: str, x: np.ndarray, batch_size: int = 64) -> None:
        self.input_name, self.x, self.batch_size = input_name, x.astype(np.float32), int(batch_size)
        self._it: Iterator[dict[str, np.ndarray]] | None = None
        self.rewind()

    def rewind(self) -> None:
        self._it = iter([{self.input_name: self.x[i:i + self.batch_size]}
                         for i in range(0, len(self.x), self.batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def __len__(self) -> int:
        return (len(self.x) + self.batch_size - 1) // self.batch_size


def _reader_class():
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(ArrayReader, CalibrationDataReader):
        pass

    return Reader


def quantize_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, calib: np.ndarray,
                  keep_fp32: str = "none", per_channel: bool = True, method: str = "minmax",
                  batch_size: int = 64) -> dict[str, Any]:
    """Statically quantise an fp32 ONNX model (QDQ) calibrated on ``calib`` (real inputs, float32 NCHW).

    Args:
        fp32_path: the fp32 ``.onnx`` (decomposed export, BatchNorm folded).
        out_path: where to write the int8 model.
        calib: calibration inputs.
        keep_fp32: ``"none"``, ``"products"`` or ``"quadratic"`` (module docstring).
        per_channel: per-output-channel weight scales.
        method: ``"minmax"``, ``"percentile"`` or ``"entropy"`` calibration.
        batch_size: calibration batch.

    Returns:
        ``{"path", "keep_fp32", "excluded": [node names], "method", "per_channel", "calib_samples"}``.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from quadexport.exporter.extdata import data_location, save_proto, uses_external_data

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise UsageError(f"method must be one of {sorted(methods)}, got {method!r}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # External data in (a big model): every intermediate and the result keep their weights in <name>.data too.
    external = uses_external_data(onnx.load(str(fp32_path), load_external_data=False))
    if external:
        (out_path.parent / data_location(out_path)).unlink(missing_ok=True)  # onnx appends to an existing one
    with tempfile.TemporaryDirectory(prefix="quadexport-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False, save_as_external_data=external,
                          all_tensors_to_one_file=True, external_data_location=data_location(pre))
        proto = onnx.load(str(pre), load_external_data=False)  # the graph: node and input names
        excluded = nodes_to_keep_fp32(proto, keep_fp32)
        reader = _reader_class()(proto.graph.input[0].name, calib, batch_size)
        quantize_static(str(pre), str(out_path), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=excluded or None, calibrate_method=methods[method],
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                        use_external_data_format=external)
    q = onnx.load(str(out_path), load_external_data=False)  # metadata only: the weights stay where they are
    meta = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
    meta.update({"quadexport.dtype": "int8", "quadexport.int8_keep_fp32": keep_fp32,
                 "quadexport.int8_method": method})
    onnx.helper.set_model_props(q, meta)
    save_proto(q, out_path, external)
    return {"path": str(out_path), "keep_fp32": keep_fp32, "excluded": excluded, "method": method,
            "per_channel": per_channel, "calib_samples": int(len(calib))}


def onnx_accuracy(path: str | os.PathLike, x: np.ndarray, y: np.ndarray, batch_size: int = 256,
                  threads: int | None = None) -> tuple[float, np.ndarray]:
    """Top-1 accuracy of an ONNX classifier under onnxruntime, and its logits."""
    from quadexport.exporter.session import make_session

    sess = make_session(str(path), "cpu", threads=threads)
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x[i:i + batch_size].astype(np.float32)})[0] for i in range(0, len(x), batch_size)]
    logits = np.concatenate(outs)
    return float((logits.argmax(1) == y).mean()), logits


def compare_int8(int8_path: str | os.PathLike, fp32_path: str | os.PathLike, batches: Iterable[tuple[Any, Any]],
                 threads: int | None = None) -> dict[str, float]:
    """One pass of labelled ``(x, y)`` batches (tensors or arrays, e.g. a DataLoader) through an int8 model and its
    fp32 original under onnxruntime, without holding the logits: ``{"test_acc", "fp32_onnx_test_acc",
    "rel_l2_vs_fp32" (of all int8 logits vs the fp32 ones), "top1_agreement"}``."""
    from quadexport.exporter.session import make_session

    sessions = [make_session(str(p), "cpu", threads=threads) for p in (int8_path, fp32_path)]
    names = [s.get_inputs()[0].name for s in sessions]
    n, correct8, correct32, agree, diff2, ref2 = 0, 0, 0, 0, 0.0, 0.0
    for xb, yb in batches:
        x, y = np.asarray(xb, dtype=np.float32), np.asarray(yb)
        l8, l32 = (s.run(None, {name: x})[0] for s, name in zip(sessions, names))
        n += len(y)
        correct8 += int((l8.argmax(1) == y).sum())
        correct32 += int((l32.argmax(1) == y).sum())
        agree += int((l8.argmax(1) == l32.argmax(1)).sum())
        diff2 += float(np.square(l8.astype(np.float64) - l32).sum())
        ref2 += float(np.square(l32.astype(np.float64)).sum())
    if n == 0:
        raise UsageError("compare_int8: no images to compare on")
    return {"test_acc": correct8 / n, "fp32_onnx_test_acc": correct32 / n,
            "rel_l2_vs_fp32": float(np.sqrt(diff2 / ref2)) if ref2 > 0 else float("nan"), "top1_agreement": agree / n}


__all__ = ["ArrayReader", "KEEP_FP32", "compare_int8", "nodes_to_keep_fp32", "onnx_accuracy", "quadratic_nodes",
           "quantize_int8"]
