"""The tables `ntkbench run` and `ntkbench status` print."""

from __future__ import annotations

import itertools
import time

import numpy as np

from ntkbench._workdir import Workdir
from ntkbench.launchers._progress import fmt_time


def summary_table(ds) -> str:
    """Final and best test loss, final accuracy per sweep point (mean ± std over the members
    that did not diverge), and how many diverged."""
    axes = [a for a in ds["test_loss"].dims if a not in ("epoch", "seed") and ds.sizes[a] > 1]
    ok = ~ds["diverged"]
    last = ds["test_loss"].isel(epoch=-1).where(ok)
    best = ds["test_loss"].min("epoch").where(ok)
    acc = ds["test_accuracy"].isel(epoch=-1).where(ok)
    header = (" ".join(f"{a:>9}" for a in axes)
              + "  final test loss    best test loss   test acc  diverged")
    lines = [header]
    for values in itertools.product(*(ds[a].values for a in axes)):
        sel = dict(zip(axes, values))
        f, b, a = last.sel(sel), best.sel(sel), acc.sel(sel)
        div = int((~ok.sel(sel)).sum())
        total = int(ok.sel(sel).size)
        with np.errstate(all="ignore"):
            lines.append(" ".join(f"{v:>9}" for v in values)
                         + f"  {float(f.mean()):.4f} ± {float(f.std()):.4f}"
                         + f"   {float(b.mean()):.4f} ± {float(b.std()):.4f}"
                         + f"   {float(a.mean()):.3f}    {div:>3}/{total}")
    return "\n".join(lines)


def status_table(wd: Workdir, manifest: dict) -> str:
    """Per pack: status, epochs done, rate, ETA and the age of the last checkpoint. A pack
    marked running while no process holds the workdir was interrupted (e.g. killed)."""
    epochs = manifest["config"]["epochs"]
    now = time.time()
    locked = wd.is_locked()
    lines = [f"{'pack':>4} {'status':11} {'members':>7} {'width<=':>7} {'epochs':>11} "
             f"{'m-epochs/s':>10} {'ETA':>8} {'last ckpt':>12}"]
    total_left = total_rate = 0.0
    for p in manifest["packs"]:
        st = wd.read_status(p["pack_id"])
        status = st.get("status", "pending")
        if status == "running" and not locked:
            status = "interrupted"
        done = st.get("epochs_done", 0)
        members = len(p["members"])
        rate = eta = ""
        if st.get("started") and done and status != "done":
            r = members * done / max(st.get("updated", now) - st["started"], 1e-9)
            rate, eta = f"{r:,.0f}", fmt_time(members * (epochs - done) / r)
            total_rate = max(total_rate, r)
        if status != "done":
            total_left += members * (epochs - done)
        ck = st.get("last_checkpoint_time")
        age = f"{fmt_time(now - ck)} ago" if ck and status != "done" else "-"
        lines.append(f"{p['pack_id']:>4} {status:11} {members:>7} {p['padded_width']:>7} "
                     f"{done:>5}/{epochs:<5} {rate:>10} {eta:>8} {age:>12}")
    if total_rate and total_left:
        lines.append(f"remaining: {total_left:,.0f} member-epochs, about "
                     f"{fmt_time(total_left / total_rate)} at the latest pack's rate")
    if not locked and any(wd.read_status(p["pack_id"]).get("status") == "running"
                          for p in manifest["packs"]):
        lines.append("no process holds the workdir: rerun the same `ntkbench run` to resume")
    return "\n".join(lines)
