"""Demand as a function of prices, for one market: markups under any ownership, pass-through, and
Bertrand–Nash equilibrium prices by the ζ-markup fixed point, with an implicit-function derivative.

Prices move utility through the linear and the nonlinear characteristics that depend on them:

    u_ij(p) = δ_j + d_j (p_j − p⁰_j) + μ_ij(X₂ + ∂X₂/∂p · (p − p⁰)),   d_j = Σ_k β_k ∂X₁_jk/∂p_j,

with p⁰ the observed prices and δ the estimated mean utilities (so ξ is held fixed), hence
α_ij = ∂u_ij/∂p_j = d_j + (∂X₂_j/∂p)·(Σν_i + Πd_i).

Firms' first-order conditions under ownership O (O_jk: the share of k's profit that j's owner
collects; 1 within a firm, 0 across firms) are

    F(p) = s(p) + (O ⊙ ∂s/∂pᵀ)(p − c) = 0.

The share Jacobian splits as ∂s/∂p = diag(Λ) − Γ with Λ_j = Σ_i w_i P_ij α_ij / (1 − ρ_j)
(PyBLP's decomposition), and Morrow and Skerlos's ζ-markup map p ↦ c + ζ(p),

    ζ(p) = Λ⁻¹ [(O ⊙ Γᵀ)(p − c) − s],

has the equilibrium prices as its fixed point. It is iterated in a ``lax.while_loop`` per market until
the step weighted by |Λ| (a profit gradient, PyBLP's criterion) is below tolerance, with a status code; the
solution carries the implicit derivative dp = −(∂F/∂p)⁻¹ ∂F/∂(c, θ, δ, β, O) (one J×J solve),
so that anything computed from equilibrium prices is differentiable in the estimates.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from .._base.errors import BLPSpecificationError, Status
from .._inversion.contraction import ContractionConfig, FixedPoint
from .._model.market import Market, Theta, market_coefficients, market_mu_at
from .._model.shares import apply_coefficients, choice


class PriceDemand(eqx.Module):
    """One market's demand at the estimate as a function of its prices (a leading T axis when batched)."""

    market: Market
    delta: Float[Array, " J"]  # estimated mean utilities at the observed prices
    prices: Float[Array, " J"]  # the observed prices p⁰
    d_delta: Float[Array, " J"]  # ∂δ_j/∂p_j = Σ_k β_k ∂X1_jk/∂p_j at the observed prices
    dX2: Float[Array, "J K2"]  # ∂X2_jk/∂p_j at the observed prices
    # characteristics stated by formulas: X1 and X2 as functions of the data's columns (prices among them), which
    # replace the linear update above (e.g. prices² at other prices); None without formulas
    inputs: Float[Array, "J C"] | None = None
    beta: Float[Array, " K1"] | None = None
    terms: tuple | None = eqx.field(static=True, default=None)

    @property
    def mask(self) -> Bool[Array, " J"]:
        return self.market.mask


class Ownership(eqx.Module):
    """One market's ownership O = B κ Bᵀ (a leading T axis when batched): B (J, F) puts each product with one
    of F owners (zero rows on padding), κ (F, F) is the weight owner f puts on owner g's profits (the identity
    for ordinary firms). With few owners, products with O cost I·J·F instead of I·J². ``members=None``: κ is
    the dense J × J matrix O itself."""

    members: Float[Array, "J F"] | None
    kappa: Float[Array, "F F"]

    def dense(self) -> Float[Array, "J J"]:
        """O itself (batched too)."""
        return self.kappa if self.members is None else (self.members @ self.kappa) @ _t(self.members)

    def diagonal(self) -> Float[Array, " J"]:
        if self.members is None:
            return jnp.diagonal(self.kappa, axis1=-2, axis2=-1)
        return jnp.sum((self.members @ self.kappa) * self.members, axis=-1)

    def times_transpose(self, X: Float[Array, "I J"]) -> Float[Array, "I J"]:
        """X Oᵀ (one market)."""
        if self.members is None:
            return X @ self.kappa.T
        return ((X @ self.members) @ self.kappa.T) @ self.members.T


