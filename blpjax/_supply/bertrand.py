"""The supply side: Bertrand–Nash markups, marginal costs and the cost moments E[ω·z_S] = 0.

Firms set prices to maximise profits given the demand model, so in every market

    p − c = η,   η = Δ⁻¹ s,   Δ = −O ⊙ (∂s/∂p)ᵀ,

with O the ownership matrix (O_jk = 1 when j and k belong to the same firm) and ∂s/∂p the
Jacobian of the model's shares in prices. Marginal costs c = p − η are modelled as
f(c) = X₃γ + ω with f the identity (``costs_type="linear"``) or the logarithm (``"log"``), and
the supply moments are E[ω·z_S] = 0. γ is concentrated out jointly with β (stacked IV).

Everything here is written for one market and vmapped; η depends on θ and on δ(θ), and its
derivatives come from autodiff through the implicit δ(θ) (no hand-written η-by-θ Jacobian).
How prices enter utility is data: ``dX2`` holds ∂X2/∂p for every X2 column (1 for ``prices``,
−1 for a column holding −prices, a characteristic for an interaction, ...), so
∂u_ij/∂p_j = dX2_j·(Σν_i + Πd_i) + dX1_j·β. Prices enter X1 under a supply side only through linear
parameters that are not concentrated out (``Theta.linear``: fixed, or optimised with θ; the front
checks it), since markups depend on them.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .._model.shares import NEG_INF, FactoredMarket, apply_coefficients, shares

COSTS_TYPES = ("linear", "log")


class SupplyMarket(eqx.Module):
    """One market's supply-side data (fields gain a leading T axis when batched)."""

    prices: Float[Array, " J"]
    firm_ids: Int[Array, " J"]
    dX2: Float[Array, "J K2"]  # ∂X2/∂p
    firms: Bool[Array, "J F"]  # firms[j, f]: product j belongs to the market's f-th firm (no firm on padding)
    dX1: Float[Array, "J K1"] | None = None  # ∂X1/∂p when some X1 column moves with prices
    # every product of a market has the same row of dX2 (prices or −prices in X2, no interaction with a
    # characteristic; all rows, padding included, hold it): ∂u_ij/∂p_j is one slope per agent
    uniform_dX2: bool = eqx.field(static=True, default=False)


class SupplySetup(eqx.Module):
    """θ-independent supply arrays of one problem (batched over T) and its static options."""

    market: SupplyMarket
    X3: Float[Array, "T J K3"]  # 0 on padding
    ZS: Float[Array, "T J MS"]  # 0 on padding
    ZX3: Float[Array, "MS K3"]  # Z_S'X3/N
    costs_type: str = eqx.field(static=True)
    costs_bounds: tuple[float, float] = eqx.field(static=True, default=(-jnp.inf, jnp.inf))
    # fixed effects absorbed from the cost equation: X3 and Z_S above are absorbed within them, f(c) is absorbed in
    # the statistics (Z̃_S'f(c) = Z_S'M f(c), so the moments need no absorption per θ)
    fe_ids: Int[Array, "T J FS"] | None = None
    fe_sizes: tuple[int, ...] = eqx.field(static=True, default=())

    @property
    def MS(self) -> int:
        return self.ZS.shape[-1]

    @property
    def K3(self) -> int:
        return self.X3.shape[-1]


def build_supply_setup(products, arrays: dict, costs_type: str) -> SupplySetup:
    """:class:`SupplySetup` from :class:`._markets.Products` and the padded arrays of the data front."""
    mask = products.mask[..., None]
    X3 = jnp.where(mask, jnp.asarray(arrays["X3"]), 0.0)
    ZS = jnp.where(mask, jnp.asarray(arrays["ZS"]), 0.0)
    dX2, uniform = _uniform_rows(arrays["dX2"], products.mask)
    market = SupplyMarket(
        products.prices,
        products.firm_ids,
        jnp.asarray(dX2),
        firm_membership(products.firm_ids, products.mask),
        None if arrays.get("dX1") is None else jnp.asarray(arrays["dX1"]),
        uniform,
    )
    ZX3 = jnp.einsum("tjm,tjk->mk", ZS, X3) / products.n_products
    sizes = tuple(arrays.get("fe_sizes", ()))
    fe_ids = jnp.asarray(arrays["fe_ids"]) if sizes else None
    return SupplySetup(market, X3, ZS, ZX3, costs_type, fe_ids=fe_ids, fe_sizes=sizes)


