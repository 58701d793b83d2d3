"""Standard errors of any function of the estimates by the delta method, with exact derivatives.

For an output g(x) of the estimates x = (θ, β, γ) with covariance V, the delta method gives
Var g(x̂) ≈ G V Gᵀ with G = ∂g/∂x at x̂. G comes from ``jax.jacfwd`` through everything the
output is computed from: δ(θ) by the implicit function theorem of the share inversion, recovered
costs, and equilibrium prices by the implicit function theorem of the first-order conditions.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array

from .fitted import Fitted


class DeltaMethod(NamedTuple):
    """An output at the estimates with its delta-method inference (arrays shaped like the output).

    Attributes:
        estimate: g(x̂).
        se: standard errors sqrt(diag(G V Gᵀ)).
        jacobian: G = ∂g/∂x, shaped output × parameters.
        covariance: G V Gᵀ of the flattened output.
    """

    estimate: Array
    se: Array
    jacobian: Array
    covariance: Array


def delta_method(fn, fitted: Fitted, covariance) -> DeltaMethod:
    """Delta-method inference on ``fn(fitted)``, any array-valued function of a :class:`Fitted`."""
    x = fitted.x
    V = jnp.asarray(covariance)
    if V.shape != (x.shape[0], x.shape[0]):
        raise ValueError(f"the covariance must be {x.shape[0]} x {x.shape[0]}, not {V.shape}")

    def g(v):
        return jnp.asarray(fn(fitted.at(v)))

    estimate = jnp.asarray(fn(fitted))
    G = jax.jacfwd(g)(x)
    flat = G.reshape(-1, x.shape[0])
    cov = flat @ V @ flat.T
    se = jnp.sqrt(jnp.maximum(jnp.diag(cov), 0.0)).reshape(estimate.shape)
    return DeltaMethod(estimate, se, G, cov)


class Bootstrap(NamedTuple):
    """Outputs at parameter draws from the estimates' asymptotic normal distribution.

    Attributes:
        values: the output at every draw, shape (draws, *output).
        parameters: the drawn parameter vectors (draws, P).
        failed: per draw, whether some market's share inversion failed (its values are not trustworthy).
    """

    values: Array
    parameters: Array
    failed: Array


def bootstrap(fn, fitted: Fitted, covariance, draws: int, key, config, lower, upper, batch_size: int) -> Bootstrap:
    """PyBLP's parametric bootstrap of ``fn(fitted)``: x_b ~ N(x̂, V) clipped to the bounds, δ(θ_b) solved again
    in every market, ``fn`` evaluated at every draw; draws run ``batch_size`` at a time (vmapped)."""
    x = fitted.x
    V = jnp.asarray(covariance)
    # a symmetric square root that tolerates a singular V (fixed or collinear directions)
    vals, vecs = jnp.linalg.eigh((V + V.T) / 2)
    root = vecs * jnp.sqrt(jnp.maximum(vals, 0.0))[None, :]
    X = x[None, :] + jax.random.normal(key, (draws, x.shape[0]), x.dtype) @ root.T
    X = jnp.clip(X, lower[None, :], upper[None, :])

    def one(v):
        at, status = fitted.solved_at(v, config)
        return jnp.asarray(fn(at)), jnp.any(status != 0)

    values, failed = jax.lax.map(one, X, batch_size=batch_size)
    return Bootstrap(values, X, failed)
