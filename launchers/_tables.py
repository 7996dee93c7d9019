"""The tables `ntkbench run` and `ntkbench status` print."""

from __future__ import annotations

import itertools

import ntkbench


def fmt_time(s: float) -> str:
    """`h:mm:ss`."""
    s = int(max(s, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _table(rows: list[list], headers: list[str], left: tuple[str, ...] = ()) -> str:
    """A plain-text table (tabulate's "plain" format: a header line, then one line per row;
    scripts read its columns): right-aligned but the columns `left`."""
    from tabulate import tabulate  # here: help and `presets` answer without it

    return tabulate(rows, headers, tablefmt="plain", disable_numparse=True,
                    colalign=["left" if h in left else "right" for h in headers])


def summary_table(ds) -> str:
    """Final and best test loss, final accuracy per sweep point (mean ± std over the members
    that did not diverge), and how many diverged."""
    import numpy as np  # here: `status` and help answer without it

    axes = [a for a in ds["test_loss"].dims if a not in ("epoch", "seed") and ds.sizes[a] > 1]
    ok = ~ds["diverged"]
    last = ds["test_loss"].isel(epoch=-1).where(ok)
    best = ds["test_loss"].min("epoch").where(ok)
    acc = ds["test_accuracy"].isel(epoch=-1).where(ok)
    rows = []
    for values in itertools.product(*(ds[a].values for a in axes)):
        sel = dict(zip(axes, values))
        f, b, a = last.sel(sel), best.sel(sel), acc.sel(sel)
        div = int((~ok.sel(sel)).sum())
        total = int(ok.sel(sel).size)
        with np.errstate(all="ignore"):
            rows.append([*(f"{v}" for v in values),
                         f"{float(f.mean()):.4f} ± {float(f.std()):.4f}",
                         f"{float(b.mean()):.4f} ± {float(b.std()):.4f}",
                         f"{float(a.mean()):.3f}", f"{div}/{total}"])
    return _table(rows, [*axes, "final test loss", "best test loss", "test acc", "diverged"])


def status_table(st: ntkbench.SweepStatus) -> str:
    """Per pack: status, epochs done, rate, ETA and the age of the last checkpoint
    (`ntkbench.sweep_status`)."""
    rows = []
    for p in st.packs:
        rate = "" if p.rate is None else f"{p.rate:,.0f}"
        eta = "" if p.seconds_left is None else fmt_time(p.seconds_left)
        age = "-" if p.last_checkpoint_age is None else f"{fmt_time(p.last_checkpoint_age)} ago"
        rows.append([p.pack_id, p.status, p.num_members, p.padded_width,
                     f"{p.epochs_done}/{st.epochs}", rate, eta, age])
    lines = [_table(rows, ["pack", "status", "members", "width<=", "epochs", "m-epochs/s",
                           "ETA", "last ckpt"], left=("status",))]
    rates = [p.rate for p in st.packs if p.rate]
    if rates and st.member_epochs_left:
        lines.append(f"remaining: {st.member_epochs_left:,.0f} member-epochs, about "
                     f"{fmt_time(st.member_epochs_left / max(rates))} at the latest pack's rate")
    if st.stale:
        lines.append("no process holds the workdir: rerun the same `ntkbench run` to resume")
    if st.locked is None:
        lines.append(f"{st.workdir}/.lock cannot be read (permission denied?): whether a run "
                     "holds the workdir now is unknown; statuses are as their files say")
    return "\n".join(lines)
