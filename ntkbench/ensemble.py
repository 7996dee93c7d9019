"""Public ensemble API: sweep members, their keys, and the pack planner."""

from ntkbench._ensemble import Member as Member
from ntkbench._ensemble import Pack as Pack
from ntkbench._ensemble import Plan as Plan
from ntkbench._ensemble import member_keys as member_keys
from ntkbench._ensemble import members as members
from ntkbench._ensemble import plan as plan
from ntkbench._ensemble import flops_per_example as flops_per_example
from ntkbench._ensemble import members_keys as members_keys
