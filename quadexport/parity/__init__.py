"""Parity judged against float64 (issue #29): the numeric core every verdict of quadexport shares.

A comparison of two float32 computations (onnxruntime against torch, an adopted model against its source) says
nothing about which of the two is right. Quadratic networks square their activations, so float32 rounding grows with
depth far faster than in ReLU networks, and a fixed ``rel_l2 <= 1e-5`` fails files that are exactly as accurate as
the model itself. Here the source model is also run in float64 (:class:`Float64Reference`, a deep copy in
``double()``), and each output row gets three figures (:func:`figures`):

- ``rel_l2``: the candidate against torch float32 (the figure reported before);
- ``err_fp64``: the candidate against float64;
- ``floor``: the model's own float32 floor, torch float32 against float64.

:func:`judge` passes a row when ``err_fp64 <= max(rtol, K * floor)`` (:data:`K` = 4) and says which rule decided;
rows whose floor exceeds ``rtol`` carry a warning ("the model itself loses N digits in float32 here"). Any
non-finite value in either output fails, named as such. Where the model cannot run in float64 (fp16-only parts,
custom ops) the reason is kept and the old rule (``rel_l2 <= rtol``) decides.

Random verification inputs come from :func:`random_inputs`: uniform in the run's recorded ``input_range``, else at
its recorded ``input_stats``, else N(0, 1). Every function takes a model's inputs as a tuple (models may take
several tensors).

Level 0: imports only torch, numpy and :mod:`quadexport.errors`.
"""

from quadexport.parity.conversion import ConversionCheck, NonFiniteOutputs, eval_outputs, verify_conversion
from quadexport.parity.inputs import random_inputs
from quadexport.parity.reference import Float64Reference, flatten_outputs
from quadexport.parity.verdict import (FLOAT32_EPS, K, Figures, Verdict, figures, finite_count, judge,
                                       lost_digits, max_rel, nonfinite_message, rel_l2)

__all__ = ["ConversionCheck", "FLOAT32_EPS", "Figures", "Float64Reference", "K", "NonFiniteOutputs", "Verdict",
           "eval_outputs", "verify_conversion", "figures", "finite_count", "flatten_outputs",
           "judge", "lost_digits", "max_rel", "nonfinite_message", "random_inputs", "rel_l2"]
