"""Orbax/Tensorstore persistence (installed as ntkbench.checkpoints)."""
