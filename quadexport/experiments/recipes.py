"""Experiment recipes: ``models/exp-*.toml``, read with the pipeline's :func:`~quadexport.pipeline.load_recipe`.

An experiment recipe is an ordinary recipe that declares ``experiments = [...]`` (see :mod:`quadexport.pipeline` for
its sections). The ``small`` budget is the recipe as written (the documented results); other budgets apply the
recipe's ``[budget.<name>]`` overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quadexport.errors import UsageError, did_you_mean
from quadexport.pipeline import load_recipe

ROOT = Path(__file__).resolve().parents[2]  # the repository (recipes in models/, default outputs in reports/)
RECIPES = {"trainability": ROOT / "models" / "exp-trainability.toml",
           "accuracy": ROOT / "models" / "exp-accuracy.toml",
           "compression": ROOT / "models" / "exp-compression.toml",
           "quadratize": ROOT / "models" / "exp-quadratize.toml", "lm": ROOT / "models" / "exp-lm.toml"}
BUDGETS = ("small", "short", "tiny")  # short: a recipe's [budget.short] (exp-lm.toml has one)
EXPERIMENTS = ("trainability", "accuracy", "expressivity", "warmstart")
STUDIES = ("compression", "quadratize")
"""The studies of docs/compression.md and docs/quadratize.md (:mod:`~quadexport.experiments.studies`): long, run one at
a time, not part of ``all``."""
SCHEMA_VERSION = 1


def check_budget(budget: str) -> None:
    """Raise :class:`UsageError` unless ``budget`` is one of :data:`BUDGETS`."""
    if budget not in BUDGETS:
        raise UsageError(f"budget must be one of {BUDGETS}, got {budget!r}{did_you_mean(budget, BUDGETS)}")


def load_experiment_recipe(name: str, budget: str, path: str | Path | None = None) -> dict[str, Any]:
    """Recipe of experiment or study ``name`` (trainability/accuracy/compression/quadratize) with the ``[budget.<budget>]`` overrides applied.

    The result also carries ``_path`` (the recipe file, relative to the repository when inside it) and
    ``_budget``; both are stored with the results and quoted by the report.
    """
    check_budget(budget)
    if path is None and name not in RECIPES:
        raise UsageError(f"no recipe for experiment {name!r}{did_you_mean(name, RECIPES)}")
    path = Path(path or RECIPES[name])
    recipe = load_recipe(path, budget=None if budget == "small" else budget)
    if name not in recipe.get("experiments", ()):
        raise UsageError(f"recipe {path} does not declare experiment {name!r} (experiments = "
                         f"{recipe.get('experiments')})")
    recipe["_path"] = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    recipe["_budget"] = budget
    return recipe
