"""ntkbench: fast, exact, resumable studies of training dynamics through the empirical NTK.

The public API (README.md shows a notebook session; docs/ explains every quantity)::

    import ntkbench
    config = ntkbench.SweepConfig(widths=(8, 64, 512), num_seeds=4, epochs=300)
    ntkbench.run(config, "runs/mine")          # trains every member, records the NTK
    ds = ntkbench.load("runs/mine")            # an xarray.Dataset with the summaries
    ntkbench.write_report(ds, "runs/mine/report")

Modules: `ntkbench.kernels` (NTK kernels), `ntkbench.observables` (trace, entropy, effective
rank, alignments, kernel distance), `ntkbench.models` (MLP, CNN), `ntkbench.checkpoints`.

Every public name is listed once, in `__init__.pyi`, and loaded on first use: `import ntkbench`
costs nothing, and the configs, presets and errors load without JAX, so the command line answers
`--help`, `presets`, `status` and bad flags at once (measured: `python -X importtime`, JAX alone
takes seconds on a 2-core machine). docs/architecture.md shows the groups behind the API.
"""

import lazy_loader

_getattr, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
__all__ = [*__all__, "__version__"]


def __getattr__(name: str):
    if name == "__version__":  # the installed distribution's: one source of truth
        import importlib.metadata

        try:
            version = importlib.metadata.version("ntkbench")
        except importlib.metadata.PackageNotFoundError:  # a source tree never installed
            version = "0+unknown"
        globals()["__version__"] = version
        return version
    return _getattr(name)
