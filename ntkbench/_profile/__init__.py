"""Measuring speed: the NTK kernels' time, FLOP rate and memory on the paper's MLP
(`profile_kernels`, `profile_model` for a user's model), and whole pack chunks over device counts
(`profile_devices`); `format_table` and `format_device_table` print them.

Depends on `ntkbench._config`, `ntkbench._data`, `ntkbench._record`, `ntkbench._train`,
`ntkbench.models` and `ntkbench.kernels`.
"""

from ntkbench._profile.coordcheck import (
    coordcheck,
    coordcheck_slopes,
    format_slopes,
    write_coordcheck,
)
from ntkbench._profile.devices import DeviceRow, format_device_table, profile_devices, sharded_ntk
from ntkbench._profile.profiling import profile_kernels, profile_model
from ntkbench._profile.table import format_table
from ntkbench._profile.timing import COLUMNS, matmul_peak

__all__ = [
    "coordcheck", "coordcheck_slopes", "format_slopes", "write_coordcheck", "COLUMNS", "DeviceRow", "format_device_table", "format_table", "matmul_peak",
    "profile_devices", "profile_model", "profile_kernels", "sharded_ntk",
]