class ShareCosts(eqx.Module):
    """One market's marginal costs when cost characteristics depend on shares (PyBLP's ``constant_costs=False``;
    a leading T axis when batched): c(s) = c⁰ + (X3(s) − X3(s⁰))γ, or c⁰ exp((X3(s) − X3(s⁰))γ) with log costs,
    X3 re-evaluated from its formula at the shares s of the current prices."""

    base: Float[Array, " J"]  # c⁰, the costs at the data's shares s⁰
    gamma: Float[Array, " K3"]
    inputs: Float[Array, "J C"]  # the X3 formula's inputs at the data (shares among them)
    terms: object = eqx.field(static=True)
    log: bool = eqx.field(static=True, default=False)

    def at(self, s: Float[Array, " J"], mask: Bool[Array, " J"]) -> Float[Array, " J"]:
        observed = self.inputs[:, self.terms.inputs.index("shares")]
        new = self.terms.with_input(self.inputs, "shares", jnp.where(mask, s, observed))
        change = jnp.where(mask, (self.terms(new) - self.terms(self.inputs)) @ self.gamma, 0.0)
        return self.base * jnp.exp(change) if self.log else self.base + change


def cost_values(costs, s, mask) -> Float[Array, " J"]:
    """Marginal costs at shares ``s``: ``costs`` itself, or a :class:`ShareCosts` re-evaluated."""
    return costs.at(s, mask) if isinstance(costs, ShareCosts) else costs


def _t(a):
    return jnp.swapaxes(a, -1, -2)


def as_ownership(ownership) -> Ownership:
    """An :class:`Ownership` from one (a dense J × J matrix is wrapped as it is)."""
    return ownership if isinstance(ownership, Ownership) else Ownership(None, ownership)


def _rho(theta: Theta):
    return theta.rho if theta.nested else None


def _inputs_at(p, d: PriceDemand):
    """The formula inputs with prices ``p`` (observed prices on padding)."""
    x1_terms = d.terms[0]
    return x1_terms.with_input(d.inputs, "prices", jnp.where(d.mask, p, d.prices))


def utilities(p, theta: Theta, d: PriceDemand, delta=None):
    """(δ(p), μ(p)) at prices ``p`` (ξ held fixed)."""
    m = d.market
    base = d.delta if delta is None else delta
    if d.terms is not None:  # δ(p) = δ + (X1(p) − X1(p⁰))β, X2(p), each column re-evaluated
        x1_terms, x2_terms = d.terms
        new = _inputs_at(p, d)
        shift = (x1_terms(new) - x1_terms(d.inputs)) @ d.beta
        X2 = jnp.where(m.mask[:, None], x2_terms(new), m.X2)
        return base + jnp.where(m.mask, shift, 0.0), market_mu_at(theta, m, X2)
    dp = jnp.where(m.mask, p - d.prices, 0.0)
    X2 = m.X2 + d.dX2 * dp[:, None]
    return base + d.d_delta * dp, market_mu_at(theta, m, X2)


def log_probabilities_at(p, theta: Theta, d: PriceDemand, available=None) -> tuple[Array, Array]:
    """(log P_ij, log(1 + Σ exp)) at prices ``p``; ``available`` (J,) removes products from the choice set."""
    delta, mu_ = utilities(p, theta, d)
    mask = d.mask if available is None else d.mask & available
    return choice(delta, mu_, mask, d.market.nest_ids, _rho(theta), d.market.epsilon_scale)


def shares_at(p, theta: Theta, d: PriceDemand) -> Float[Array, " J"]:
    log_p, _ = log_probabilities_at(p, theta, d)
    s = d.market.weights @ jnp.exp(jnp.where(d.mask[None, :], log_p, -jnp.inf))
    return jnp.where(d.mask, s, 0.0)


