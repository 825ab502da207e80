"""Training: the loop (NaN rollback, DDP), its configuration and log, fine-tuning on tensors (``fit``), ReLinear
parameter groups and regularisers, ``--train-only`` and ``train --from``."""
