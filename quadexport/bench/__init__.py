"""Latency benchmark of quadratic models against their ReLU baselines, under onnxruntime and torch eager.

``bench(["resnet20"], BenchConfig(neuron="fan", batches=(1, 64)))`` times, at each batch size:

- the quadratic model in every requested export mode (``decomposed``, ``function``, ``fused``) under onnxruntime,
  and in torch eager (``mode="torch"``);
- its **ReLU twin** (same builder and depth, ``neuron="relu"``) and the **MAC-matched** ReLU model (the zoo model of
  the same family whose MACs are closest to the quadratic model's, e.g. QResNet20 ↔ ResNet56; for families with one
  member - ``mlp``, ``cnn`` - the ReLU twin widened until its MACs match). A ReLU model has no quadratic layer, so
  every ONNX mode gives the same graph: it is exported and timed once, as ``decomposed``.

Method: interleaved round-robin timing (:mod:`quadexport.bench.timing`, reusable: ``time_sessions(units, config)
-> dict[str, TimingStats]``), so drift of the machine hits all compared models alike. onnxruntime sessions are made
with ``session.intra_op.allow_spinning = 0`` and ``threads`` intra-op threads (default **1**; more is an explicit
choice), torch uses ``torch.set_num_threads(threads)``. Reported per row (:class:`BenchRow`): p50/p90/p99/mean/stdev
(ms), throughput (samples/s = batch / mean), params, MACs, ONNX file size, spread between chunks. The report warns
when the machine was busy (1-minute load average above 0.5 per usable core) or a row's timings spread too much for
its ratios to be trusted. Outputs are checked to be finite (warm-up and after every chunk).

Modules: :mod:`~quadexport.bench.config` (:class:`BenchConfig`, :class:`BenchError`), :mod:`~.models` (zoo names
and run dirs), :mod:`~.baselines` (twin and MAC-matched model), :mod:`~.timing`, :mod:`~.environment`,
:mod:`~.rows` (typed rows and ratios), :mod:`~.report` (:class:`BenchReport`: table, Markdown, JSON),
:mod:`~.plots`, :mod:`~.run` (:func:`bench`).
"""

from quadexport.bench.baselines import mac_matched_baseline, resolve_models
from quadexport.bench.config import (DEFAULT_INPUT_SHAPE, MODES, ONNX_MODES, PERTURB_STD, ROLES, BenchConfig,
                                     BenchError, parse_input_shape)
from quadexport.bench.environment import environment
from quadexport.bench.models import BenchModel, _zoo_macs
from quadexport.bench.report import BenchReport
from quadexport.bench.rows import RATIO_KEYS, ROW_KEYS, BenchRow, ModeRatio, OrtTorchRatio, PairRatio, fmt_ratio
from quadexport.bench.run import bench
from quadexport.bench.timing import TimingConfig, TimingStats, TimingUnit, time_sessions

_resolve_models = resolve_models  # the name tests and older callers use

__all__ = ["BenchConfig", "BenchError", "BenchModel", "BenchReport", "BenchRow", "DEFAULT_INPUT_SHAPE", "MODES",
           "ModeRatio", "ONNX_MODES", "OrtTorchRatio", "PERTURB_STD", "PairRatio", "RATIO_KEYS", "ROLES", "ROW_KEYS",
           "TimingConfig", "TimingStats", "TimingUnit", "bench", "environment", "fmt_ratio", "mac_matched_baseline",
           "parse_input_shape", "resolve_models", "time_sessions", "_zoo_macs"]
