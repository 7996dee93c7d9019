"""Live curves: a sweep's losses, accuracies and NTK quantities as they are recorded, for
TensorBoard (and Weights & Biases where its package is installed).

Writers follow the interface of CLU's `metric_writers` (the JAX convention): `write_scalars(step,
{tag: value})`, `flush()`, `close()`. Each member is one run, `WORKDIR/tensorboard/<member>`,
named by its values of the axes the sweep varies (`width=64,seed=2`; `member` when none
varies), so that `tensorboard --logdir runs/` overlays the members of every sweep under `runs/`
in one chart per quantity, and its run filter picks a width or a seed (`width=64,`). Tags:
`loss/train`, `loss/test`, `accuracy/train`, `accuracy/test`, `linearized/...` and `ntk/trace`,
`ntk/erank`, ... (the stored names, docs/results.md); the step is the record index, i.e. the
epoch (0 = initialization). Values a record does not measure (NaN: test metrics between
`eval_every` epochs, NTK quantities between NTK records) are not written.

Writes go through one background thread, so training never waits for them; only process 0
writes (the other processes' members are gathered to it). A resumed pack starts its runs with
TensorBoard's `purge_step` at the resumed epoch: the records a killed run wrote after its last
checkpoint are discarded and written again, once.

TensorBoard event files are written with tensorboardX (neither TensorFlow nor PyTorch);
W&B runs (one per member, grouped by the sweep's name) only where `wandb` is installed.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ntkbench._config import NTK_STDERR, SweepConfig

#: Stored name -> TensorBoard tag of the quantities written live (the NTK ones: `ntk/<name>`).
TAGS = {"train_loss": "loss/train", "test_loss": "loss/test",
        "train_accuracy": "accuracy/train", "test_accuracy": "accuracy/test",
        "lin_train_loss": "linearized/train_loss", "lin_test_loss": "linearized/test_loss",
        "lin_output_gap": "linearized/output_gap"}


def tag(name: str) -> str | None:
    """The TensorBoard tag of a stored record variable (None: not written live)."""
    if name in TAGS:
        return TAGS[name]
    if name in NTK_STDERR:
        return None
    return "ntk/" + name.removeprefix("ntk_")


def member_name(config: SweepConfig, member) -> str:
    """`width=64,seed=2`: the member's values of the axes the sweep varies."""
    varying = [a for a, values in config.axis_values().items() if len(values) > 1]
    parts = [f"{a}={getattr(member, a):g}" if isinstance(getattr(member, a), float)
             else f"{a}={getattr(member, a)}" for a in varying]
    return ",".join(parts) or "member"


class TensorBoardWriter:
    """CLU's `MetricWriter` (scalars) on a tensorboardX event file in `logdir`.

    Args:
        logdir: the run's directory.
        purge_step: TensorBoard discards this run's earlier events at steps >= it (a resumed
            run rewrites them).
    """

    def __init__(self, logdir: str, purge_step: int | None = None):
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(logdir, purge_step=purge_step, flush_secs=30)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """One event holding every scalar of `step` (cheaper than an event per scalar)."""
        from tensorboardX.proto.summary_pb2 import Summary

        if scalars:
            values = [Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
            self._writer.file_writer.add_summary(Summary(value=values), int(step))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbWriter:
    """CLU's `MetricWriter` (scalars) on a Weights & Biases run of one member.

    Args:
        project: the W&B project.
        name: the run's name (the member's, `width=64,seed=2`).
        group: runs of one sweep share it (its name), so W&B groups them.
        config: the member's coordinates and the sweep's config (W&B filters and groups by it).
        logdir: where W&B keeps its local files.
    """

    def __init__(self, project: str, name: str, group: str, config: dict, logdir: str):
        try:
            import wandb
        except ImportError:
            raise ImportError("wandb is not installed: `pip install wandb` for W&B runs, or "
                              "leave wandb_project unset (TensorBoard needs nothing more)."
                              ) from None
        self._run = wandb.init(project=project, name=name, group=group, config=config,
                               dir=logdir, reinit="create_new")

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if scalars:
            self._run.log(dict(scalars), step=int(step))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._run.finish()


def wandb_available() -> bool:
    """Whether the `wandb` package can be imported here."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        return False
    return True


class LiveCurves:
    """The live curves of a sweep: a writer per member of the current pack, fed from a
    background thread.

    Args:
        root: the sweep's workdir (runs go to `root/tensorboard/<member>`).
        config: the sweep.
        tensorboard: write TensorBoard event files.
        wandb_project: also log to this Weights & Biases project (needs `wandb`).
        log: where a failure to write is reported (once; training goes on without curves).
    """

    def __init__(self, root: str, config: SweepConfig, *, tensorboard: bool = True,
                 wandb_project: str | None = None, log: Callable[[str], None] = print):
        self.dir = os.path.join(root, "tensorboard")
        self.config = config
        self.tensorboard, self.wandb_project = tensorboard, wandb_project
        self._log = log
        self._pool = concurrent.futures.ThreadPoolExecutor(1, "ntkbench-live-curves")
        self._writers: list = []
        self._failed = False

    def _guard(self, fn, *args) -> None:
        if self._failed:
            return
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - curves are a view: training goes on
            self._failed = True
            self._log(f"live curves: stopped writing them ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); the results are unaffected")

    def _submit(self, fn, *args) -> None:
        self._pool.submit(self._guard, fn, *args)

    def open_pack(self, members: Sequence, epoch: int) -> None:
        """Writers for `members` (a pack's, in pack order); `epoch` > 0 resumes at it."""
        self._submit(self._open, list(members), epoch)

    def _open(self, members, epoch: int) -> None:
        self._close()
        for m in members:
            name = member_name(self.config, m)
            writers = []
            if self.tensorboard:
                writers.append(TensorBoardWriter(os.path.join(self.dir, name),
                                                 purge_step=epoch or None))
            if self.wandb_project:
                coords = {a: getattr(m, a) for a in self.config.axis_values()}
                writers.append(WandbWriter(self.wandb_project, name, self.config.name,
                                           {**coords, "sweep": self.config.to_dict()},
                                           self.dir))
            self._writers.append(writers)

    def write(self, start: int, values: Mapping[str, np.ndarray]) -> None:
        """Records `start .. start + T - 1` of the pack's members: name -> `(T, m)` host
        arrays (or `(m,)` for one record); other shapes (per-layer values) are left out."""
        arrays = {}
        for name, v in values.items():
            t = tag(name)
            v = np.asarray(v, np.float64)
            if t is not None and v.ndim in (1, 2):
                arrays[t] = v[None] if v.ndim == 1 else v
        self._submit(self._write, start, arrays)

    def _write(self, start: int, arrays: dict) -> None:
        lists = {t: v.tolist() for t, v in arrays.items()}
        steps = next(iter(arrays.values())).shape[0] if arrays else 0
        for j, writers in enumerate(self._writers):
            for s in range(steps):
                scalars = {t: v[s][j] for t, v in lists.items()
                           if j < len(v[s]) and math.isfinite(v[s][j])}
                for w in writers:
                    w.write_scalars(start + s, scalars)
        for writers in self._writers:
            for w in writers:
                w.flush()

    def close_pack(self) -> None:
        self._submit(self._close)

    def _close(self) -> None:
        for writers in self._writers:
            for w in writers:
                w.close()
        self._writers = []

    def close(self) -> None:
        """Write everything submitted, close the writers and stop the thread."""
        self._submit(self._close)
        self._pool.shutdown(wait=True)
