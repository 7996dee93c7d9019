"""ntkbench: fast, exact, resumable empirical-NTK studies of vmapped ensembles."""

__version__ = "0.1.0"
