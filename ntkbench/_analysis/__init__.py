"""What a finished sweep says: per-member summaries (`summarize`: k*, T0, T*, trace ratio,
erank*, α*, ...), which members are complete, where k* lands against the paper's window, and the
power-law and transition fits with bootstrap intervals.

Pure functions of an `xarray.Dataset`; depends on `ntkbench._config` and
`ntkbench.observables`.
"""

from ntkbench._analysis.completeness import (
    describe_incomplete,
    final_epoch,
    incomplete_members,
    mask_incomplete,
    require_complete,
)
from ntkbench._analysis.fits import fit_scaling, transition_width
from ntkbench._analysis.kstar import (
    AT_END,
    EARLY,
    INSIDE,
    LATE,
    NONE,
    KStar,
    default_window,
    flagged_reasons,
    kstar_flags,
    kstar_table,
    usable_points,
)
from ntkbench._analysis.power_laws import (
    BrokenPowerLawFit,
    PowerLawFit,
    fit_broken_power_law,
    fit_power_law,
)
from ntkbench._analysis.summaries import replicate_axes, summarize, sweep_axes

__all__ = [
    "flagged_reasons", "usable_points", "AT_END", "EARLY", "INSIDE", "LATE", "NONE", "BrokenPowerLawFit", "default_window",
    "describe_incomplete", "final_epoch", "fit_broken_power_law", "fit_power_law", "fit_scaling",
    "incomplete_members", "KStar", "kstar_flags", "kstar_table", "mask_incomplete", "PowerLawFit",
    "replicate_axes", "require_complete", "summarize", "sweep_axes", "transition_width",
]
