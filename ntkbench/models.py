"""Public model API: `MLP`, `CNN` and the ensemble stacking helpers."""

from ntkbench._models import CNN as CNN
from ntkbench._models import MLP as MLP
from ntkbench._models import concat as concat
from ntkbench._models import init_dense as init_dense
from ntkbench._models import member as member
from ntkbench._models import stack as stack
