"""Public minibatch-pipeline API: per-member grain batch orders for vmapped ensembles.

See `ntkbench._pipeline` for the grain pipeline, the permutation algorithm and why each grain
element is a whole epoch.
"""

from ntkbench._pipeline import STATE_VERSION as STATE_VERSION
from ntkbench._pipeline import MinibatchSchedule as MinibatchSchedule
from ntkbench._pipeline import ShuffleAndPad as ShuffleAndPad
from ntkbench._pipeline import member_dataset as member_dataset
from ntkbench._pipeline import num_steps as num_steps
