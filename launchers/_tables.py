"""The tables `ntkbench run` and `ntkbench status` print."""

from __future__ import annotations

import itertools

import ntkbench
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


def status_table(st: ntkbench.SweepStatus) -> str:
    """Per pack: status, epochs done, rate, ETA and the age of the last checkpoint
    (`ntkbench.sweep_status`)."""
    lines = [f"{'pack':>4} {'status':11} {'members':>7} {'width<=':>7} {'epochs':>11} "
             f"{'m-epochs/s':>10} {'ETA':>8} {'last ckpt':>12}"]
    for p in st.packs:
        rate = "" if p.rate is None else f"{p.rate:,.0f}"
        eta = "" if p.seconds_left is None else fmt_time(p.seconds_left)
        age = "-" if p.last_checkpoint_age is None else f"{fmt_time(p.last_checkpoint_age)} ago"
        lines.append(f"{p.pack_id:>4} {p.status:11} {p.num_members:>7} {p.padded_width:>7} "
                     f"{p.epochs_done:>5}/{st.epochs:<5} {rate:>10} {eta:>8} {age:>12}")
    rates = [p.rate for p in st.packs if p.rate]
    if rates and st.member_epochs_left:
        lines.append(f"remaining: {st.member_epochs_left:,.0f} member-epochs, about "
                     f"{fmt_time(st.member_epochs_left / max(rates))} at the latest pack's rate")
    if st.stale:
        lines.append("no process holds the workdir: rerun the same `ntkbench run` to resume")
    return "\n".join(lines)