def alpha(theta: Theta, d: PriceDemand, p=None) -> Float[Array, "I J"]:
    """α_ij = ∂u_ij/∂p_j at prices ``p`` (observed by default; 0 on padded products), in units of the logit error's
    scale λ (divided by λ, so that ∂s/∂p and the log-sum surplus λ·log(1 + Σ exp(u/λ))/(∂u/∂p) need no other λ)."""
    m = d.market
    d_delta, dX2 = d.d_delta, d.dX2
    if d.terms is not None:  # formula columns: their derivatives at p by autodiff
        x1_terms, x2_terms = d.terms
        new = _inputs_at(d.prices if p is None else p, d)
        d_delta = x1_terms.derivative(new, "prices") @ d.beta
        dX2 = x2_terms.derivative(new, "prices")
    a = d_delta[None, :] + apply_coefficients(market_coefficients(theta, m), dX2)
    if m.epsilon_scale != 1.0:
        a = a / m.epsilon_scale
    return jnp.where(d.mask[None, :], a, 0.0)


def _both(mask):
    return mask[:, None] & mask[None, :]


def demand_derivatives(p, theta: Theta, d: PriceDemand):
    """(s, Λ, ∂s/∂p) at prices ``p`` from one evaluation of the choice probabilities (0 on padding; Λ is 1
    there so that it can be inverted). ∂s/∂p = diag(Λ) − Γ is PyBLP's split: Λ_j = Σ_i w_i P_ij α_ij/(1 − ρ_j);
    the Jacobian is in closed form without nesting and by autodiff with it."""
    mask = d.mask
    log_p, _ = log_probabilities_at(p, theta, d)
    P = jnp.exp(jnp.where(mask[None, :], log_p, -jnp.inf))
    wP = d.market.weights[:, None] * P
    wPa = wP * alpha(theta, d, p)
    lam = jnp.sum(wPa, axis=0)
    if theta.nested:
        lam = lam / (1.0 - theta.rho[d.market.nest_ids])
        jac = jax.jacfwd(shares_at)(p, theta, d)
    else:  # ∂s_j/∂p_k = Σ_i w_i P_ij (1{j=k} − P_ik) α_ik
        jac = jnp.diag(lam) - wP.T @ (P * alpha(theta, d, p))
    s = jnp.where(mask, jnp.sum(wP, axis=0), 0.0)
    return s, jnp.where(mask, lam, 1.0), jnp.where(_both(mask), jac, 0.0)


def share_jacobian(p, theta: Theta, d: PriceDemand) -> Float[Array, "J J"]:
    """∂s_j/∂p_k at prices ``p`` (0 on padding)."""
    return demand_derivatives(p, theta, d)[2]


def lambda_gamma(p, theta: Theta, d: PriceDemand) -> tuple[Float[Array, " J"], Float[Array, "J J"]]:
    """PyBLP's split ∂s/∂p = diag(Λ) − Γ (Λ is 1 on padding so that it can be inverted)."""
    _, lam, jac = demand_derivatives(p, theta, d)
    return lam, jnp.where(_both(d.mask), jnp.diag(lam) - jac, 0.0)


def markups(p, theta: Theta, d: PriceDemand, ownership) -> Float[Array, " J"]:
    """η(p) = Δ⁻¹ s with Δ = −O ⊙ (∂s/∂p)ᵀ: the markups p − c that rationalise prices ``p`` under ``ownership``."""
    mask = d.mask
    J = mask.shape[0]
    s, _, jac = demand_derivatives(p, theta, d)
    capital_delta = jnp.where(_both(mask), -as_ownership(ownership).dense() * jac.T, jnp.eye(J, dtype=p.dtype))
    return jnp.where(mask, jnp.linalg.solve(capital_delta, s), 0.0)


def _margin_terms(p, costs, theta: Theta, d: PriceDemand, ownership: Ownership):
    """(s, Λ, v, c) at prices ``p`` with v = (O ⊙ Γᵀ)(p − c) and c the costs (at the shares s when they depend
    on shares).

    Without nesting Γ_kj = Σ_i w_i P_ik P_ij α_ij, so v_j = Σ_i w_i P_ij α_ij [(P ⊙ m) Oᵀ]_ij (m = p − c): two
    I × J products through the owners instead of the I × J × J matrix Γ. Nested models form Γ by autodiff.
    """
    mask = d.mask
    if theta.nested:
        s, lam, jac = demand_derivatives(p, theta, d)
        c = cost_values(costs, s, mask)
        gamma = jnp.where(_both(mask), jnp.diag(lam) - jac, 0.0)
        return s, lam, (ownership.dense() * gamma.T) @ jnp.where(mask, p - c, 0.0), c
    log_p, _ = log_probabilities_at(p, theta, d)
    P = jnp.exp(jnp.where(mask[None, :], log_p, -jnp.inf))
    wP = d.market.weights[:, None] * P
    s = jnp.where(mask, jnp.sum(wP, axis=0), 0.0)
    c = cost_values(costs, s, mask)
    margin = jnp.where(mask, p - c, 0.0)
    wPa = wP * alpha(theta, d, p)
    v = jnp.sum(wPa * ownership.times_transpose(P * margin[None, :]), axis=0)
    return s, jnp.where(mask, jnp.sum(wPa, axis=0), 1.0), jnp.where(mask, v, 0.0), c


