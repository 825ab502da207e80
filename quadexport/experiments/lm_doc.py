"""The markdown of ``docs/lm.md`` (:func:`quadexport.experiments.lm_report.render_lm`)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

__all__ = ["markdown"]


def _pm(st: dict[str, Any] | None, digits: int = 4) -> str:
    if not st or st.get("mean") is None:
        return "—"
    return f"{st['mean']:.{digits}f} ± {st['std']:.{digits}f}" if st["n"] > 1 else f"{st['mean']:.{digits}f}"


def _diff(d: dict[str, Any] | None) -> str:
    if d is None or d.get("mean") is None:
        return "—"
    seeds = ", ".join("—" if v is None else f"{v:+.4f}" for v in d["per_seed"])
    return f"{d['mean']:+.4f} ± {d['std']:.4f} ({seeds})"


def _mode(recipe: dict[str, Any]) -> str:
    from quadexport.experiments.lm import equal_time_mode

    return equal_time_mode(recipe)


def _crosscheck(recipe: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """With own same-wall-clock runs, the same comparison read off the same-steps curves, as a cross-check."""
    if _mode(recipe) != "runs":
        return []
    rows = [f"{label} {_diff(a['diff_time_curve'])}" for label, a in summary["arms"].items()
            if a.get("diff_time_curve")]
    return ["", "Cross-check: the same-wall-clock Δ read off the same-steps curves instead (no own schedule): "
            + "; ".join(rows) + ". The curves read lower than own runs of that length: this far from convergence "
            "progress follows the summed learning rate, and a truncated cosine has had more of it than a whole "
            "shorter one; so the own runs are the measure."]


def _table(summary: dict[str, Any]) -> list[str]:
    batches = list(next(iter(summary["arms"].values()))["latency_ms"])
    head = ("| arm | params | FFN width | steps | val bits/byte, same steps "
            "| Δ vs ReLU (paired: mean ± sd (per seed)) "
            "| steps at ReLU's wall-clock | val bits/byte, same wall-clock | Δ vs ReLU, same wall-clock "
            "| train step (ms, 1 thread) | " + " | ".join(f"ORT latency batch {b} (ms, ratio)" for b in batches) + " |")
    rows = [head, "|" + "---|" * (10 + len(batches))]
    for label, a in summary["arms"].items():
        from quadexport.zoo.gpt import default_ffn_width

        lat = " | ".join(f"{a['latency_ms'][b]:.3f} ({a['latency_ratio'][b]:.2f}x)" for b in batches)
        rows.append(f"| {label} | {a['params']:,} | {default_ffn_width(a['neuron'], 64)} | {a['steps']} "
                    f"| {_pm(a['bpb_steps'])} | {_diff(a['diff_steps'])} | {a['time_steps']} | {_pm(a['bpb_time'])} "
                    f"| {_diff(a['diff_time'])} | {a['step_ms']:.0f} | {lat} |")
    return rows


def markdown(recipe: dict[str, Any], study: dict[str, Any], summary: dict[str, Any], verdict: list[str],
             command: str, img: Path) -> str:
    tr, ds = recipe["train"], recipe["datasets"][0]
    steps_per_eval = int(ds["train_subset"]) // int(tr["batch_size"])
    st = study["steptime"]
    lines = [
        "# Quadratic feed-forward layers in a small language model, at equal cost",
        "",
        "Issue #31. The anchor: Shazeer, *GLU Variants Improve Transformer* (2020) found the **bilinear** "
        "feed-forward layer `W_2((W_1 x) ⊙ (W_3 x))` (our `t4` with no activation after the product) better than "
        "the ReLU layer at equal parameters and compute in T5 (log-perplexity 1.648 vs 1.677 at 524k steps; "
        "1.960 ± 0.005 vs 1.997 ± 0.005 at 65k). This study tests that claim at a size a 2-core CPU can train, "
        "**whatever it shows**.",
        "",
        "## Command",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Recipe `{recipe.get('_path', 'models/exp-lm.toml')}`, budget `{recipe.get('_budget', 'small')}`; "
        f"reported {time.strftime('%Y-%m-%d %H:%M')}: {len(study['results'])} training runs of "
        f"{sum(r.get('wall_s', 0) for r in study['results'].values()) / 60:.0f} min wall in all "
        f"({sum(r.get('cpu_s', 0) for r in study['results'].values()) / 60:.0f} CPU-min), one thread each, on "
        f"{os.cpu_count()} cores shared with other work ({platform.processor() or platform.machine()}); latency "
        f"measured with a 1-minute load average of {study['latency'].get('loadavg', '?')}. "
        "Raw records: `<out>/runs/lm/*.json`, summary `<out>/lm.json`.",
        "",
        "## Setup",
        "",
        f"- Model: the zoo's `gpt` (byte-level, vocabulary 256, context 64, d_model 64, 2 layers, 4 heads, pre-norm). "
        "The arms differ only in the first feed-forward layer; the quadratic arms' widths are the defaults that "
        "match the ReLU model's parameter count (±2 %).",
        f"- Data: `{ds['dataset']}` (the interpreter's standard-library `.py` sources, validation = the files whose "
        f"name hashes there, fixed); random windows of 64 bytes for training; validation on "
        f"{ds.get('test_subset')} fixed evenly spaced windows ({64 * int(ds.get('test_subset') or 0):,} bytes).",
        f"- Training: {tr['optimizer']} lr {tr['lr']}, {tr['schedule']} schedule over {tr['epochs']} evaluation "
        f"intervals of {steps_per_eval} steps, batch {tr['batch_size']}, gradient clip {tr.get('grad_clip', 0)}, "
        f"weight decay {tr.get('weight_decay', 0)}; quadratic arms: ReLinear {recipe.get('relinear', {})}; seeds "
        f"{summary['seeds']}; each run one thread.",
        f"- Same wall-clock: a quadratic arm gets `t_ReLU / t_arm` of the ReLU arm's steps, the training-step times "
        f"measured interleaved in one process before training ({st['rounds']} rounds of {st['steps_per_round']} "
        "steps, one thread, median: " + ", ".join(f"{k} {1e3 * v:.0f} ms" for k, v in
                                                  st["seconds_per_step"].items()) + "), so the budget does not "
        "depend on what else the shared machine ran. " + (
            "Each such arm is trained again with those steps (its own cosine schedule)." if _mode(recipe) == "runs"
            else "Read off the same-steps validation curves at that step (linear between evaluations, every "
            f"{steps_per_eval} steps): no extra runs, but not an own schedule: a curve read early has had more "
            "learning rate than a run of that length, which favours the slower arm (the `runs` mode trains them)."),
        "- Latency: seed 0 of every arm exported (`decomposed`, opset 20, dynamic length), onnxruntime CPU, one "
        "thread, interleaved (`quadexport.bench.timing.time_sessions`), p50 at the full context of 64.",
        "- Rule: an arm *wins beyond seed noise* when its paired difference to ReLU (same seed) is negative for "
        "every seed and its mean is more than two standard errors below zero, at the same steps **and** at the "
        "same wall-clock.",
        "",
        "## Result",
        "",
        *_table(summary),
        "",
        *verdict,
        *_crosscheck(recipe, summary),
        "",
        f"![validation curves]({img.as_posix()})",
        "",
        "Left: validation bits per byte against optimizer steps (mean over seeds, band min..max). Right: against "
        "training time = steps × each arm's measured step time (dashed: the same-wall-clock runs, which end where "
        "the ReLU arm ends); the runs' own wall-clock on the shared machine depended on what else ran.",
        "",
        "## Limits",
        "",
        "- Scale: a 137k-parameter model, 64-byte context, one corpus, "
        f"{summary['arms'][summary['baseline']]['steps']} steps; the published result is for T5-base at 65k–524k "
        "steps. The direction can be tested here, not the size of the effect at scale.",
        "- One set of hyperparameters for every arm (Adam, learning rate, schedule, batch), tuned for none of them; "
        "the quadratic arms start from Kaiming-normal branches (the usual GLU init), not ReLinear's "
        "`W_g = 0, b_g = 1` (a pilot of 300 steps: the ReLinear-initialised bilinear arm trailed the "
        "Kaiming-initialised one early on).",
        "- Latency is measured on one trained model per arm, one thread, on the same shared machine as the training "
        "(interleaved, so load hits every arm alike); `quadexport bench RUN` gives the full table.",
        "",
    ]
    return "\n".join(lines)
