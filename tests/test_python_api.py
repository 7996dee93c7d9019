"""The Python API as a script or notebook user meets it, in a real process: `ntkbench.run`
shows its progress without being asked, and Ctrl-C (SIGINT) stops it at the next chunk
boundary with the checkpoint written, raises `ntkbench.Interrupted` and leaves a process that
exits at once (it used to print KeyboardInterrupt and then hang shutting down)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

SCRIPT = """
import sys, time
import ntkbench
config = ntkbench.preset("smoke", epochs=400, chunk_epochs=10, checkpoint_every_epochs=0)
try:
    ntkbench.run(config, sys.argv[1])
except ntkbench.Interrupted as e:
    print("INTERRUPTED", e, flush=True)
    print("RETURNED", time.time(), flush=True)
"""


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return env


def test_ctrl_c_stops_at_a_chunk_boundary_with_a_checkpoint_and_returns(tmp_path):
    w = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(w)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    err: list[str] = []
    trained = threading.Event()

    def read_stderr():
        for line in proc.stderr:
            err.append(line)
            if "epoch 20/400" in line:
                trained.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert trained.wait(300), "no progress line:\n" + "".join(err)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=180)
    finally:
        proc.kill()
    exited = time.time()
    out = proc.stdout.read()
    reader.join(10)
    text = "".join(err)
    assert proc.returncode == 0, text + out
    assert "INTERRUPTED interrupted at epoch" in out, text + out
    assert "KeyboardInterrupt" not in text and "Traceback" not in text, text
    # The API talks: the progress of each pack, numbered as in the plan, and the Ctrl-C notice.
    assert "[1/2] pack 0 (width<= 4, 2 members): building it and compiling" in text, text
    assert "member-epochs/s" in text and "Ctrl-C: stopping at the next chunk boundary" in text
    returned = float(out.split("RETURNED", 1)[1].split()[0])
    assert exited - returned < 30, f"the interpreter took {exited - returned:.0f}s to exit"
    stopped = next(int(f.name.split("_")[1].split(".")[0]) for f in (w / "packs").iterdir()
                   if json.loads(f.read_text())["status"] == "interrupted")
    status = json.loads((w / "packs" / f"pack_{stopped:04d}.json").read_text())
    assert 0 < status["last_checkpoint_epoch"] < 400
    assert any(pathlib.Path(w / "checkpoints" / f"pack_{stopped:04d}").iterdir())