def first_order_conditions(p, costs, theta: Theta, d: PriceDemand, ownership) -> Float[Array, " J"]:
    """F(p) = s + (O ⊙ ∂s/∂pᵀ)(p − c) = s + diag(O) Λ (p − c) − (O ⊙ Γᵀ)(p − c): zero at equilibrium; p − p⁰ on
    padding (so ∂F/∂p is I there)."""
    mask = d.mask
    own = as_ownership(ownership)
    s, lam, v, c = _margin_terms(p, costs, theta, d, own)
    F = s + own.diagonal() * lam * (p - c) - v
    return jnp.where(mask, F, p - d.prices)


def zeta_step(costs, theta: Theta, d: PriceDemand, ownership):
    """p ↦ (c + ζ(p), |Λ(p)|): Morrow and Skerlos's ζ-markup map (padded prices map to themselves) and the
    weights that turn a price step into a profit gradient (PyBLP's termination weights)."""
    mask = d.mask
    own = as_ownership(ownership)

    def g(p):
        s, lam, v, c = _margin_terms(p, costs, theta, d, own)
        # bound |Λ| away from zero as PyBLP does (a share that underflows)
        lam = jnp.where(jnp.abs(lam) > 1e-300, lam, 1e-300)
        zeta = (v - s) / lam
        return jnp.where(mask, c + zeta, p), jnp.where(mask, jnp.abs(lam), 0.0)

    return g


def zeta_map(costs, theta: Theta, d: PriceDemand, ownership):
    """p ↦ c + ζ(p) (see :func:`zeta_step`)."""
    g = zeta_step(costs, theta, d, ownership)
    return lambda p: g(p)[0]


def _iterate(g, p0, mask, config: ContractionConfig) -> FixedPoint:
    """Simple iteration p ← g(p) until ‖|Λ| ⊙ Δp‖∞ < tol (PyBLP's criterion: the step weighted by |Λ| is the
    profit gradient, so the tolerance does not depend on the units of prices); frozen once done."""
    zero = jnp.asarray(0, jnp.int32)

    def body(state):
        p, n, done, status = state
        new, weights = g(p)
        norm = jnp.max(jnp.where(mask, weights * jnp.abs(new - p), 0.0))
        finite = jnp.isfinite(norm) & jnp.all(jnp.where(mask, jnp.isfinite(new), True))
        n_new = n + 1
        converged = norm < config.tol
        exhausted = n_new >= config.max_evaluations
        code = jnp.where(
            ~finite,
            Status.NONFINITE,
            jnp.where(converged, Status.CONVERGED, jnp.where(exhausted, Status.MAX_EVALUATIONS, 0)),
        )
        keep = done | ~finite
        return (
            jnp.where(keep, p, new),
            jnp.where(done, n, n_new),
            done | ~finite | converged | exhausted,
            jnp.where(done, status, code).astype(status.dtype),
        )

    p, n, _, status = jax.lax.while_loop(lambda s: ~s[2], body, (p0, zero, jnp.asarray(False), zero))
    return FixedPoint(p, n, status)


def _instantiate(tangent, primal):
    """Tangents for every differentiable leaf of ``primal`` (zeros where the caller passed none)."""
    return jax.tree_util.tree_map(
        lambda t, x: None if x is None else (jnp.zeros_like(x) if t is None else t),
        tangent,
        primal,
        is_leaf=lambda v: v is None,
    )


@eqx.filter_custom_jvp
def _pinned(args, p):
    return p


