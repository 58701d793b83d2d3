"""Fixed-effect absorption by within transformation, jittable.

One dimension is demeaned exactly. Several dimensions are absorbed by alternating projections
(the method of alternating projections of Guimarães and Portugal, 2010): each sweep subtracts the
group means of every dimension in turn until a sweep changes nothing beyond ``tol``. Runs inside
``jax.jit`` on padded arrays: padded rows carry zero weight and stay zero.

The absorbed projection M_D is symmetric and idempotent, so the GMM objective never absorbs δ:
with absorbed instruments Z̃ = M_D Z, Z̃'M_D δ = Z̃'δ. Absorption of δ is needed only for
the structural errors ξ (weighting-matrix updates, standard errors, reporting).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int


def _group_means(y, ids, w, size):
    sums = jax.ops.segment_sum(y * w[:, None], ids, num_segments=size)
    counts = jax.ops.segment_sum(w, ids, num_segments=size)
    return sums / jnp.maximum(counts, 1.0)[:, None]


def absorb(
    y: Float[Array, "N K"],
    ids: Int[Array, "N F"],
    mask: Bool[Array, " N"],
    sizes: tuple[int, ...],
    tol: float = 1e-14,
    max_sweeps: int = 100_000,
) -> tuple[Float[Array, "N K"], tuple[Float[Array, "G K"], ...], Array]:
    """Residualise the columns of ``y`` on the fixed effects coded in ``ids``.

    Args:
        y: values on (flattened, padded) observations.
        ids: level codes, one column per dimension.
        mask: real observations.
        sizes: number of levels of each dimension (static).
        tol: convergence tolerance on the largest change in a sweep, relative to max |y|.
        max_sweeps: cap on alternating-projection sweeps.

    Returns:
        The residuals (zero on padding), the estimated level effects of each dimension
        (so that y = residual + Σ_f effects_f[ids_f] on real rows), and the number of sweeps.
    """
    w = mask.astype(y.dtype)
    y = y * w[:, None]
    F = len(sizes)
    if F == 0:
        return y, (), jnp.asarray(0)
    if F == 1:
        means = _group_means(y, ids[:, 0], w, sizes[0])
        return (y - means[ids[:, 0]]) * w[:, None], (means,), jnp.asarray(1)

    scale = jnp.maximum(jnp.max(jnp.abs(y)), 1.0)

    def sweep(carry):
        r, effects, _, k = carry
        change = jnp.asarray(0.0, y.dtype)
        new_effects = []
        for f in range(F):
            means = _group_means(r, ids[:, f], w, sizes[f])
            r = (r - means[ids[:, f]]) * w[:, None]
            new_effects.append(effects[f] + means)
            change = jnp.maximum(change, jnp.max(jnp.abs(means)))
        return r, tuple(new_effects), change, k + 1

    def cond(carry):
        _, _, change, k = carry
        return (change > tol * scale) & (k < max_sweeps)

    effects0 = tuple(jnp.zeros((s, y.shape[1]), y.dtype) for s in sizes)
    r, effects, _, k = jax.lax.while_loop(cond, sweep, (y, effects0, jnp.asarray(jnp.inf, y.dtype), 0))
    return r, effects, k


def absorb_markets(
    y: Float[Array, "T J K"], fe_ids: Int[Array, "T J F"], mask: Bool[Array, "T J"], sizes: tuple[int, ...]
) -> Float[Array, "T J K"]:
    """:func:`absorb` on padded (T, J, K) arrays; returns residuals of the same shape."""
    T, J, K = y.shape
    r, _, _ = absorb(y.reshape(T * J, K), fe_ids.reshape(T * J, -1), mask.reshape(T * J), sizes)
    return r.reshape(T, J, K)
