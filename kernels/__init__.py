"""NTK kernels (installed as ntkbench.kernels)."""
