"""Public NTK observables (SPEC.md §2-8): pure, jittable, vmappable over members."""

from ntkbench._observables import EIGENVALUE_FLOOR as EIGENVALUE_FLOOR
from ntkbench._observables import adaptation_rate as adaptation_rate
from ntkbench._observables import cosine_normalize as cosine_normalize
from ntkbench._observables import effective_rank as effective_rank
from ntkbench._observables import eigvec_misalignment as eigvec_misalignment
from ntkbench._observables import entropy as entropy
from ntkbench._observables import label_alignment as label_alignment
from ntkbench._observables import label_alignment_traced as label_alignment_traced
from ntkbench._observables import ntk_trace as ntk_trace
from ntkbench._observables import spectral_record as spectral_record
from ntkbench._observables import trace_ratio as trace_ratio
