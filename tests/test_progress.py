"""What a person sees of a sweep: the time left weighted by each pack's cost, one numbering of
packs, plain lines without a bar, and hooks that can be switched off (nothing trains here)."""

from __future__ import annotations

import pytest

from ntkbench._sweep.progress import Eta, Progress, ProgressDisplay, line


def _p(**kw) -> Progress:
    base = {"pack_id": 3, "pack_index": 0, "num_packs": 2, "num_members": 4, "padded_width": 64,
            "epoch": 10, "epochs": 100, "member_epochs_done": 40, "member_epochs_total": 800,
            "rate": 20.0, "phase": "train", "seconds_left": 52.0, "pack_epochs_per_second": 10.0}
    return Progress(**{**base, **kw})


def test_eta_weights_each_pack_by_its_cost_and_counts_compiling_once_per_program():
    eta = Eta({0: 1.0, 1: 4.0, 2: 4.0}, epochs=100, programs={0: "a", 1: "b", 2: "b"},
              chunk_epochs=10)
    assert eta.seconds_left() is None  # nothing measured yet
    eta.chunk(0, 10, 5.0, first=True)  # 1 s of training + 4 s building and compiling
    assert eta.seconds_left() is None  # a first chunk alone is mostly compiling: "ETA ?"
    eta.chunk(0, 10, 1.0, first=False)
    assert eta.epoch_seconds(0) == pytest.approx(0.1)
    assert eta.epoch_seconds(1) == pytest.approx(0.4)  # 4x the cost per epoch
    # pack 0: 80 epochs x 0.1 s; packs 1, 2: 100 x 0.4 s each; program "b" compiles once (4 s)
    assert eta.seconds_left() == pytest.approx(8 + 40 + 40 + 4)
    eta.chunk(1, 10, 8.0, first=True)
    eta.chunk(1, 10, 2.0, first=False)  # measured: 0.2 s/epoch, not the estimated 0.4
    assert eta.epoch_seconds(1) == pytest.approx(0.2)
    eta.resumed(2, 100)  # done in an earlier run
    assert eta.seconds_left() == pytest.approx(80 * 0.1 + 80 * 0.2)
    one = Eta({0: 1.0, 1: 2.0}, epochs=10, chunk_epochs=10)  # one chunk per pack
    one.chunk(0, 10, 3.0, first=True)
    assert one.seconds_left() == pytest.approx(6.0)  # first chunks are all there is


def test_log_lines_number_packs_one_way_and_show_sane_rates():
    lines = []
    display = ProgressDisplay("log", log=lines.append)
    display(_p(phase="compile"))
    display(_p(phase="train", first_chunk=True, pack_epochs_per_second=2.0))
    display(_p(phase="train", epoch=20))
    display(_p(phase="skip", pack_id=4, pack_index=1, rate=0.0, seconds_left=None))
    display(_p(phase="done", epoch=100))
    assert lines[0].startswith("[1/2] pack 3 (width<= 64, 4 members): building it and compiling")
    assert "(first chunk, compiling included)" in lines[1]
    assert lines[2] == ("[1/2] pack 3 (width<= 64, 4 members) epoch 20/100 | 10 epochs/s = 40 "
                        "member-epochs/s | ETA 0:00:52")
    assert lines[3] == "[2/2] pack 4: done in an earlier run, skipped"  # no rate for a skip
    assert len(lines) == 4
    assert line(_p(seconds_left=None)).endswith("ETA ?")


def test_hooks_show_progress_by_default_and_quiet_shows_nothing(capsys):
    from ntkbench import Hooks
    from ntkbench import ProgressDisplay as Public

    assert Public is ProgressDisplay
    hooks = Hooks()
    assert isinstance(hooks.progress, ProgressDisplay) and hooks.log == hooks.progress.log
    assert hooks.should_stop is None  # ntkbench.run turns Ctrl-C into a stop request
    quiet = Hooks.quiet()
    quiet.progress(_p())
    quiet.log("nothing")
    off = Hooks(progress=False)
    off.progress(_p())
    assert capsys.readouterr().err == ""
