"""Running sweeps: the orchestrator `run` (check, plan, train every pack, write), one pack end to
end (`train_pack`: build, restore, train chunk by chunk, checkpoint, write, finish) with the
caller's `Hooks`, what a person sees of it (`Progress`, `ProgressDisplay`, the cost-weighted
`Eta`), and the learning-rate pilots of `calibrate`.

The top of the training side: depends on every group below it and on `ntkbench.checkpoints`.
"""

from ntkbench._sweep.calibrate import Calibration, calibrate, format_calibration
from ntkbench._sweep.progress import Eta, Progress, ProgressDisplay
from ntkbench._sweep.runner import Hooks, PackContext, train_pack
from ntkbench._sweep.sweep import SweepResult, plan_sweep, run

__all__ = [
    "calibrate", "Calibration", "Eta", "format_calibration", "Hooks", "PackContext",
    "plan_sweep", "Progress", "ProgressDisplay", "run", "SweepResult", "train_pack",
]
