"""Compression of trained quadratic networks (issue #5, #13): quadratic-term pruning, cheap neuron types, int8.

- :func:`compress` (``quadexport compress RUN_DIR --out RUN_DIR2``): calibrate each quadratic output channel's
  contribution on real training images, make low-contribution channels linear (permuting channel groups - found in
  the model's graph by torch-pruning, for any architecture - so the quadratic ones form a prefix), fine-tune, fold
  BatchNorm, hold an accuracy budget measured on a validation split, optionally quantise to int8; write a run dir
  that ``quadexport export``/``check``/``bench`` accept, and a report (:class:`CompressReport`).
- :mod:`quadexport.compress.prune`: statistics (``stats``), plans (``plan``), channel groups (``graph``,
  ``structure``), permutation (``permute``) and the rewrite (``rewrite``); the spec that rebuilds a compressed model
  lives in :mod:`quadexport.transforms.prune_spec`.
- :mod:`quadexport.layers.mixed`: :class:`MixedQuad`, :class:`PermShortcut` (re-exported by ``compress.layers``).
- :mod:`quadexport.compress.quant`: onnxruntime static int8 (QDQ) with optional fp32 quadratic terms.
- :mod:`quadexport.compress.rundata`: the run's own dataset (built-in, ``imagefolder:``, ``npz:``) reopened and split
  into calibration images, fine-tuning and validation splits (from the training data) and the test split, streamed.
- :mod:`quadexport.layers.cheap`: the ``fan_pw`` / ``fan_dw`` neuron types (registered by ``import quadexport``).

See ``docs/compression.md``.
"""

from quadexport.compress.api import (FP32_ONNX, INT8_ONNX, REPORT_JSON, REPORT_MD, compress, compress_run,
                                     render_report, twin_of)
from quadexport.compress.config import DEFAULT_THRESHOLD, CompressConfig, CompressError
from quadexport.compress.prune import (apply_spec, channel_scores, collect_stats, compress_model, fold_mixed_bn,
                                       get_spec, nchwc_block, permute_model, plan)
from quadexport.compress.report import CompressReport
from quadexport.layers.mixed import MixedQuad, PermShortcut

__all__ = ["CompressConfig", "CompressError", "CompressReport", "DEFAULT_THRESHOLD", "FP32_ONNX", "INT8_ONNX",
           "MixedQuad", "PermShortcut", "REPORT_JSON", "REPORT_MD", "apply_spec", "channel_scores", "collect_stats",
           "compress", "compress_model", "compress_run", "fold_mixed_bn", "get_spec", "nchwc_block", "permute_model",
           "plan", "render_report", "twin_of"]