def _uniform_rows(dX2, mask) -> tuple[np.ndarray, bool]:
    """(dX2 with each market's rows, padding included, set to the row its products share, True) when ∂X2/∂p is the
    same for all of a market's products, else (dX2, False) (host side)."""
    d, keep = np.asarray(dX2), np.asarray(mask, bool)
    if d.shape[-1] == 0 or not keep.any(axis=1).all():
        return d, False
    rows = d[np.arange(d.shape[0]), keep.argmax(axis=1)]  # each market's first product's row, (T, K2)
    if not np.all((d == rows[:, None, :]) | ~keep[..., None]):
        return d, False
    return np.ascontiguousarray(np.broadcast_to(rows[:, None, :], d.shape)), True


def firm_membership(firm_ids, mask) -> Bool[Array, "T J F"]:
    """Each market's products by firm (host side): F is the most firms in any market.

    The ownership matrix of a market is O = B Bᵀ with B its (J, F) membership; the markup
    derivatives multiply by O through B (2·J·F instead of J² per agent) when firms are few.
    """
    ids, keep = np.asarray(firm_ids, np.int64), np.asarray(mask, bool)
    T = ids.shape[0]
    t = np.broadcast_to(np.arange(T)[:, None], ids.shape)
    pairs, inverse = np.unique(np.stack([t[keep], ids[keep]], axis=1), axis=0, return_inverse=True)
    first = np.searchsorted(pairs[:, 0], np.arange(T))  # each market's first (market, firm) pair
    codes = np.zeros(ids.shape, np.int64)
    codes[keep] = np.arange(len(pairs))[inverse.ravel()] - first[pairs[inverse.ravel(), 0]]
    F = max(1, int(codes.max()) + 1 if keep.any() else 1)
    out = (codes[..., None] == np.arange(F)) & keep[..., None]
    return jnp.asarray(out)


def utility_price_derivatives(theta, market, supply: SupplyMarket, transposed: bool = False) -> Float[Array, "I J"]:
    """∂u_ij/∂p_j = dX2_j·(Σν_i + Πd_i) + dX1_j·β (β: the linear parameters that are not concentrated out);
    ``transposed``: (J, I), products by agents."""
    from .._model.market import market_coefficients

    coefficients = market_coefficients(theta, market)
    if supply.uniform_dX2 and coefficients.ndim == 2:
        # one slope per agent, broadcast over products: no I × J × K2 product, and XLA fuses the broadcast into
        # its consumers instead of storing an (I, J) array (Petrin's vg call ≈ 10% faster)
        slope = coefficients @ supply.dX2[0]
        J, I = supply.dX2.shape[0], slope.shape[0]
        out = jnp.broadcast_to(slope[None, :], (J, I)) if transposed else jnp.broadcast_to(slope[:, None], (I, J))
    else:
        out = apply_coefficients(coefficients, supply.dX2, transposed)
    if supply.dX1 is not None and theta.linear is not None:
        linear = supply.dX1 @ theta.linear[: supply.dX1.shape[-1]]
        out = out + (linear[:, None] if transposed else linear[None, :])
    return out


def _scaled_price_derivatives(theta, market, supply: SupplyMarket, transposed: bool = False) -> Float[Array, "I J"]:
    """∂(u_ij/λ)/∂p_j, 0 on padded products: what the closed-form share derivatives multiply the probabilities by
    (``transposed``: (J, I))."""
    a = utility_price_derivatives(theta, market, supply, transposed) / market.epsilon_scale
    return jnp.where(market.mask[:, None] if transposed else market.mask[None, :], a, 0.0)


def share_price_jacobian(delta, theta, market, supply: SupplyMarket) -> Float[Array, "J J"]:
    """∂s_j/∂p_k of one market (zero rows/columns on padded products)."""
    from .._model.market import market_mu

    mask = market.mask
    mu_ = market_mu(theta, market)
    if not theta.nested:
        P = FactoredMarket.build(mu_, market.weights, mask, market.epsilon_scale).probabilities(delta)  # (I, J)
        a = _scaled_price_derivatives(theta, market, supply)
        wP = market.weights[:, None] * P
        # ∂s_j/∂p_k = Σ_i w_i P_ij (1{j=k} − P_ik) a_ik
        jac = jnp.diag(jnp.sum(wP * a, axis=0)) - wP.T @ (P * a)
    else:
        rho = theta.rho
        a = jnp.where(mask[None, :], utility_price_derivatives(theta, market, supply), 0.0)

        def shifted(x):  # shares when u_ij moves by x_j a_ij
            return shares(delta, mu_ + x[None, :] * a, market.weights, mask, market.nest_ids, rho, market.epsilon_scale)

        jac = jax.jacfwd(shifted)(jnp.zeros_like(delta))
    both = mask[:, None] & mask[None, :]
    return jnp.where(both, jac, 0.0)


