#!/usr/bin/env python3
"""Reproduce the paper's claims (issue #6): trainability (ReLinear), accuracy, expressivity, warm start.

One entry point, one subcommand per experiment (the code lives in :mod:`quadexport.experiments`)::

    .venv/bin/python tools/experiments.py trainability [--budget small|tiny] [--jobs 2]
    .venv/bin/python tools/experiments.py accuracy
    .venv/bin/python tools/experiments.py expressivity
    .venv/bin/python tools/experiments.py warmstart
    .venv/bin/python tools/experiments.py all        # everything above, then `report` (`make results`)
    .venv/bin/python tools/experiments.py report     # regenerate docs/results.md + docs/img/*.png from the JSON

The studies of docs/compression.md and docs/quadratize.md are ``quadexport experiments compression|quadratize``
(recipes ``models/exp-compression.toml``, ``models/exp-quadratize.toml``; this script takes them too).

Recipes: ``models/exp-trainability.toml`` and ``models/exp-accuracy.toml`` (the pipeline's recipe format;
``[budget.<name>]`` tables override the defaults, which are the ``small`` budget). Raw results go to
``reports/experiments/<budget>/`` (git-ignored). Every training run is one process with ``torch.set_num_threads(1)``;
``--jobs`` runs (default 2) go in parallel.
"""

import sys

from quadexport.cli.experiments import main

if __name__ == "__main__":
    sys.exit(main())
