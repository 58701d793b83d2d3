"""Closed-form share inversions for plain and nested logit (one market).

Logit: δ_j = log s_j − log s_0. Nested logit (Berry 1994): δ_j = log s_j − log s_0 − ρ_h log s_{j|h}
with s_{j|h} = s_j / Σ_{k∈h} s_k. These are exact; random-coefficient models need the contraction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int


def logit_delta(
    shares: Float[Array, " J"],
    mask: Bool[Array, " J"],
    nest_ids: Int[Array, " J"] | None = None,
    rho: Float[Array, " H"] | None = None,
    xp=jnp,
) -> Float[Array, " J"]:
    """Mean utilities that rationalise ``shares`` exactly (0 on padded products).

    Leading axes are markets, so ``xp=numpy`` inverts every market at once on the host (plain
    logit only; nesting needs JAX).
    """
    s = xp.where(mask, shares, 1.0)
    outside = 1.0 - xp.sum(xp.where(mask, shares, 0.0), axis=-1, keepdims=True)
    delta = xp.log(s) - xp.log(outside)
    if rho is not None and nest_ids is not None and rho.shape[0] > 0:
        H = rho.shape[0]
        nest_shares = jax.ops.segment_sum(jnp.where(mask, shares, 0.0), nest_ids, num_segments=H)
        within = s / jnp.where(mask, nest_shares[nest_ids], 1.0)
        delta = delta - rho[nest_ids] * jnp.log(within)
    return xp.where(mask, delta, 0.0)
