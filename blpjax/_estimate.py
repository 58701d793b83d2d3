"""One- and two-step GMM estimation over θ, and the statistics of each step.

``estimate`` is a convenience that owns nothing the caller could not: it jits one
value-and-gradient function of (θ, δ₀), hands it to an optimiser (:mod:`._optimize`), and then
evaluates, in one jitted post-step function, β, ξ, the updated weighting matrix, the Jacobian of
the moments by ``jax.jacfwd`` (through the implicit δ(θ)), standard errors and the exact Hessian.
"""

from __future__ import annotations

import os
import time
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jaxtyping import Array, Float, Int

from ._config import QUICK_ELEMENTS, jit
from ._contraction import ContractionConfig
from ._errors import BLPSpecificationError
from ._gmm import (
    SE_TYPES,
    Concentration,
    instrument_moments,
    parameter_covariances,
    stacked_moment_covariances,
    symmetric_inverse,
)
from ._markets import Products
from ._micro import MicroSetup, micro_moments
from ._micro import moment_covariances as micro_moment_covariances
from ._objective import Setup, deltas_at_solution, objective, shared_probabilities, structural_errors
from ._optimize import OptaxOptimizer, ScipyOptimizer, optax_minimize, scipy_minimize
from ._params import ParameterSpec
from ._supply import all_costs, supply_moments


class StepResult(eqx.Module):
    """Everything one GMM step produced (arrays; labels live in the front end)."""

    step: int = eqx.field(static=True)
    theta: Float[Array, " P"]
    beta: Float[Array, " K1"]
    objective: Array
    gradient: Float[Array, " P"]
    delta: Float[Array, "T J"]
    xi: Float[Array, "T J"]
    fixed_effects: Float[Array, "T J"]
    W: Float[Array, "M M"]
    updated_W: Float[Array, "M M"]
    moments: Float[Array, " M"]
    moments_jacobian: Float[Array, "M PK"]
    covariances: Float[Array, "PK PK"]
    se: Float[Array, " PK"]
    evaluations: Int[Array, " T"]
    status: Int[Array, " T"]
    optimizer_success: bool = eqx.field(static=True)
    optimizer_iterations: int = eqx.field(static=True)
    objective_evaluations: int = eqx.field(static=True)
    optimizer_message: str = eqx.field(static=True)
    seconds: float = eqx.field(static=True)
    delta0: Float[Array, "T J"] | None = None
    micro_values: Float[Array, " MM"] | None = None
    micro_covariances: Float[Array, "MM MM"] | None = None
    gamma: Float[Array, " K3"] | None = None
    omega: Float[Array, "T J"] | None = None
    costs: Float[Array, "T J"] | None = None
    markups: Float[Array, "T J"] | None = None
    cost_errors: Array | None = None
    clipped_costs: Array | None = None


JACOBIAN_CHUNK_ELEMENTS = 6_000_000
"""Above this many tangent × market × product × agent elements the step statistics' moment Jacobian
is formed a few parameters at a time (``lax.map`` over chunks of tangents) instead of one
``jacfwd`` over all of them, so that its forward-mode I×J tangents are not all alive at once."""


