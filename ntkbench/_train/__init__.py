"""Packs and their compiled program: which members train together (`plan`), how a pack is built
(stacked, padded members and their device data), where its arrays live (`Placement`, `Runtime`),
and the jitted program that trains it chunk by chunk and records it (`PackProgram`).

Depends on `ntkbench._config`, `ntkbench._data`, `ntkbench._record`, `ntkbench.models`.
"""

from ntkbench._train.builder import PackBuilder, ReadyPack, build_pack
from ntkbench._train.family import ModelFamily, model_family
from ntkbench._train.member_step import make_optimizer, member_loss
from ntkbench._train.members import Member, members, members_keys
from ntkbench._train.pack import (
    SweepData,
    build_data,
    build_models,
    minibatch_schedule,
    with_slots,
)
from ntkbench._train.placement import Placement
from ntkbench._train.planner import (
    Pack,
    Plan,
    check_fits,
    extend_plan,
    member_bytes,
    packs_from_json,
    peak_bytes,
    packs_to_json,
    plan,
    shard_packs,
)
from ntkbench._train.program import PackProgram
from ntkbench._train.runtime import Runtime, host_memory_limit, runtime_id
from ntkbench._train.state import PackData, PackState

__all__ = [
    "make_optimizer", "member_loss", "PackBuilder", "ReadyPack", "build_data", "build_models",
    "build_pack", "check_fits", "extend_plan", "Member", "member_bytes", "members", "peak_bytes",
    "members_keys", "minibatch_schedule", "model_family",
    "ModelFamily", "Pack", "PackData", "PackProgram", "packs_from_json", "packs_to_json",
    "PackState", "Placement", "Plan", "plan", "host_memory_limit", "Runtime", "runtime_id", "shard_packs", "SweepData", "with_slots",
]
