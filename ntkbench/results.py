"""Public results API: `load(workdir)` returns the sweep as an `xarray.Dataset`."""

from ntkbench._results import PER_RECORD as PER_RECORD
from ntkbench._results import SNAPSHOTS as SNAPSHOTS
from ntkbench._results import ResultsError as ResultsError
from ntkbench._results import ResultsStore as ResultsStore
from ntkbench._results import load as load