def _jacobian(f, x, setup):
    """∂f/∂x by forward mode; in chunks of parameters for large problems (bounded memory)."""
    P = x.shape[0]
    chunk = max(1, JACOBIAN_CHUNK_ELEMENTS // setup.elements)
    if P <= chunk:
        return jax.jacfwd(f)(x)
    n = -(-P // chunk)
    basis = jnp.eye(n * chunk, P, dtype=x.dtype).reshape(n, chunk, P)  # rows past P are zero

    def columns(block):
        return jax.vmap(lambda v: jax.jvp(f, (x,), (v,))[1])(block)

    with jax.disable_jit(False):  # a real loop, also inside a body traced with nested jits inlined
        out = jax.lax.map(columns, basis)
    return out.reshape(n * chunk, -1)[:P].T


def _post_step(
    x,
    delta,
    g_delta,
    spec,
    setup,
    conc,
    X1_raw,
    cluster_ids,
    n_clusters,
    se_type,
    W_type,
    unadjusted_first,
    config,
    micro=None,
):
    """Statistics of a step at its estimate x with converged δ (jitted once per problem).

    ``unadjusted_first``: unadjusted SEs in a first step (the bread uses S⁻¹, as PyBLP); the only
    way steps differ, so a two-step solve compiles this program once.
    """
    K1 = setup.X1.shape[-1]
    coefficients = conc.B @ g_delta  # (β, γ)
    beta = coefficients[:K1]
    xi = structural_errors(delta, setup, beta)
    fe = jnp.where(setup.mask, delta - X1_raw @ beta - xi, 0.0)
    moments = conc.C @ g_delta
    M = setup.M
    supply = setup.supply
    theta_hat = spec.unpack(x)
    gamma = omega = costs = None
    blocks = [(xi, setup.Z)]
    if supply is not None:
        gamma = coefficients[K1:]
        costs = all_costs(delta, theta_hat, setup)
        omega = jnp.where(setup.mask, costs.transformed - supply.X3 @ gamma, 0.0)
        blocks.append((omega, supply.ZS))

    def stacked_moments(x_):
        theta = spec.unpack(x_)
        d = deltas_at_solution(theta, setup, delta)
        g = instrument_moments(setup.Z, d, setup.mask, setup.N)
        probs = shared_probabilities(theta, setup, d, micro)
        if supply is not None:
            c = all_costs(d, theta, setup, None if probs is None else probs[0])
            g = jnp.concatenate([g, supply_moments(c.transformed, setup)])
        if micro is not None:
            g = jnp.concatenate([g, micro_moments(theta, setup.market, d, micro, probs)])
        return g

    MW = M + (micro.MM if micro is not None else 0)
    G_theta = _jacobian(stacked_moments, x, setup) if spec.P else jnp.zeros((MW, 0))
    ZX = setup.ZX_all()
    if micro is not None:
        ZX = jnp.concatenate([ZX, jnp.zeros((micro.MM, ZX.shape[1]))])
    G = jnp.concatenate([G_theta, -ZX], axis=1)
    S_w = stacked_moment_covariances(blocks, setup.mask, setup.N, W_type, cluster_ids, n_clusters)
    S = (
        S_w
        if se_type == W_type
        else stacked_moment_covariances(blocks, setup.mask, setup.N, se_type, cluster_ids, n_clusters)
    )
    micro_values = micro_cov = None
    if micro is not None:
        theta = spec.unpack(x)
        micro_values = micro.observed - micro_moments(theta, setup.market, delta, micro)
        micro_cov = micro_moment_covariances(theta, setup.market, delta, micro)
        moments = jnp.concatenate([moments, micro.observed - micro_values])
        S_w = jax.scipy.linalg.block_diag(S_w, setup.N * micro_cov)
        S = jax.scipy.linalg.block_diag(S, setup.N * micro_cov)
    updated_W = symmetric_inverse(S_w)
    W_cov = conc.W
    if unadjusted_first:
        W_cov = symmetric_inverse(S)
    cov = parameter_covariances(G, W_cov, S, robust=se_type != "unadjusted")
    se = jnp.sqrt(jnp.diag(cov) / setup.N)
    return dict(
        beta=beta,
        xi=xi,
        fe=fe,
        moments=moments,
        G=G,
        cov=cov,
        se=se,
        updated_W=updated_W,
        micro_values=micro_values,
        micro_covariances=micro_cov,
        gamma=gamma,
        omega=omega,
        costs=None if costs is None else costs.costs,
        markups=None if costs is None else costs.eta,
    )


@partial(jit, once=True, inline=True, static_argnums=(0, 1))
def objective_hessian(spec, config, x, delta0, conc, setup, micro=None):
    """The exact Hessian of q(θ) (forward over reverse through the implicit δ(θ))."""
    return jax.hessian(lambda y: _value(spec, config, y, delta0, conc, setup, micro)[0])(x)


# Module-level programs: compiled once per (parameter structure, configuration), reused across
# solves; data travel as arguments (never baked into the program as constants).
def _value(spec, config, x, d0, conc, setup, micro=None):
    return objective(spec.unpack(x), setup, conc, d0, config, micro)


@partial(jit, inline=True, static_argnums=(0, 1))
def _value_and_grad(spec, config, x, d0, conc, setup, micro=None):
    (q, ev), g = jax.value_and_grad(_value, argnums=2, has_aux=True)(spec, config, x, d0, conc, setup, micro)
    return q, g, ev


@partial(jit, static_argnums=(0, 1, 2))
def _optax_run(spec, config, optimizer, x, d0, conc, setup, micro=None):
    return optax_minimize(
        lambda y, d: _value_and_grad(spec, config, y, d, conc, setup, micro),
        lambda y, d: _value(spec, config, y, d, conc, setup, micro)[0],
        x,
        d0,
        spec.lower,
        spec.upper,
        optimizer,
    )


_post = jit(_post_step, once=True, inline=True, static_argnums=(3, 8, 9, 10, 11, 12))


def _overlap_compilation() -> bool:
    return os.environ.get("BLPJAX_OVERLAP_COMPILE", "1") != "0"


def estimate(
    spec: ParameterSpec,
    setup: Setup,
    products: Products,
    *,
    W: Array | None,
    steps: int,
    se_type: str,
    W_type: str,
    optimizer: ScipyOptimizer | OptaxOptimizer,
    config: ContractionConfig,
    delta0: Array,
    x0: np.ndarray | None = None,
    micro: MicroSetup | None = None,
    initial_W: Array | None = None,
) -> list[StepResult]:
    """Run ``steps`` GMM steps from ``x0`` (default: the starting values in ``spec``).

    With micro moments and no ``W``, an initial update (as PyBLP) evaluates everything at the
    starting values with ``initial_W`` (the 2SLS matrix) for the product block and uses the
    inverse of the resulting moment covariances as W for the first step.
    """
    if se_type not in SE_TYPES or W_type not in SE_TYPES:
        raise BLPSpecificationError(f"se_type and W_type must be one of {SE_TYPES}.")
    x = np.asarray(spec.x0 if x0 is None else x0, np.float64)
    post_args = (products.X1, products.cluster_ids, products.n_clusters, se_type, W_type)
    post = _post.quick if setup.elements < QUICK_ELEMENTS else _post
    ZX_all = setup.ZX_all(host=True)

    pending = None
    if _overlap_compilation() and spec.P and isinstance(optimizer, ScipyOptimizer):
        # the statistics program compiles in the background while this thread traces the
        # value-and-gradient program (tracing is Python on one core; XLA compiles without the GIL)
        initial_update = W is None and micro is not None
        shapes = [jax.ShapeDtypeStruct(np.shape(a), jnp.float64) for a in (x, delta0, (0.0,) * setup.M)]
        conc0 = Concentration.build_host(ZX_all, np.eye(setup.M + (micro.MM if micro is not None else 0)))
        first = se_type == "unadjusted" and not initial_update
        pending = post.precompile(*shapes, spec, setup, conc0, *post_args, first, config, micro)
    if W is None:
        MM = micro.MM if micro is not None else 0
        W = scipy.linalg.block_diag(np.asarray(initial_W, np.float64), np.zeros((MM, MM)))
        if micro is not None:
            conc = Concentration.build_host(ZX_all, W)
            _, _, ev = _value_and_grad(spec, config, jnp.asarray(x), delta0, conc, setup, micro)
            if pending is not None:
                pending.result()
                pending = None
            out = post(jnp.asarray(x), ev.delta, ev.g_delta, spec, setup, conc, *post_args, False, config, micro)
            W = out["updated_W"]
            delta0 = ev.delta

    results: list[StepResult] = []
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        conc = Concentration.build_host(ZX_all, W)
        unadjusted_first = se_type == "unadjusted" and step == 1
        post_static = (*post_args, unadjusted_first, config, micro)
        if spec.P:
            if isinstance(optimizer, ScipyOptimizer):
                res = scipy_minimize(
                    lambda x_, d0, conc=conc: _value_and_grad(spec, config, x_, d0, conc, setup, micro),
                    x,
                    delta0,
                    spec.lower,
                    spec.upper,
                    optimizer,
                )
                x_hat = res.x
                info = (res.success, res.iterations, res.evaluations, res.message)
            else:
                res = _optax_run(spec, config, optimizer, jnp.asarray(x), delta0, conc, setup, micro)
                x_hat = np.asarray(res.x)
                info = (bool(res.success), int(res.iterations), int(res.evaluations), "optax")
        else:
            x_hat = x
            info = (True, 0, 1, "no nonlinear parameters: closed form")
        # evaluated from the step's δ₀ (not the optimiser's last δ), so the contraction statistics are
        # those of a cold start at the estimate, comparable to PyBLP's
        q, gradient, ev = _value_and_grad(spec, config, jnp.asarray(x_hat), delta0, conc, setup, micro)
        if pending is not None:
            pending.result()
            pending = None
        out = post(jnp.asarray(x_hat), ev.delta, ev.g_delta, spec, setup, conc, *post_static)
        out = jax.tree_util.tree_map(lambda a: a.block_until_ready(), out)
        results.append(
            StepResult(
                step,
                jnp.asarray(x_hat),
                out["beta"],
                q,
                gradient,
                ev.delta,
                out["xi"],
                out["fe"],
                W,
                out["updated_W"],
                out["moments"],
                out["G"],
                out["cov"],
                out["se"],
                ev.evaluations,
                ev.status,
                info[0],
                info[1],
                info[2],
                info[3],
                time.perf_counter() - t0,
                delta0,
                out["micro_values"],
                out["micro_covariances"],
                out["gamma"],
                out["omega"],
                out["costs"],
                out["markups"],
                ev.cost_errors,
                ev.clipped_costs,
            )
        )
        W = out["updated_W"]
        x = np.asarray(x_hat)
        delta0 = ev.delta
    return results
