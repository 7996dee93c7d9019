"""Public report API: the paper's figures and a markdown summary of a sweep."""

from ntkbench._report import SCALING_AXES as SCALING_AXES
from ntkbench._report import write_report as write_report
