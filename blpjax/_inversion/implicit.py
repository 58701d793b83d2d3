"""Mean utilities δ(θ) for one market: contraction forward, implicit function theorem backward.

:func:`solve_delta` runs the accelerated contraction (:mod:`._contraction`) in its primal and
carries a JVP rule from the implicit function theorem on F(δ, θ) = log s(δ, θ) − log S = 0:

    dδ = −(∂F/∂δ)⁻¹ (∂F/∂θ dθ),

one J×J LU factorisation per market (never a solve over all markets' δ). Because it is a JVP
rule, ``jax.jvp``/``jax.jacfwd`` use it directly and ``jax.grad``/``jax.jacrev`` transpose it.
Without nesting the rule is written in closed form from the choice probabilities P at δ
(∂ log s/∂δ = I − diag(1/s) Pᵀ diag(w) P, and ∂ log s/∂μ weighted by P), with a symmetric solve
so that the transpose reuses the factorisation; nested models use the generic rule (a JVP of the
log-space shares). Tangents of data (X2, nodes, demographics, weights, shares) are honoured too;
symbolic zeros are skipped, so differentiating with respect to θ alone costs nothing for the data.

:func:`solve_delta_unrolled` differentiates through a fixed number of plain contraction steps
instead; it exists to test the implicit rule.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, Float

from .._model.logit import logit_delta
from .._model.market import Market, Theta, market_coefficients, market_factored, market_log_shares, market_mu_t
from .._model.shares import column_sums
from .contraction import ContractionConfig, FixedPoint, fixed_point


def contraction_map(theta: Theta, market: Market):
    """The map δ ↦ δ + (1 − ρ)(log S − log s(δ)) with θ-only work (exp(μ)) hoisted out."""
    mask, log_S = market.mask, market.log_shares
    if theta.nested:
        damp = 1.0 - theta.rho[market.nest_ids]

        def g(delta):
            new = delta + damp * (log_S - market_log_shares(delta, theta, market))
            return jnp.where(mask, new, delta)

        return g
    parts, _ = _factored_parts(theta, market)
    scale = market.epsilon_scale  # δ + λ(log S − log s(δ)), log s = δ/λ − c + log(inner)

    def g(delta):
        c, _, _, inner = parts(delta)
        new = log_S + c - jnp.log(jnp.maximum(inner, 1e-300))
        return jnp.where(mask, new if scale == 1.0 else scale * new, delta)

    return g


def _factored_parts(theta: Theta, market: Market):
    """(δ ↦ (c, exp([δ − c, −c]), each agent's denominator, Σ_i w_i E_ij / den_i), the FactoredMarket) of a
    non-nested market:
    FactoredMarket.log_shares_shifted with exp(−m) hoisted out of the loop and the J + 1 exponentials of a step in
    one vector (one exponential kernel per step: faster, and less code to compile)."""
    mask = market.mask
    fm = market_factored(theta, market)
    exp_neg_m = jnp.exp(-fm.m)

    def parts(delta):
        delta = fm.scaled(delta)
        c = jax.lax.stop_gradient(jnp.max(jnp.where(mask, delta, -jnp.inf)))  # a shift (FactoredMarket.build_t)
        ex = jnp.exp(jnp.concatenate([jnp.where(mask, delta - c, -jnp.inf), -c[None]]))
        denominators = exp_neg_m * ex[-1] + column_sums(fm.E, ex[:-1, None])[:, 0]
        inner = fm.E @ (fm.weights / denominators)
        return c, ex, denominators, inner

    return parts, fm


def newton_map(theta: Theta, market: Market):
    """δ ↦ (g(δ), δ + (∂log s/∂δ)⁻¹(log S − log s(δ)), usable): the contraction's step and Newton's, from one
    evaluation of the probabilities. ``usable`` is False where the map saturates (the model's outside share below a
    tenth of the data's: every δ too large, ∂log s/∂δ singular along a uniform shift, so the Newton step is
    meaningless).

    Without nesting ∂log s_j/∂δ_k = (s_j 1{j=k} − Σ_i w_i P_ij P_ik)/s_j: an I·J² product and a J×J solve per
    step, against the I·J of an evaluation (fewer evaluations, more work in each); nested models differentiate
    log s forward.
    """
    mask, log_S = market.mask, market.log_shares
    J = mask.shape[0]
    both = mask[:, None] & mask[None, :]
    eye = jnp.eye(J, dtype=log_S.dtype)
    outside = 1.0 - jnp.sum(jnp.where(mask, jnp.exp(log_S), 0.0))

    def finish(delta, gx, log_s, D):
        f = jnp.where(mask, log_S - log_s, 0.0)
        usable = 1.0 - jnp.sum(jnp.where(mask, jnp.exp(log_s), 0.0)) > 0.1 * outside
        return gx, delta + jnp.linalg.solve(jnp.where(both, D, eye), f), usable

    if theta.nested:
        g = contraction_map(theta, market)
        log_shares = lambda d: market_log_shares(d, theta, market)  # noqa: E731

        def nested_step(delta):
            return finish(delta, g(delta), log_shares(delta), jax.jacfwd(log_shares)(delta))

        return nested_step
    parts, fm = _factored_parts(theta, market)
    E, weights, scale = fm.E, fm.weights, fm.scale

    def step(delta):
        c, ex, denominators, inner = parts(delta)
        log_inner = jnp.log(jnp.maximum(inner, 1e-300))
        gx = jnp.where(mask, scale * (log_S + c - log_inner), delta)
        P = E * ex[:-1, None] / denominators[None, :]  # P_ji (0 on padding)
        s = ex[:-1] * inner  # s_j = e_j Σ_i w_i E_ji / den_i
        D = (jnp.diag(s) - (P * weights[None, :]) @ P.T) / jnp.where(mask, s, 1.0)[:, None] / scale
        return finish(delta, gx, fm.scaled(delta) - c + log_inner, D)

    return step


def _log_share_jacobian(delta, theta: Theta, market: Market) -> Float[Array, "J J"]:
    """∂ log s/∂δ at δ (any model, by forward differentiation), with identity rows/columns on padded products."""
    mask = market.mask
    A = jax.jacfwd(lambda d: market_log_shares(d, theta, market))(delta)
    both = mask[:, None] & mask[None, :]
    return jnp.where(both, A, jnp.eye(delta.shape[0]))


@eqx.filter_custom_jvp
def _solve(theta: Theta, market: Market, delta0: Array, config: ContractionConfig) -> FixedPoint:
    config = config.for_market(market.mask.shape[-1], market.weights.shape[-1])  # "auto" by the market's size
    newton = newton_map(theta, market) if config.method == "newton" else None
    alt = logit_start(theta, market) if config.logit_start else None
    return fixed_point(contraction_map(theta, market), delta0, market.mask, config, newton, alt)


def logit_start(theta: Theta, market: Market) -> Float[Array, " J"]:
    """The (nested) logit inversion of the market's observed shares (times λ): δ at Σ = Π = 0, the second start
    of every solve (``ContractionConfig.logit_start``)."""
    mask = market.mask
    shares = jnp.where(mask, jnp.exp(market.log_shares), 0.0)
    delta = logit_delta(shares, mask, market.nest_ids, theta.rho if theta.nested else None)
    return delta if market.epsilon_scale == 1.0 else market.epsilon_scale * delta


def _is_zero(t):
    return t is None or isinstance(t, SymbolicZero)


def _ift_tangent(delta, theta: Theta, market: Market, t_theta, t_market):
    """dδ = −(∂F/∂δ)⁻¹ (∂F/∂(θ, data) · tangents) at the solution δ (symbolic zeros skipped)."""
    # optional fields (None) are leaves of both trees, so that the two stay aligned wherever a None sits
    leaves, treedef = jax.tree_util.tree_flatten((theta, market), is_leaf=lambda x: x is None)
    t_leaves = jax.tree_util.tree_leaves((t_theta, t_market), is_leaf=_is_zero)
    # eqx.filter_custom_jvp gives None for non-differentiated leaves
    active = [
        i
        for i, t in enumerate(t_leaves)
        if not _is_zero(t) and leaves[i] is not None and jnp.issubdtype(jnp.result_type(leaves[i]), jnp.inexact)
    ]
    if not active:
        return jnp.zeros_like(delta)

    def jvp(fn, which):
        """Tangent of fn(θ, market) along the tangents of the leaves ``which`` (the others held fixed)."""

        def f(*xs):
            full = list(leaves)
            for i, x in zip(which, xs, strict=True):
                full[i] = x
            return fn(*jax.tree_util.tree_unflatten(treedef, full))

        return jax.jvp(f, [leaves[i] for i in which], [t_leaves[i] for i in which])[1]

    if theta.nested:
        return _ift_tangent_generic(delta, theta, market, jvp, active)
    index = jax.tree_util.tree_unflatten(treedef, list(range(len(leaves))))[1]  # positions of market's leaves
    t_weights = t_leaves[index.weights] if index.weights in active else None
    t_log_shares = t_leaves[index.log_shares] if index.log_shares in active else None
    through_mu = [i for i in active if i not in (index.weights, index.log_shares)]
    t_coefficients = None
    if market.product_demographics is None:
        # θ, nodes and demographics move μ_ji = Σ_k X_jk c_ik through the coefficients c (I, K2) only: their tangent
        # stays (I, K2) and the share tangents are products with the probabilities (no (J, I) tangent of μ)
        through_c = [i for i in through_mu if i != index.X2]
        through_mu = [i for i in through_mu if i == index.X2]
        t_coefficients = jvp(market_coefficients, through_c) if through_c else None
    t_mu = jvp(market_mu_t, through_mu) if through_mu else None
    return _ift_tangent_factored(delta, theta, market, t_mu, t_weights, t_log_shares, t_coefficients)


def _ift_tangent_generic(delta, theta, market, jvp, active):
    """Any model: a JVP of the log-space shares and a J×J LU solve with their δ-Jacobian."""
    b = jvp(lambda th, mk: market_log_shares(delta, th, mk) - mk.log_shares, active)
    b = jnp.where(market.mask, b, 0.0)
    lu = jsl.lu_factor(_log_share_jacobian(delta, theta, market))
    return -jsl.lu_solve(lu, b)


def _ift_tangent_factored(delta, theta, market, t_mu, t_weights, t_log_shares, t_coefficients=None):
    """Models without nesting, in closed form from the choice probabilities at δ.

    With s = Pᵀw, multiplying F = log s − log S = 0 through by diag(s) gives
    H dδ = −(ds − s ⊙ d log S) with H = diag(s) − Pᵀ diag(w) P = diag(s) ∂ log s/∂δ (symmetric) and
    ds_j = Σ_i w_i P_ij (dμ_ij − Σ_k P_ik dμ_ik) + Σ_i dw_i P_ij. No derivative of the shares is traced, and the
    symmetric solve lets reverse mode reuse the same factorisation untransposed.

    Every product is taken with exp(μ) (``FactoredMarket.E``, (J, I): the contraction's own array, which XLA shares
    with it) and per-product and per-agent scales, P_ji = e_j E_ji / den_i, so P is never formed: H = diag(s) −
    diag(e) E diag(w/den²) Eᵀ diag(e); s is the observed S (δ solves the share equations). Tangents that move
    μ_ji = Σ_k X_jk c_ik through the random coefficients c only (θ, nodes, demographics: ``t_coefficients``,
    (I, K2)) never form a (J, I) tangent of μ: with a_i = Σ_k (PᵀX)_ik dc_ik, ds_j = Σ_k X_jk (wP dc)_jk −
    (wP a)_j, one product of E with K2 + 1 columns (and in reverse mode its transpose). Tangents of X2 or of
    product-specific demographics move μ itself (``t_mu``, (J, I)).
    """
    mask, scale, w = market.mask, market.epsilon_scale, market.weights  # in units of λ: d(δ/λ) from d(μ/λ), × λ
    fm = market_factored(theta, market)
    E = fm.E
    c, e = fm.shifted_exp(delta)
    X = jnp.where(mask[:, None], market.X2, 0.0)
    G = column_sums(E, jnp.concatenate([e[:, None], e[:, None] * X], axis=1))  # (I, 1 + K2): one read of E
    den = jnp.exp(-fm.m - c) + G[:, 0]
    inv = 1.0 / den
    s = jnp.where(mask, jnp.exp(market.log_shares), 0.0)
    rhs = jnp.zeros_like(delta)
    if t_mu is not None:  # (J, I)
        P = E * e[:, None] * inv[None, :]
        t_mu = jnp.where(mask[:, None], t_mu / scale, 0.0)
        rhs = rhs + jnp.sum(P * w[None, :] * (t_mu - jnp.sum(P * t_mu, axis=0, keepdims=True)), axis=1)
    if t_coefficients is not None:  # (I, K2)
        t_c = t_coefficients / scale
        a = jnp.sum(G[:, 1:] * inv[:, None] * t_c, axis=1)  # Σ_j P_ji dμ_ji per agent
        both = e[:, None] * (E @ ((w * inv)[:, None] * jnp.concatenate([t_c, a[:, None]], axis=1)))  # (J, K2 + 1)
        rhs = rhs + jnp.sum(X * both[:, :-1], axis=1) - both[:, -1]
    if t_weights is not None:
        rhs = rhs + e * (E @ (t_weights * inv))
    if t_log_shares is not None:
        rhs = rhs - s * t_log_shares
    rhs = jnp.where(mask, rhs, 0.0)
    # Σ_i E_ji E_ki w_i / den_i². With few products the weighted copy is stored agents by products: XLA's CPU dot
    # multiplies (J, I) by (I, J) faster than by (J, I) transposed (Mixtape's 94 × 24 × 1,000: 9 against 12 ms), and
    # the barrier keeps the layout pass from undoing the copy's layout; from J ≈ 64 the transposed product is faster
    # than the copy (Petrin's 13 × 210 × 1,000: 37 against 40 ms)
    weighted = E * (w * inv * inv)[None, :]
    gram = E @ jax.lax.optimization_barrier(weighted.T) if E.shape[0] < 64 else E @ weighted.T
    H = jnp.diag(s) - e[:, None] * gram * e[None, :]
    H = jnp.where(mask[:, None] & mask[None, :], H, jnp.eye(delta.shape[0], dtype=delta.dtype))
    # the factorisation is not differentiated: custom_linear_solve differentiates through H @ v instead
    # H is symmetric positive definite (a multinomial covariance with an outside good; identity on
    # padding): a Cholesky factorisation, cheaper than LU and without pivoting
    chol = jsl.cho_factor(jax.lax.stop_gradient(H), lower=True)
    solved = jax.lax.custom_linear_solve(lambda v: H @ v, rhs, lambda _, r: jsl.cho_solve(chol, r), symmetric=True)
    return -solved if scale == 1.0 else -scale * solved


@_solve.def_jvp
def _solve_jvp(primals, tangents):
    theta, market, delta0, config = primals
    out = _solve(theta, market, delta0, config)
    t_delta = _ift_tangent(out.x, theta, market, tangents[0], tangents[1])
    return out, FixedPoint(t_delta, None, None)  # type: ignore[arg-type]


@eqx.filter_custom_jvp
def _pinned(theta: Theta, market: Market, delta: Array) -> Array:
    return delta


@_pinned.def_jvp
def _pinned_jvp(primals, tangents):
    theta, market, delta = primals
    return delta, _ift_tangent(delta, theta, market, tangents[0], tangents[1])


def delta_at_solution(theta: Theta, market: Market, delta: Array) -> Array:
    """δ already solved at θ, carrying the first-order implicit derivative dδ/dθ.

    Cheaper than :func:`solve_delta` for first derivatives at a known solution (no contraction
    is traced). First order only: the tangent holds δ fixed, so do not nest derivatives.
    """
    return _pinned(theta, market, jax.lax.stop_gradient(delta))


def solve_delta(theta: Theta, market: Market, delta0: Array, config: ContractionConfig) -> FixedPoint:
    """δ(θ) for one market with an implicit-function-theorem derivative.

    ``delta0`` is a warm start only: it carries no derivative.
    """
    return _solve(theta, market, jax.lax.stop_gradient(delta0), config)


def solve_delta_unrolled(theta: Theta, market: Market, delta0: Array, steps: int) -> Array:
    """δ after ``steps`` plain contraction steps, differentiated by unrolling (for tests)."""
    mask, log_S = market.mask, market.log_shares
    damp = 1.0 - theta.rho[market.nest_ids] if theta.nested else market.epsilon_scale

    def body(_, d):
        return jnp.where(mask, d + damp * (log_S - market_log_shares(d, theta, market)), d)

    return jax.lax.fori_loop(0, steps, body, jnp.where(mask, delta0, 0.0))
