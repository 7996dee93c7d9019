"""Launchers and the command line (installed as ntkbench.launchers)."""
