"""Watching a run while it trains: ``opgrpo status``, per-iteration records read from the stages'
tables, and their TensorBoard (and optional wandb) logs. Nothing here writes a results file."""
