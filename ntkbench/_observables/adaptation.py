"""How the NTK trace moves (docs/definitions.md §6-7): the trace ratio between initialization and
the minimum test loss, and the trace adaptation rate along the records.

Pure `jax.numpy`; re-exported by `ntkbench.observables`.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float


def trace_ratio(T0: Float[ArrayLike, "*b"], T_star: Float[ArrayLike, "*b"]) -> Float[Array, "*b"]:
    r"""Trace ratio `r = (T* − T0) / T0` (paper Eq. 5, docs/definitions.md §6), elementwise.

    Args:
        T0: trace at initialization, any shape.
        T_star: trace at the minimum test loss, same shape.

    Returns:
        `r`, the broadcast shape of the inputs.

    Example:
        >>> float(trace_ratio(2.0, 3.0))
        0.5
    """
    T0 = jnp.asarray(T0)
    return (jnp.asarray(T_star) - T0) / T0


def adaptation_rate(
    trace: Float[ArrayLike, " k"], train_loss: Float[ArrayLike, " k"], window: int = 20
) -> Float[Array, " k"]:
    r"""Trace adaptation rate `α = −dT̄ / dℓ̄` along the records (paper Eq. 4, docs/definitions.md §7).

    `T̄` and `ℓ̄` are running means of `T` and of `ℓ = ln L_train` over `window` consecutive
    records, each placed at the centre of its window, `c_j = j + (window − 1)/2`. The derivative
    is a ratio of central differences along the records, `α = −ΔT̄ / Δℓ̄`, at integer records:

    - even `window` (centres are half-integers): `Δ` is the difference of the two running means
      centred at `k ± 1/2`, which telescopes to `α_k = −(T_{k+h} − T_{k−h}) / (ℓ_{k+h} − ℓ_{k−h})`
      with `h = window / 2`: the mean slope over the window centred at `k`;
    - odd `window` (integer centres): `Δ` is the difference of the running means centred at `k ± 1`.

    A trace exactly linear in `ln L`, `T = a − α ln L`, gives `α` exactly. `α_k` needs the whole
    window: it is NaN for the first and last `⌈window/2⌉` records (the "half-windows" of docs/definitions.md
    §7, where it is not extrapolated), and wherever an input in its window is NaN. The records are
    assumed equally spaced: with the NTK recorded every `s` epochs, pass the recorded epochs only
    and `window = 20 / s` (see `ntkbench.analysis.summarize`).

    Args:
        trace: `T` per record, shape `(K,)`.
        train_loss: `L_train` (not its log) at the same records, shape `(K,)`.
        window: running-mean window in records, at least 2.

    Returns:
        `α` per record, shape `(K,)`, NaN where undefined.

    Example:
        >>> loss = jnp.exp(-jnp.linspace(0.0, 5.0, 50))
        >>> alpha = adaptation_rate(3.0 - 2.0 * jnp.log(loss), loss, window=10)
        >>> round(float(alpha[25]), 4), bool(jnp.isnan(alpha[0]))
        (2.0, True)
    """
    window = int(window)
    if window < 2:
        raise ValueError(
            f"window={window} records is too short for a running mean and a central difference; "
            "use window >= 2 (NTK recorded every s epochs: window = max(2, round(20 / s)))."
        )
    trace = jnp.asarray(trace)
    log_loss = jnp.log(jnp.asarray(train_loss, dtype=trace.dtype))
    if trace.ndim != 1 or log_loss.shape != trace.shape:
        raise ValueError(
            f"trace and train_loss must be 1-D and of equal length (one value per record), got "
            f"{trace.shape} and {log_loss.shape}; vmap over members."
        )
    num = trace.shape[0]
    half = (window + 1) // 2  # first record with a full window on both sides
    if num < 2 * half + 1:
        return jnp.full((num,), jnp.nan, trace.dtype)
    box = jnp.ones((window,), trace.dtype) / window
    t_bar = jnp.convolve(trace, box, mode="valid")  # (num - window + 1,), centre j + (window-1)/2
    l_bar = jnp.convolve(log_loss, box, mode="valid")
    if window % 2 == 0:
        dt, dl = t_bar[1:] - t_bar[:-1], l_bar[1:] - l_bar[:-1]  # at records j + window/2
    else:
        dt, dl = t_bar[2:] - t_bar[:-2], l_bar[2:] - l_bar[:-2]  # at records j + (window+1)/2
    alpha = -dt / dl
    return jnp.concatenate(
        [jnp.full((half,), jnp.nan, trace.dtype), alpha, jnp.full((half,), jnp.nan, trace.dtype)]
    )

