"""Reading a sweep's results: `ntkbench.load(workdir)` and `ntkbench.verify(workdir)`."""

from __future__ import annotations

import json
import os

from ntkbench._analysis import summarize
from ntkbench._config import ATTRS, stored
from ntkbench._data import load_dataset
from ntkbench._store.store import ResultsStore, read_dataset
from ntkbench._store.verify import describe, find_damage
from ntkbench._train import packs_from_json
from ntkbench._workdir import Workdir, known_fingerprints


def load(workdir: str, *, summaries: bool = True, snapshots: bool = False):
    """The results of a sweep as an `xarray.Dataset` (docs/results.md).

    Dimensions: one per sweep axis (`depth`, `width`, `n_train`, `noise`, `data_draw`, `seed`),
    each sorted, and `epoch`. Uncommitted records read NaN. With `summaries`, the per-member
    summaries (`T0`, `k_star`, `T_star`, `trace_ratio`, `erank_star`, `alpha_star`, ...) are
    added (`ntkbench.summarize`); with `snapshots`, the lazily read `ntk_snapshot`.
    The attributes hold the sweep's name, dataset, model and recording strides, and `config`:
    its whole config as JSON.

    Example:
        >>> ds = ntkbench.load("runs/quick")  # doctest: +SKIP
        >>> ds.test_loss.sel(epoch=ds.epoch[-1]).mean("seed")  # doctest: +SKIP

    Raises:
        FileNotFoundError: the workdir holds no results.
    """
    wd = Workdir(workdir)
    try:
        ds = read_dataset(wd.results, snapshots=snapshots)
    except FileNotFoundError:
        raise FileNotFoundError(f"No results in {workdir}; run the sweep there first "
                                f"(ntkbench run --workdir={workdir}).") from None
    manifest = wd.read_manifest() if os.path.exists(wd.manifest_path) else None
    if manifest is not None:
        c = stored(manifest["config"])
        ds.attrs.update(name=c.name, dataset=c.dataset, model=c.model, epochs=c.epochs,
                        ntk_every=c.ntk_every, eval_every=c.eval_every,
                        ntk_epochs=list(c.ntk_epochs()), workdir=wd.path,
                        optimizer=c.optimizer, b1=c.b1, momentum=c.momentum, loss=c.loss,
                        curvature_every=c.curvature_every,
                        config=json.dumps(c.to_dict(), sort_keys=True))
    if summaries:
        ds = summarize(ds)
    for name in ds.variables:  # the summaries' too (long_name, units, description)
        if name in ATTRS:
            ds[name].attrs.update(ATTRS[name])
    return ds


def store_summaries(workdir: str, store: ResultsStore) -> bool:
    """Store the per-member summaries in the results when every member of the sweep is
    complete, so that the store alone shows them (`xarray.open_zarr`); False when some member
    is not complete yet (another share of the sweep still running, say)."""
    ds = load(workdir)
    if not bool((ds["last_record"] >= ds.sizes["epoch"] - 1).all()):
        return False
    store.write_summaries(ds)
    return True


class DamageReport(list):
    """The damaged stored values of a sweep (`Damage` records), empty when every committed
    value is present and readable; `describe()` says which packs and variables, in one line.
    `unchecked` names the arrays written without checksums (by an older ntkbench): their
    chunks are checked by decoding alone, so a flipped bit in them can go unnoticed."""

    def __init__(self, damage, packs, unchecked=()):
        super().__init__(damage)
        self.packs = tuple(packs)
        self.unchecked = tuple(unchecked)

    def describe(self) -> str:
        if self:
            return describe(self, self.packs)
        note = (f" ({len(self.unchecked)} array(s) written before checksums, e.g. "
                f"{self.unchecked[0]}, are checked by decoding alone)" if self.unchecked else "")
        return "every committed value is present and readable" + note


def verify(workdir: str) -> DamageReport:
    """The damaged stored values of a sweep (missing, undecodable or failing their checksum,
    damaged metadata or coordinates, an interrupted repair), as a `DamageReport`; an empty one
    when every committed value is present and readable. Reads only: nothing is written.

    Example:
        >>> report = ntkbench.verify("runs/quick")  # doctest: +SKIP
        >>> report.describe() if report else "intact"  # doctest: +SKIP
        'intact'
    """
    wd = Workdir(workdir)
    manifest = wd.read_manifest()
    if manifest is None:
        raise FileNotFoundError(f"{workdir} holds no ntkbench sweep.")
    config = stored(manifest["config"])
    num_classes = manifest.get("data", {}).get("num_classes")
    if num_classes is None:
        num_classes = load_dataset(config.dataset, config.data_dir or None).num_classes
    store = ResultsStore(wd.results, config, num_classes, read_only=True,
                         fingerprints=known_fingerprints(manifest))
    packs = packs_from_json(config, manifest["packs"])
    unchecked = sorted(n for n, ok in store.checksums.items() if not ok)
    return DamageReport(find_damage(wd, store, config, packs), packs, unchecked)
