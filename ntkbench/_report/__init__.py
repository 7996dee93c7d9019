"""Reports: a sweep's figures and `report.md` (`write_report`), and several sweeps side by side
(`write_comparison`).

Depends on `ntkbench._analysis` and `ntkbench._config`; draws with matplotlib.
"""

from ntkbench._report.compare import sweep_differences, write_comparison
from ntkbench._report.report import write_report

__all__ = [
    "sweep_differences", "write_comparison", "write_report",
]