def model_shares(delta, theta, market) -> Float[Array, " J"]:
    from .._model.market import market_mu

    rho = theta.rho if theta.nested else None
    mu_ = market_mu(theta, market)
    return shares(delta, mu_, market.weights, market.mask, market.nest_ids, rho, market.epsilon_scale)


def markups(delta, theta, market, supply: SupplyMarket, ownership=None, P=None) -> Float[Array, " J"]:
    """η = Δ⁻¹ s with Δ = −O ⊙ (∂s/∂p)ᵀ (0 on padded products).

    Without nesting and with the data's ownership this goes through :func:`_bertrand_markups`
    (derivatives in O(J·I) per tangent); nested models or another ``ownership`` (counterfactual
    mergers) form Δ's derivatives by plain autodiff of the dense J×J Jacobian. ``P``: the choice
    probabilities at δ products by agents, (J, I), when the caller has them.
    """
    mask = market.mask
    if ownership is None and not theta.nested:
        from .._model.market import market_factored

        if P is None:
            P = market_factored(theta, market).probabilities_t(delta)
        a = _scaled_price_derivatives(theta, market, supply, transposed=True)
        return _bertrand_markups(P, a, market.weights, supply.firms, mask)
    J = delta.shape[0]
    if ownership is None:
        ownership = ownership_matrix(supply.firm_ids, mask)
    jac = share_price_jacobian(delta, theta, market, supply)
    capital_delta = -ownership * jac.T
    capital_delta = jnp.where(mask[:, None] & mask[None, :], capital_delta, jnp.eye(J, dtype=delta.dtype))
    s = jnp.where(mask, model_shares(delta, theta, market), 0.0)
    return jnp.where(mask, jnp.linalg.solve(capital_delta, s), 0.0)


def _own(X, B):
    """O X with O = B Bᵀ the (symmetric) ownership matrix and X products by agents: Σ_k O_jk X_ki, through B when
    firms are few."""
    if 2 * B.shape[1] < B.shape[0]:
        return B @ (B.T @ X)
    return (B @ B.T) @ X


def _bertrand_parts(P, a, w, firms, mask):
    """Δ (identity on padding) and s of one market from probabilities P and ∂u/∂p = a (both products by agents,
    (J, I)), with the products P ⊙ w and P ⊙ a they are built from.

    ∂s_j/∂p_k = Λ_j 1{j=k} − Γ_jk with Λ = Σ_i w_i P_ji a_ji and Γ_jk = Σ_i w_i P_ji P_ki a_ki, so
    Δ = −O ⊙ (∂s/∂p)ᵀ = O ⊙ Γᵀ − diag(Λ). Γᵀ is one transposed (NT) product of two (J, I) arrays.
    """
    B = firms.astype(P.dtype)
    both = mask[:, None] & mask[None, :]
    wP = P * w[None, :]
    Pa = P * a
    lam = Pa @ w
    capital_delta = (B @ B.T) * (Pa @ wP.T) - jnp.diag(lam)
    capital_delta = jnp.where(both, capital_delta, jnp.eye(P.shape[0], dtype=P.dtype))
    s = jnp.where(mask, P @ w, 0.0)
    return capital_delta, s, wP, Pa


@eqx.filter_custom_jvp
def _bertrand_markups(P, a, w, firms, mask):
    """η = Δ⁻¹ s (see :func:`_bertrand_parts`; P and a products by agents, (J, I)), with a JVP rule that never forms
    dΔ.

    dη = Δ⁻¹ (ds − dΔ η), and (dΔ η)_j = Σ_k O_jk dΓ_kj η_k − dΛ_j η_j only needs, per agent,
    sums over the products of j's firm: (dΔ η)_j = Σ_i [Pa ⊙ O(d(wP) η) + d(Pa) ⊙ O(wP η) − η ⊙ d(wPa)]_ji.
    That is O(J·I·F) per tangent against O(J²·I) for autodiff through Γ, and reverse mode
    transposes it (with Δ's LU factors reused for Δᵀ).
    """
    capital_delta, s, _, _ = _bertrand_parts(P, a, w, firms, mask)
    return jnp.where(mask, jnp.linalg.solve(capital_delta, s), 0.0)


