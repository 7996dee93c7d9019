"""`ntkbench calibrate`: where k* lands per lr and width, and the lr it proposes."""

import dataclasses
import os

import numpy as np
import pytest
import xarray as xr

import ntkbench
from ntkbench._config import AXES
from ntkbench._analysis import AT_END, EARLY, INSIDE, NONE, default_window, kstar_table
from ntkbench._sweep.calibrate import pilot_config, propose
from ntkbench.launchers.cli import main

E = 300
WINDOW = (120.0, 300.0)


def kstar_dataset(k, *, widths=(8, 512), depth=(3,), diverged=None, epochs=E):
    """`k_star` over the sweep axes, `k` of shape `(depth, width, seed)` (-1: none)."""
    k = np.asarray(k, np.int32).reshape(len(depth), len(widths), -1)
    shape = (1, len(depth), len(widths), 1, 1, 1, k.shape[-1])
    coords = {a: np.asarray(v) for a, v in
              zip(AXES, (("standard",), depth, widths, (100,), (0.0,), (0,),
                         range(k.shape[-1])))}
    div = np.zeros(shape, bool) if diverged is None else np.asarray(diverged).reshape(shape)
    return xr.Dataset({"k_star": (AXES, k.reshape(shape)), "diverged": (AXES, div),
                       "last_record": (AXES, np.full(shape, epochs))},
                      coords=coords, attrs={"epochs": epochs})


def pilots(law, lrs=(1e-4, 3e-4, 1e-3, 3e-3), widths=(8, 512)):
    """KStar points of pilots whose seeds reach k* = law(lr, width) (+0, +10), capped at E."""
    points = []
    for lr in lrs:
        k = [[min(E, int(law(lr, w)) + s) for s in (0, 10)] for w in widths]
        points += [dataclasses.replace(p, lr=lr) for p in
                   kstar_table(kstar_dataset(k, widths=widths), WINDOW, always=("width",))]
    return points


def test_proposal_is_the_largest_lr_inside():
    # k* ∝ 1/lr: at 1e-4 the narrow width is at the last epoch, at 3e-4 both are mid-run
    # (200, 150), at 1e-3 both are early (60, 45).
    points = pilots(lambda lr, w: (0.06 if w == 8 else 0.045) / lr)
    status = {(p.lr, p.point): p.status for p in points}
    assert status[(1e-4, (("width", 8),))] == AT_END
    assert status[(1e-4, (("width", 512),))] == AT_END  # one seed at 300, the other capped
    assert status[(3e-4, (("width", 8),))] == INSIDE and status[(1e-3, (("width", 8),))] == EARLY
    lr, advice = propose(points, WINDOW)
    assert lr == 3e-4
    assert advice.startswith("lr=0.0003 puts k* inside [120, 300] for every point; at "
                             "lr=0.001 width=8 is early, width=512 is early")


def test_largest_of_several_good_lrs():
    points = pilots(lambda lr, w: 0.05 / lr if lr < 1e-3 else 130)
    assert propose(points, WINDOW)[0] == 3e-3  # 1e-3 and 3e-3 both put k* at 130..140


@pytest.mark.parametrize("law,lr,needle", [
    (lambda lr, w: 1e6, None, "too late even at lr=0.003; try larger lrs (above 0.003)"),
    (lambda lr, w: 5, None, ("too early (or training diverges) even at lr=0.0001; try smaller "
                            "lrs (below 0.0001)")),
    (lambda lr, w: 400 if lr < 2e-4 else 50, None, ("at lr=0.0001 k* is too late, at "
                                                     "lr=0.0003 too early; try lrs between "
                                                     "0.0001 and 0.0003")),
    (lambda lr, w: 50 if w == 8 else 400, None, ("no single lr puts every point inside "
                                                  "[120, 300]: at lr=0.0001 width=8 come too "
                                                  "early while width=512 come too late")),
    # As the quick preset's pilots: the narrow width reaches a minimum only at the largest lr,
    # the wide one is early at all but the smallest, where it is late; the lrs in between
    # are mixed, so "between 1e-4 and 3e-3" would be wrong.
    (lambda lr, w: (0.4 if w == 8 else 0.03) / lr, None,
     ("no single lr puts every point inside [120, 300]: at lr=0.0003 width=512 come too early "
     "while width=8 come too late (inside: width=8 at 0.003; width=512 at none)")),
    (lambda lr, w: 50 if lr in (1e-4, 1e-3) else 400, None,
     ("k* does not move steadily with the lr (too late at lr=0.0003, 0.003, too early at "
     "lr=0.0001, 0.001)")),
])
def test_no_lr_says_which_way(law, lr, needle):
    got, advice = propose(pilots(law), WINDOW)
    assert got is lr and needle in advice, advice


def test_diverged_members_count_as_too_fast():
    k = [[150, 160], [150, 160]]
    bad = kstar_dataset(k, diverged=[[True, True], [False, False]])
    table = kstar_table(bad, WINDOW)
    assert [p.status for p in table] == [NONE, INSIDE] and table[0].found == 0
    good = kstar_table(kstar_dataset(k), WINDOW)
    points = ([dataclasses.replace(p, lr=1e-3) for p in good]
              + [dataclasses.replace(p, lr=3e-3) for p in table])
    assert propose(points, WINDOW)[0] == 1e-3


