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