@_pinned.def_jvp
def _pinned_jvp(primals, tangents):
    """dp = −(∂F/∂p)⁻¹ (∂F/∂args · d args) at the solution p of F(p; args) = 0."""
    args, p = primals
    t_args, _ = tangents
    diff, static = eqx.partition(args, eqx.is_inexact_array)
    t_diff = _instantiate(t_args, diff)

    def F(a, q):
        return first_order_conditions(q, *eqx.combine(a, static))

    _, rhs = jax.jvp(lambda a: F(a, p), (diff,), (t_diff,))
    A = jax.jacfwd(lambda q: F(diff, q))(jax.lax.stop_gradient(p))
    return p, -jnp.linalg.solve(jax.lax.stop_gradient(A), rhs)


def equilibrium_prices(
    costs: Float[Array, " J"],
    theta: Theta,
    d: PriceDemand,
    ownership: Float[Array, "J J"],
    p0: Float[Array, " J"],
    config: ContractionConfig,
) -> FixedPoint:
    """Bertrand–Nash prices of one market given marginal costs and ownership, from starting prices ``p0``.

    The solution's ``x`` carries the implicit derivative in (costs, θ, demand, ownership); ``p0`` carries none.
    ``status`` is a :class:`Status` code (converged, evaluation limit, non-finite); ``config`` gives the
    tolerance on ‖|Λ| ⊙ Δp‖∞ and the evaluation limit (method ``"simple"``).
    """
    if config.method != "simple":
        raise BLPSpecificationError(
            "equilibrium prices are solved by simple iteration of the ζ-markup map (as PyBLP's default, which "
            f"converges reliably); pass ContractionConfig(method='simple', ...), not method={config.method!r}."
        )
    args = (costs, theta, d, ownership)
    solved = jax.lax.stop_gradient(args)
    p_start = jnp.where(d.mask, jax.lax.stop_gradient(p0), d.prices)
    out = _iterate(zeta_step(*solved), p_start, d.mask, config)
    x = jnp.where(d.mask, out.x, d.prices)
    return FixedPoint(_pinned(args, jax.lax.stop_gradient(x)), out.evaluations, out.status)


def equilibrium_prices_unrolled(costs, theta, d, ownership, p0, steps: int) -> Array:
    """Prices after ``steps`` plain ζ-markup steps, differentiated by unrolling (to test the implicit rule)."""
    g = zeta_map(costs, theta, d, ownership)
    return jax.lax.fori_loop(0, steps, lambda _, p: g(p), jnp.where(d.mask, p0, d.prices))


def passthrough(p, costs, theta: Theta, d: PriceDemand, ownership) -> Float[Array, "J J"]:
    """∂p_j/∂c_k at the equilibrium p (PyBLP's pass-through): −(∂F/∂p)⁻¹ ∂F/∂c, 0 on padding."""
    A = jax.jacfwd(first_order_conditions)(p, costs, theta, d, ownership)
    B = jax.jacfwd(first_order_conditions, argnums=1)(p, costs, theta, d, ownership)
    out = -jnp.linalg.solve(A, B)
    return jnp.where(_both(d.mask), out, 0.0)


def consumer_surplus(p, theta: Theta, d: PriceDemand, available=None) -> Float[Array, " I"]:
    """Each agent's consumer surplus log(1 + Σ_j exp u_ij)/(−α_i) at prices ``p`` (per capita).

    α_i is agent i's marginal utility of price; it must not vary across products (prices enter
    utility linearly through one coefficient), which the caller checks.
    """
    _, lse = log_probabilities_at(p, theta, d, available)
    a = alpha(theta, d, p)
    first = jnp.argmax(d.mask)
    return lse / -a[:, first]


__all__ = [
    "Ownership",
    "PriceDemand",
    "ShareCosts",
    "cost_values",
    "as_ownership",
    "alpha",
    "consumer_surplus",
    "demand_derivatives",
    "equilibrium_prices",
    "equilibrium_prices_unrolled",
    "first_order_conditions",
    "lambda_gamma",
    "log_probabilities_at",
    "markups",
    "passthrough",
    "share_jacobian",
    "shares_at",
    "utilities",
    "zeta_map",
    "zeta_step",
]