def test_kstar_flags():
    ds = kstar_dataset([[100, 110, 120], [150, 160, 170], [290, 300, 280], [-1, -1, -1]],
                       widths=(8, 32, 128, 512))
    flags = ntkbench.kstar_flags(ds, WINDOW)
    assert flags == [
        "width=8: mean k* 110 (range 100..120) is before the window [120, 300]; lower the lr",
        ("width=128: mean k* 290 (range 280..300): 1 of 3 at the last epoch 300, the test loss "
        "was still falling; raise the lr or train longer"),
        "width=512: no k* (every member diverged or is unfinished)"]
    assert ntkbench.kstar_flags(ds, (100, 300))[0].startswith("width=128")
    late = ntkbench.kstar_flags(ds, (50, 140))
    assert "width=32: mean k* 160 (range 150..170) is after the window [50, 140]; raise the " \
           "lr or train longer" in late
    assert ntkbench.kstar_flags(ds) == ntkbench.kstar_flags(ds, default_window(E))  # default: (0.4 E, E)
    two = kstar_dataset([[150, 150], [50, 60], [150, 150], [150, 150]], depth=(3, 4))
    assert ntkbench.kstar_flags(two, WINDOW) == [("depth=3, width=512: mean k* 55 (range 50..60) is "
                                        "before the window [120, 300]; lower the lr")]


def test_pilot_config_and_bad_arguments(tmp_path):
    quick = ntkbench.from_config_dict(ntkbench.get_config("quick"))
    p = pilot_config(quick, 1e-3, 2)  # every width: each gets its own proposal
    assert (p.widths, p.num_seeds, p.ntk_every, p.lr, p.epochs, p.depth) == (
        quick.widths, 2, 0, 1e-3, 300, (3,))
    for kw, needle in [({"lrs": []}, "lrs"), ({"lrs": [1e-3, -1]}, "lrs"),
                       ({"lrs": [1e-3, 1e-3]}, "distinct"),
                       ({"lrs": [1e-3], "window": (200, 100)}, "window"),
                       ({"lrs": [1e-3], "window": (10, 400)}, "window"),
                       ({"lrs": [1e-3], "num_seeds": 0}, "num_seeds")]:
        with pytest.raises(ntkbench.ConfigError, match=needle):
            ntkbench.calibrate(quick, workdir=str(tmp_path / "c"), **kw)
    assert not (tmp_path / "c").exists()


def _cli(capsys, *args):
    code = main(["ntkbench", "calibrate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


@pytest.mark.parametrize("args,needle", [
    (["--config=smoke"], "--lrs is required"),
    (["--config=smoke", "--lrs=1e-3,abc"], "--lrs=1e-3,abc must be numbers"),
    (["--config=smoke", "--lrs=1e-3", "--window=5"], "must be two epochs"),
    (["--config=smoke", "--lrs=1e-3", "--window=15,5"], "window=[15.0, 5.0]"),
    (["--config=smoke", "--lrs=0"], "distinct positive numbers"),
    (["--config=smoke", "--lrs=1e-3", "--config.epochs=0"], "epochs"),
    (["--config=nope", "--lrs=1e-3"], "Unknown preset"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, args, needle):
    code, _, err = _cli(capsys, *args, f"--workdir={tmp_path / 'c'}")
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "c").exists()


def test_real_calibration_through_the_cli(tmp_path, capsys):
    w = tmp_path / "cal"
    args = ["--config=smoke", "--config.epochs=8", "--lrs=1e-3,3e-2", "--window=2,8",
            f"--workdir={w}"]
    code, out, _ = _cli(capsys, *args)
    assert code == 0
    assert sorted(os.listdir(w)) == ["lr_0.001", "lr_0.03"]
    points = []
    for lr in (1e-3, 3e-2):
        ds = ntkbench.load(str(w / f"lr_{lr:g}"), summaries=False)
        assert ds.attrs["ntk_every"] == 0 and ds.attrs["epochs"] == 8
        assert list(ds.width.values) == [4, 16] and ds.sizes["seed"] == 2
        assert int(ds.last_record.min()) == 8  # complete
        table = kstar_table(ds, (2.0, 8.0), always=("width",))
        points += [dataclasses.replace(p, lr=lr) for p in table]
        for p in table:  # every row of the printed table is the loaded k*
            mean = "-" if p.status == NONE else f"{p.mean:.1f}"
            assert any(line.split()[:3] == [f"{lr:g}", p.label(), mean]
                       for line in out.splitlines()), (p, out)
    lr, advice = propose(points, (2.0, 8.0))
    verdict = out.strip().splitlines()[-1]
    assert verdict == (f"one lr for every point: lr={lr:g} ({advice})" if lr is not None
                       else f"one lr for every point: none ({advice})")
    assert out.startswith("calibration of 'smoke': k* window [2, 8] of 8 epochs, 2 seed(s)")
    code, again, _ = _cli(capsys, *args)  # resumable: the pilots are done, the same table
    assert code == 0 and again == out