@_bertrand_markups.def_jvp
def _bertrand_markups_jvp(primals, tangents):
    P, a, w, firms, mask = primals
    dP, da, dw = (jnp.zeros_like(x) if t is None else t for x, t in zip((P, a, w), tangents[:3], strict=True))
    capital_delta, s, wP, Pa = _bertrand_parts(P, a, w, firms, mask)
    # Δ is not symmetric: the transpose solve reuses the LU factors (trans=1); the matvec uses the
    # undetached Δ, so that higher derivatives (the Hessian) differentiate through both solves
    lu = jax.scipy.linalg.lu_factor(jax.lax.stop_gradient(capital_delta))

    def solve(r):
        return jax.lax.custom_linear_solve(
            lambda v: capital_delta @ v,
            r,
            lambda _, b: jax.scipy.linalg.lu_solve(lu, b),
            lambda _, b: jax.scipy.linalg.lu_solve(lu, b, trans=1),
        )

    eta = jnp.where(mask, solve(s), 0.0)
    B = firms.astype(P.dtype)
    d_wP = P * dw[None, :] + dP * w[None, :]
    d_Pa = dP * a + P * da
    d_wPa = Pa * dw[None, :] + d_Pa * w[None, :]
    R = _own(wP * eta[:, None], B)
    dR = _own(d_wP * eta[:, None], B)
    rhs = jnp.where(mask, jnp.sum(d_wP - Pa * dR - d_Pa * R + d_wPa * eta[:, None], axis=1), 0.0)
    t_eta = solve(rhs)
    return eta, jnp.where(mask, t_eta, 0.0)


def ownership_matrix(firm_ids: Int[Array, " J"], mask: Bool[Array, " J"]) -> Float[Array, "J J"]:
    same = (firm_ids[:, None] == firm_ids[None, :]) & mask[:, None] & mask[None, :]
    return same.astype(jnp.float64)


class Costs(eqx.Module):
    """Marginal costs of one market and what the cost equation needs."""

    eta: Float[Array, " J"]
    costs: Float[Array, " J"]  # after clipping to costs_bounds
    transformed: Float[Array, " J"]  # f(c): c or log c (0 on padding)
    clipped: Int[Array, ""]  # how many costs were clipped to the bounds
    nonpositive: Int[Array, ""]  # log costs: how many costs were ≤ 0 (the moments are then NaN)


def market_costs(delta, theta, market, supply: SupplyMarket, costs_type: str, bounds, P=None) -> Costs:
    """c = p − η, clipped to ``bounds``, and f(c) (``P``: the probabilities products by agents, (J, I), if at hand)."""
    mask = market.mask
    eta = markups(delta, theta, market, supply, P=P)
    raw = supply.prices - eta
    lo, hi = bounds
    c = jnp.clip(raw, lo, hi)
    clipped = jnp.sum(mask & (c != raw))
    if costs_type == "log":
        nonpositive = jnp.sum(mask & (c <= 0))
        transformed = jnp.where(mask, jnp.log(jnp.where(mask, c, 1.0)), 0.0)
    else:
        nonpositive = jnp.zeros((), jnp.int32).astype(clipped.dtype)
        transformed = jnp.where(mask, c, 0.0)
    return Costs(jnp.where(mask, eta, 0.0), jnp.where(mask, c, 0.0), transformed, clipped, nonpositive)


def all_costs(delta, theta, setup, P=None) -> Costs:
    """:func:`market_costs` vmapped over markets (``setup`` is an :class:`._objective.Setup` with supply).

    ``P``: the (T, J, I) choice probabilities (products by agents) at δ when the caller has them (shared with the
    micro moments).
    """
    sup = setup.supply
    return jax.vmap(market_costs, in_axes=(0, None, 0, 0, None, None, 0 if P is not None else None))(
        delta, theta, setup.market, sup.market, sup.costs_type, sup.costs_bounds, P
    )


def supply_moments(transformed: Float[Array, "T J"], setup) -> Float[Array, " MS"]:
    """Z_S'f(c)/N (γ is concentrated out afterwards, jointly with β)."""
    sup = setup.supply
    return jnp.einsum("tjm,tj->m", sup.ZS, jnp.where(setup.mask, transformed, 0.0)) / setup.N


__all__ = [
    "COSTS_TYPES",
    "Costs",
    "NEG_INF",
    "SupplyMarket",
    "SupplySetup",
    "all_costs",
    "market_costs",
    "markups",
    "ownership_matrix",
    "share_price_jacobian",
    "supply_moments",
]
