"""Run directories: locks, staging, run ids, weights-only checkpoints, atomic files and :func:`write_run`, the one
writer every command uses."""
