"""Public sweep API: `run_sweep(config, workdir)`."""

from ntkbench._sweep import Interrupted as Interrupted
from ntkbench._sweep import WorkdirError as WorkdirError
from ntkbench._sweep import check_data as check_data
from ntkbench._sweep import check_workdir as check_workdir
from ntkbench._sweep import run_sweep as run_sweep
from ntkbench._sweep import summary_table as summary_table
