"""Orbax/Tensorstore persistence of a pack's training state (installed as ntkbench.checkpoints).

The on-disk layout, what is saved, the async semantics and the multi-host rule are documented in
`_checkpointer.py`'s module docstring, also shown by `help(ntkbench.checkpoints.PackCheckpointer)`'s
module.
"""

from ._checkpointer import PackCheckpointer as PackCheckpointer
from ._restore import CheckpointCorruptError as CheckpointCorruptError
from ._restore import CheckpointMismatchError as CheckpointMismatchError
