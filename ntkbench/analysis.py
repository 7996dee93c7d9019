"""Public analysis API: per-member summaries, power-law fits and transition widths of a sweep."""

from ntkbench._analysis import PER_EPOCH_VARIABLES as PER_EPOCH_VARIABLES
from ntkbench._analysis import REPLICATE_AXES as REPLICATE_AXES
from ntkbench._analysis import SUMMARY_VARIABLES as SUMMARY_VARIABLES
from ntkbench._analysis import SWEEP_AXES as SWEEP_AXES
from ntkbench._analysis import BrokenPowerLawFit as BrokenPowerLawFit
from ntkbench._analysis import PowerLawFit as PowerLawFit
from ntkbench._analysis import adaptation_rate_np as adaptation_rate_np
from ntkbench._analysis import fit_broken_power_law as fit_broken_power_law
from ntkbench._analysis import fit_power_law as fit_power_law
from ntkbench._analysis import fit_scaling as fit_scaling
from ntkbench._analysis import replicate_axes as replicate_axes
from ntkbench._analysis import summarize as summarize
from ntkbench._analysis import sweep_axes as sweep_axes
from ntkbench._analysis import transition_width as transition_width
