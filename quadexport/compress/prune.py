"""Quadratic-term pruning (issue #5, technique 1); one import point for its steps, which live in
:mod:`~quadexport.compress.stats` (1–2), :mod:`~quadexport.compress.plan` (3), :mod:`~quadexport.compress.permute`
and :mod:`~quadexport.compress.rewrite` (4), and :mod:`quadexport.transforms.prune_spec` (the spec).

1. **Calibration** (:func:`collect_stats`): on real training images, every Fan-form quadratic layer's branch outputs
   ``R = r(x)``, ``P = r(x)·g(x)`` and ``B = b(x·x)`` are recorded per output channel as means and covariances
   (float64). The layer output is ``Y = P + B``; its linear twin would output ``R``.
2. **Scores** (:func:`channel_scores`): for a channel, the best least-squares refit ``Y ≈ Σ a_i X_i + c`` with a
   reduced set of terms leaves a residual; its RMS relative to ``std(Y)`` is the score. ``lin``: ``{R}`` (the channel
   becomes linear, ``y = α·r(x) + β``); ``no_b``: ``{P}`` (drop ``W_b``); ``no_g``: ``{R, B}`` (drop the gate).
   Because a BatchNorm (or the next layer) normalises the channel by its std, a score of 0.05 means the channel's
   normalised output moves by 5 % RMS.
3. **Decisions** (:func:`plan`): a channel is quadratic if its ``lin`` score is ≥ the threshold (so threshold 0
   changes nothing). Quadratic channels are moved to the front of their channel group by a permutation, and their
   count ``k`` is rounded up to the NCHWc block (:func:`nchwc_block`) so onnxruntime keeps the blocked layout.
   In a residual stream every producer must use the same order: the quadratic prefix is the union over the stream's
   partially quadratic ``conv2`` layers (layers that are wholly linear or wholly quadratic need no order). A layer
   also drops its ``b`` (or ``g``) branch when no channel of its prefix needs it.
4. **Rewrite** (:func:`compress_model`): layers with ``k = 0`` become a plain ``nn.Conv2d``/``nn.Linear`` (the
   ``α``/``β`` refit goes into the weights and the following BatchNorm's mean); partial layers become
   :class:`~quadexport.layers.mixed.MixedQuad`; option-A shortcuts between permuted streams become
   :class:`~quadexport.layers.mixed.PermShortcut`. The rewrite is described by a JSON *spec* stored in the model's
   ``quadexport_config["compress"]`` so ``create_model`` (and so :func:`quadexport.runs.checkpoint.load`) rebuilds the
   architecture (:func:`apply_spec`).
"""

from __future__ import annotations

from quadexport.compress.permute import conv_shortcuts, permute_model
from quadexport.compress.plan import LayerPlan, Plan, nchwc_block, plan
from quadexport.compress.rewrite import SHORTCUTS, compress_model, copy_scaled, fold_mixed_bn, recalibrate_bn
from quadexport.compress.stats import (FIT_SETS, TERMS, Fit, LayerStats, channel_scores, collect_stats, fit_terms,
                                       is_fan_form, splittable)
from quadexport.transforms.prune_spec import SPEC_VERSION, apply_spec, get_spec, set_spec

__all__ = ["FIT_SETS", "Fit", "LayerPlan", "LayerStats", "Plan", "SHORTCUTS", "SPEC_VERSION", "TERMS", "apply_spec",
           "channel_scores", "collect_stats", "compress_model", "conv_shortcuts", "copy_scaled", "fit_terms",
           "fold_mixed_bn", "get_spec", "is_fan_form", "nchwc_block", "permute_model", "plan", "recalibrate_bn",
           "set_spec", "splittable"]
