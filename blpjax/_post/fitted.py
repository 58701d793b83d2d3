"""The estimated model as one JAX value, and every post-estimation output as a pure function of it.

:class:`Fitted` holds θ, β, γ, the mean utilities δ(θ) and the arrays that demand at other prices
needs, batched over T padded markets. Its methods (costs, markups, equilibrium prices after a
merger, shares, profits, HHI, pass-through, consumer surplus) are per-market functions of
:mod:`.._supply.equilibrium` vmapped over markets, with PyBLP's names and padded (T, J) inputs
and outputs. Because δ(θ) and the equilibrium prices carry implicit-function derivatives,
everything is differentiable in the estimates: :meth:`Fitted.at` rebuilds the model at another
parameter vector (θ, β, γ), which is what the delta method differentiates
(:func:`.inference.delta_method`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .._base.errors import BLPSpecificationError
from .._inversion.contraction import ContractionConfig, FixedPoint
from .._inversion.implicit import delta_at_solution, solve_delta
from .._model.market import Market, Theta
from .._model.params import ParameterSpec
from .._model.post import diversion_from, elasticities_from
from .._supply import equilibrium as eq
from .._supply.bertrand import ownership_matrix

DEFAULT_ITERATION = ContractionConfig(method="simple", tol=1e-12, max_evaluations=5000)


def ownership_from_firms(firm_ids: Int[Array, "T J"], mask: Bool[Array, "T J"], kappa=None) -> Float[Array, "T J J"]:
    """O_jk = κ(f_j, f_k) (1 for the same firm, 0 otherwise when ``kappa`` is None), 0 on padding.

    ``kappa``: a dense (F, F) array over firm codes 0..F−1 (partial ownership: the weight firm f puts on
    firm g's profits).
    """
    if kappa is None:
        return jax.vmap(ownership_matrix)(firm_ids, mask)
    both = mask[:, :, None] & mask[:, None, :]
    return jnp.where(both, jnp.asarray(kappa)[firm_ids[:, :, None], firm_ids[:, None, :]], 0.0)


class CostTerms(eqx.Module):
    """X3 stated by a formula that reads shares, batched over T markets: what :meth:`Fitted.compute_prices` needs
    to re-evaluate costs at new shares (PyBLP's ``constant_costs=False``)."""

    inputs: Float[Array, "T J C"]
    terms: object = eqx.field(static=True)
    log: bool = eqx.field(static=True)
    names: tuple = eqx.field(static=True)  # the X3 columns that read shares


class Fitted(eqx.Module):
    """An estimated demand model (and its cost side) as a pure JAX value, batched over T markets.

    Attributes:
        theta: Σ, Π, ρ.
        beta: linear parameters β (one per X1 column).
        gamma: cost parameters γ (empty without a supply side).
        demand: :class:`PriceDemand` of every market (δ at θ; ∂δ/∂p = ∂X1/∂p · β).
        dX1: ∂X1/∂p (T, J, K1).
        firm_ids: firm codes (T, J) of the data.
        shares: observed shares (T, J).
        spec: the free nonlinear parameters (static), for :meth:`at`.
    """

    theta: Theta
    beta: Float[Array, " K1"]
    gamma: Float[Array, " K3"]
    demand: eq.PriceDemand
    dX1: Float[Array, "T J K1"]
    firm_ids: Int[Array, "T J"]
    shares: Float[Array, "T J"]
    spec: ParameterSpec = eqx.field(static=True)

    @classmethod
    def build(
        cls, spec, theta_vector, beta, gamma, delta, market: Market, prices, dX1, dX2, firm_ids, shares, terms=None
    ):
        """``terms``: (X1 Terms, X2 Terms, inputs (T, J, C)) when characteristics are formulas of prices."""
        theta = spec.unpack(theta_vector[: spec.P_theta])
        d_delta = jnp.einsum("tjk,k->tj", dX1, beta)
        if terms is None:
            demand = eq.PriceDemand(market, delta, prices, d_delta, dX2)
        else:
            x1_terms, x2_terms, inputs = terms
            T = prices.shape[0]
            demand = eq.PriceDemand(
                market,
                delta,
                prices,
                d_delta,
                dX2,
                inputs,
                jnp.broadcast_to(beta, (T, *beta.shape)),
                (x1_terms, x2_terms),
            )
        return cls(theta, beta, gamma, demand, dX1, firm_ids, shares, spec)

    # --- the parameter vector (θ free, β, γ), in Results.labels' order ------------------------
    @property
    def x(self) -> Float[Array, " P"]:
        """The estimates as one vector: the free θ, then β, then γ (the order of ``Results.covariances``)."""
        theta_free = _pack(self.spec, self.theta)
        return jnp.concatenate([theta_free, self.beta, self.gamma])

    def at(self, x: Float[Array, " P"], solve: ContractionConfig | None = None) -> Fitted:
        """The model at parameters ``x`` (θ free, β, γ), with δ(θ) carrying its implicit derivative.

        Without ``solve``, δ stays at its solution for the current θ and only its first derivative moves:
        exact for first derivatives at the current parameters (what the delta method needs), cheap, but
        wrong in value at any other θ. With ``solve`` (a :class:`ContractionConfig`), δ(θ) is solved
        again at ``x`` from the current δ (a bootstrap draw, finite differences; :meth:`solved_at` also
        returns the inversion's status).
        """
        if solve is not None:
            return self.solved_at(x, solve)[0]
        theta = self.spec.unpack(x[: self.spec.P_theta])
        d = self.demand
        return self._with(x, jax.vmap(delta_at_solution, in_axes=(None, 0, 0))(theta, d.market, d.delta))

    def solved_at(self, x: Float[Array, " P"], solve: ContractionConfig) -> tuple[Fitted, Int[Array, " T"]]:
        """The model at ``x`` with δ(θ) solved again, and each market's inversion :class:`Status` code."""
        theta = self.spec.unpack(x[: self.spec.P_theta])
        d = self.demand
        out = jax.vmap(solve_delta, in_axes=(None, 0, 0, None))(theta, d.market, d.delta, solve)
        return self._with(x, out.x), out.status

    def _with(self, x, delta) -> Fitted:
        P, K1 = self.spec.P_theta, self.beta.shape[0]
        theta = self.spec.unpack(x[:P])
        beta, gamma = x[P : P + K1], x[P + K1 :]
        d = self.demand
        betas = None if d.beta is None else jnp.broadcast_to(beta, d.beta.shape)
        d_delta = jnp.einsum("tjk,k->tj", self.dX1, beta)
        demand = eq.PriceDemand(d.market, delta, d.prices, d_delta, d.dX2, d.inputs, betas, d.terms)
        return Fitted(theta, beta, gamma, demand, self.dX1, self.firm_ids, self.shares, self.spec)

    # --- batched per-market pieces ------------------------------------------------------------
    @property
    def prices(self) -> Float[Array, "T J"]:
        return self.demand.prices

    @property
    def mask(self) -> Bool[Array, "T J"]:
        return self.demand.market.mask

    def ownership(self, firm_ids=None, kappa=None) -> Float[Array, "T J J"]:
        """Ownership matrices from firm codes (the data's by default), optionally with partial ownership κ."""
        return ownership_from_firms(self.firm_ids if firm_ids is None else firm_ids, self.mask, kappa)

    def _map(self, fn, *args, in_axes=None):
        axes = (None, 0) + (tuple(0 for _ in args) if in_axes is None else in_axes)
        return jax.vmap(fn, in_axes=axes)(self.theta, self.demand, *args)

    def compute_shares(self, prices=None) -> Float[Array, "T J"]:
        """Shares at ``prices`` (observed prices by default), ξ held fixed."""
        p = self.prices if prices is None else prices
        return jax.vmap(eq.shares_at, in_axes=(0, None, 0))(p, self.theta, self.demand)

    def compute_share_jacobian(self, prices=None) -> Float[Array, "T J J"]:
        p = self.prices if prices is None else prices
        return jax.vmap(eq.share_jacobian, in_axes=(0, None, 0))(p, self.theta, self.demand)

    def compute_elasticities(self, prices=None) -> Float[Array, "T J J"]:
        """Price elasticities ∂s_j/∂p_k · p_k/s_j at ``prices`` (observed by default)."""
        p = self.prices if prices is None else prices
        Jm = self.compute_share_jacobian(p)
        return jax.vmap(elasticities_from)(Jm, p, self.compute_shares(p), self.mask)

    def compute_diversion_ratios(self, prices=None) -> Float[Array, "T J J"]:
        """Diversion −(∂s_k/∂p_j)/(∂s_j/∂p_j), to the outside good on the diagonal, at ``prices``."""
        return jax.vmap(diversion_from)(self.compute_share_jacobian(prices), self.mask)

    def compute_share_hessian(self, prices=None) -> Float[Array, "T J J J"]:
        """∂²s_j/∂p_k∂p_l at ``prices`` (observed by default), by forward-over-forward differentiation per market."""
        p = self.prices if prices is None else prices

        def one(q, d):
            return jax.jacfwd(jax.jacfwd(lambda r: eq.shares_at(r, self.theta, d)))(q)

        return jax.vmap(one)(p, self.demand)

    def compute_profit_hessians(self, prices=None, costs=None) -> Float[Array, "T J J J"]:
        """∂²π_j/∂p_k∂p_l with π_j = (p_j − c_j) s_j(p) (PyBLP's), at ``prices`` and ``costs`` (default: observed,
        and recovered from the first-order conditions); second-order conditions of the firms' problem."""
        p = self.prices if prices is None else prices
        c = self.compute_costs() if costs is None else costs

        def one(q, cost, d):
            return jax.jacfwd(jax.jacfwd(lambda r: (r - cost) * eq.shares_at(r, self.theta, d)))(q)

        return jax.vmap(one)(p, c, self.demand)

    def compute_eta(self, ownership=None, prices=None) -> Float[Array, "T J"]:
        """Markups η = p − c rationalising ``prices`` (observed by default) under ``ownership`` (the data's)."""
        O = self.ownership() if ownership is None else ownership
        p = self.prices if prices is None else prices
        return jax.vmap(eq.markups, in_axes=(0, None, 0, 0))(p, self.theta, self.demand, O)

    def compute_costs(self, ownership=None) -> Float[Array, "T J"]:
        """Marginal costs c = p − η from the firms' first-order conditions at the observed prices."""
        return jnp.where(self.mask, self.prices - self.compute_eta(ownership), 0.0)

    def compute_markups(self, prices=None, costs=None) -> Float[Array, "T J"]:
        """Lerner indices (p − c)/p (PyBLP's ``compute_markups``); p − c is :meth:`compute_eta`."""
        p = self.prices if prices is None else prices
        c = self.compute_costs() if costs is None else costs
        return jnp.where(self.mask, (p - c) / jnp.where(self.mask, p, 1.0), 0.0)

    def compute_prices(self, ownership=None, costs=None, prices=None, iteration=None, share_costs=None) -> FixedPoint:
        """Bertrand–Nash prices under ``ownership`` and ``costs`` (defaults: the data's and the recovered
        costs), from starting ``prices`` (observed). Returns a batched :class:`FixedPoint` (prices,
        evaluations and status per market); the prices are differentiable by the implicit function theorem.
        ``share_costs`` (a :class:`CostTerms`): costs move with shares, c(s) = c + (X3(s) − X3(s⁰))γ."""
        O = self.ownership() if ownership is None else ownership
        c = self.compute_costs() if costs is None else costs
        if share_costs is not None:
            T = c.shape[0]
            gamma = jnp.broadcast_to(self.gamma, (T, *self.gamma.shape))
            c = eq.ShareCosts(c, gamma, share_costs.inputs, share_costs.terms, share_costs.log)
        p0 = self.prices if prices is None else prices
        config = DEFAULT_ITERATION if iteration is None else iteration
        return jax.vmap(eq.equilibrium_prices, in_axes=(0, None, 0, 0, 0, None))(
            c, self.theta, self.demand, O, p0, config
        )

    def compute_approximate_prices(self, ownership=None, costs=None) -> Float[Array, "T J"]:
        """PyBLP's approximation: c + η under the new ownership with shares and their derivatives held at the
        observed prices (not a Taylor expansion)."""
        c = self.compute_costs() if costs is None else costs
        return jnp.where(self.mask, c + self.compute_eta(ownership), 0.0)

    def compute_profits(self, prices=None, shares=None, costs=None) -> Float[Array, "T J"]:
        """(p − c) s per product (per unit of market size, as PyBLP)."""
        p = self.prices if prices is None else prices
        s = self.shares if shares is None else shares
        c = self.compute_costs() if costs is None else costs
        return jnp.where(self.mask, (p - c) * s, 0.0)

    def compute_hhi(self, firm_ids=None, shares=None) -> Float[Array, " T"]:
        """10,000 × Σ_f (firm f's share of the inside goods' total)²."""
        f = self.firm_ids if firm_ids is None else firm_ids
        s = jnp.where(self.mask, self.shares if shares is None else shares, 0.0)
        same = (f[:, :, None] == f[:, None, :]) & self.mask[:, :, None] & self.mask[:, None, :]
        firm_share = jnp.einsum("tjk,tk->tj", same.astype(s.dtype), s)  # share of j's firm, per product j
        total = jnp.sum(s, axis=1)
        # Σ_f S_f² = Σ_j s_j S_f(j)
        return 1e4 * jnp.sum(s * firm_share, axis=1) / total**2

    def compute_passthrough(self, ownership=None) -> Float[Array, "T J J"]:
        """∂p_j/∂c_k at the observed prices and recovered costs (the equilibrium of the data)."""
        O = self.ownership() if ownership is None else ownership
        c = self.compute_costs(O)
        return jax.vmap(eq.passthrough, in_axes=(0, 0, None, 0, 0))(self.prices, c, self.theta, self.demand, O)

    def compute_probabilities(self, prices=None) -> Float[Array, "T I J"]:
        """Choice probabilities P_ij of every agent at ``prices`` (observed by default), 0 on padding."""
        p = self.prices if prices is None else prices

        def one(q, d):
            log_p, _ = eq.log_probabilities_at(q, self.theta, d)
            return jnp.where(d.mask[None, :], jnp.exp(log_p), 0.0)

        return jax.vmap(one)(p, self.demand)

    def compute_long_run_diversion_ratios(self) -> Float[Array, "T J J"]:
        """(s_k without j − s_k)/s_j when product j leaves the market; the diagonal is diversion to the outside
        good (PyBLP's long-run diversion ratios), at the observed prices."""

        def one(d):
            J = d.mask.shape[0]
            base = eq.shares_at(d.prices, self.theta, d)

            def without(j):
                gone = eqx.tree_at(lambda x: x.market.mask, d, d.mask & (jnp.arange(J) != j))
                s = eq.shares_at(d.prices, self.theta, gone)
                return (s - base) / jnp.where(d.mask[j], base[j], 1.0)

            R = jax.vmap(without)(jnp.arange(J))  # (j, k)
            eye = jnp.eye(J, dtype=bool)
            outside = 1.0 - jnp.sum(jnp.where(eye, 0.0, R), axis=1)
            R = jnp.where(eye, outside[:, None], R)
            return jnp.where(d.mask[:, None] & d.mask[None, :], R, 0.0)

        return jax.vmap(one)(self.demand)

    def compute_consumer_surpluses(self, prices=None, eliminate=None, keep_all: bool = False):
        """Consumer surplus per market (Σ_i w_i CS_i), or per agent with ``keep_all``, at ``prices``;
        ``eliminate`` (T, J) removes products from every choice set."""
        p = self.prices if prices is None else prices
        avail = jnp.ones_like(self.mask) if eliminate is None else ~eliminate
        cs = jax.vmap(eq.consumer_surplus, in_axes=(0, None, 0, 0))(p, self.theta, self.demand, avail)
        if keep_all:
            return cs
        return jnp.sum(self.demand.market.weights * cs, axis=1)


def _pack(spec: ParameterSpec, theta: Theta):
    parts = [theta.sigma[r, c] for r, c in spec.sigma_free]
    parts += [theta.pi[r, c] for r, c in spec.pi_free]
    parts += [theta.rho[h] for h in spec.rho_free]
    return jnp.stack(parts) if parts else jnp.zeros(0)


def check_linear_prices(fitted: Fitted) -> None:
    """Consumer surplus needs one marginal utility of price per agent (host check)."""
    import numpy as np

    a = np.asarray(jax.vmap(eq.alpha, in_axes=(None, 0))(fitted.theta, fitted.demand))
    mask = np.asarray(fitted.mask)
    spread = np.where(mask[:, None, :], a, np.nan)
    if np.any(np.nanmax(spread, axis=2) - np.nanmin(spread, axis=2) > 1e-12 * (1 + np.nanmax(np.abs(spread)))):
        raise BLPSpecificationError(
            "consumer surplus as a log-sum divided by the marginal utility of price needs that marginal utility to "
            "be the same for every product (prices entering utility linearly through one coefficient); here it "
            "varies across products (prices interacted with product characteristics), so the log-sum formula is "
            "not consumer surplus."
        )
