"""Choice probabilities and market shares for one market (logit, nested logit, BLP, RCNL).

Utility u_ij = δ_j + μ_ij + λε_ij with μ_ij = Σ_k x_jk (Σν_i + Πd_i)_k and λ the scale of the logit error
(PyBLP's ``epsilon_scale``, 1 by default): choice probabilities are those of (δ + μ)/λ. Plain and nested logit are
the special case of one agent with μ = 0. Everything here is written for a single market and is
batched with ``jax.vmap``; padded products (``mask == False``) get exactly zero probability and
padded agents carry zero weight.

Two evaluations of the same maths live here:
- :func:`log_probabilities`, log-space and overflow-safe for every model (the reference, used
  for derivatives and post-estimation), and
- :class:`FactoredMarket`, for models without nesting: exp(μ) is computed once per parameter
  vector, so each contraction step costs two matrix-vector products and J exponentials.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

NEG_INF = -jnp.inf


def random_coefficients(
    sigma: Float[Array, "K2 K2"],
    pi: Float[Array, "K2 D"],
    nodes: Float[Array, "I K2"],
    demographics: Float[Array, "I D"],
    rc_types: tuple[str, ...] = (),
    product_demographics: Float[Array, "I J D"] | None = None,
) -> Float[Array, "I K2"] | Float[Array, "I J K2"]:
    """Agent-specific deviations from mean tastes, Σν_i + Πd_i, one row per agent (per agent and product, (I, J, K2),
    when demographics are product-specific: Σν_i + Πd_ij); a column whose ``rc_types`` entry is ``"log"`` is
    exponentiated (a log-normal coefficient: its mean is a Π entry on a constant demographic) and ``"logit"`` passed
    through the logistic function, as PyBLP's ``rc_types``."""
    if product_demographics is None:
        coefficients = _thin_product(nodes, sigma.T) + _thin_product(demographics, pi.T)
    else:
        coefficients = _thin_product(nodes, sigma.T)[:, None, :] + product_demographics @ pi.T
    if not any(t != "linear" for t in rc_types):
        return coefficients
    columns = [
        jnp.exp(c) if t == "log" else jax.nn.sigmoid(c) if t == "logit" else c
        for c, t in zip(jnp.moveaxis(coefficients, -1, 0), rc_types, strict=True)
    ]
    return jnp.stack(columns, axis=-1)


def _thin_product(a: Float[Array, "I k"], b: Float[Array, "k n"]) -> Float[Array, "I n"]:
    """a @ b; as a broadcast sum of k outer products when k ≤ ``BROADCAST_K2`` (μ = c Xᵀ, and the coefficients
    Σν + Πd themselves: XLA's CPU dot of a (94,000, 2) array by a 2 × 2 matrix took 1.1 ms in Mixtape's value and
    gradient, and its forward-mode tangents 1.9 ms more; an elementwise sum fuses with what reads it)."""
    k = a.shape[-1]
    if k == 0 or k > BROADCAST_K2:
        return a @ b
    return sum(a[..., i : i + 1] * b[i : i + 1] for i in range(k))


#: μ from at most this many random coefficients is formed as a broadcast sum of K2 products (fused with what reads
#: it); more as a matrix product. A dot contracting two or three columns is 2–2.5× slower than the broadcast on CPU
#: (Mixtape's 94 × 24 × 1,000 μ with K2 = 2: 3.4 against 8.4 ms), while from K2 ≈ 5 the dot wins (the autos' K2 = 5:
#: 1.1 against 1.3 ms; Petrin's K2 = 10: 4.8 against 6.9 ms); Intel Xeon, 2 cores, 2026-12-02
BROADCAST_K2 = 3


def apply_coefficients(coefficients, X: Float[Array, "J K2"], transposed: bool = False) -> Float[Array, "I J"]:
    """Σ_k X_jk c_ik (or c_ijk with product-specific demographics), (I, J); ``transposed``: (J, I), products by
    agents, the layout of the share evaluations (a sum over products reduces along rows of contiguous agents, which
    vectorises; (I, J) rows of J ≈ 20 do not)."""
    if coefficients.ndim == 3:
        return jnp.einsum("ijk,jk->ji" if transposed else "ijk,jk->ij", coefficients, X)
    return _thin_product(X, coefficients.T) if transposed else _thin_product(coefficients, X.T)


def mu(
    X2: Float[Array, "J K2"],
    sigma: Float[Array, "K2 K2"],
    pi: Float[Array, "K2 D"],
    nodes: Float[Array, "I K2"],
    demographics: Float[Array, "I D"],
    rc_types: tuple[str, ...] = (),
    product_demographics: Float[Array, "I J D"] | None = None,
) -> Float[Array, "I J"]:
    """Agent-specific utility μ_ij = x_j'(Σν_i + Πd_i) (each coefficient transformed as ``rc_types`` says)."""
    return apply_coefficients(random_coefficients(sigma, pi, nodes, demographics, rc_types, product_demographics), X2)


def log_probabilities(
    delta: Float[Array, " J"],
    mu_: Float[Array, "I J"],
    mask: Bool[Array, " J"],
    nest_ids: Int[Array, " J"] | None = None,
    rho: Float[Array, " H"] | None = None,
) -> Float[Array, "I J"]:
    """log P_ij, overflow safe, with the outside good's utility normalised to zero.

    With ``nest_ids``/``rho`` the model is (random-coefficients) nested logit: products in nest h
    share the correlation ρ_h; the outside good is alone in its own nest.
    """
    return choice(delta, mu_, mask, nest_ids, rho)[0]


def choice(
    delta, mu_, mask, nest_ids=None, rho=None, scale: float = 1.0
) -> tuple[Float[Array, "I J"], Float[Array, " I"]]:
    """(log P_ij, log(1 + Σ_h exp(IV_ih))): probabilities and each agent's expected max utility (in units of the
    error's scale λ: ``scale``, static)."""
    v = delta[None, :] + mu_
    u = jnp.where(mask[None, :], v if scale == 1.0 else v / scale, NEG_INF)
    if rho is None or nest_ids is None:
        lse = jnp.logaddexp(0.0, jax.nn.logsumexp(u, axis=1))
        return u - lse[:, None], lse
    H = rho.shape[0]
    scale = 1.0 - rho[nest_ids]  # (J,)
    # divide finite utilities only: -inf/scale would give NaN derivatives with respect to ρ
    v = jnp.where(mask[None, :], jnp.where(mask[None, :], u, 0.0) / scale[None, :], NEG_INF)
    member = (nest_ids[:, None] == jnp.arange(H)[None, :]) & mask[:, None]  # (J, H)
    # inclusive values IV_ih = log Σ_{j∈h} exp(v_ij)
    nonempty = jnp.any(member, axis=0)  # (H,)
    # empty nests (possible in padded markets) get a finite dummy so that gradients stay finite
    v_in = jnp.where(member[None, :, :], v[:, :, None], NEG_INF)
    iv = jax.nn.logsumexp(jnp.where(nonempty[None, None, :], v_in, 0.0), axis=1)  # (I, H)
    nest_utility = jnp.where(nonempty[None, :], (1.0 - rho)[None, :] * iv, NEG_INF)
    lse = jnp.logaddexp(0.0, jax.nn.logsumexp(nest_utility, axis=1))  # (I,)
    log_p_nest = nest_utility - lse[:, None]
    log_p = log_p_nest[:, nest_ids] + v - iv[:, nest_ids]
    return jnp.where(mask[None, :], log_p, NEG_INF), lse


def log_shares(
    delta: Float[Array, " J"],
    mu_: Float[Array, "I J"],
    weights: Float[Array, " I"],
    mask: Bool[Array, " J"],
    nest_ids: Int[Array, " J"] | None = None,
    rho: Float[Array, " H"] | None = None,
    scale: float = 1.0,
) -> Float[Array, " J"]:
    """log s_j = log Σ_i w_i P_ij (0 on padded products, so that it can be subtracted safely)."""
    log_p = choice(delta, mu_, mask, nest_ids, rho, scale)[0]
    # padded products get a finite dummy (their -inf would poison gradients); padded agents have
    # zero weight. The sum is linear so that rules with negative weights (sparse grids) work.
    ls = jnp.log(weights @ jnp.exp(jnp.where(mask[None, :], log_p, 0.0)))
    return jnp.where(mask, ls, 0.0)


def shares(delta, mu_, weights, mask, nest_ids=None, rho=None, scale: float = 1.0) -> Float[Array, " J"]:
    """s_j = Σ_i w_i P_ij (exactly 0 on padded products)."""
    return jnp.where(mask, jnp.exp(log_shares(delta, mu_, weights, mask, nest_ids, rho, scale)), 0.0)


#: column sums over at most this many products are broadcast reductions, more are dots (measured cliff: at J = 24
#: or 32 the broadcast is 1.5–4× faster than XLA's CPU dot, at J = 48 and beyond 3–9× slower; Intel, 2 cores)
BROADCAST_SUM_J = 32


def column_sums(E: Float[Array, "J I"], A: Float[Array, "J K"]) -> Float[Array, "I K"]:
    """Eᵀ A (Σ_j E_ji A_jk) for a few columns K: over few products a broadcast product summed over the leading axis
    (contiguous rows, which vectorises, where XLA's CPU dot does not: Mixtape's 24 products, Eᵀv 0.6 against
    0.8 ms and Eᵀ with three columns 0.8 against 3.3 ms), over many a dot (the autos' 150: 0.3 against 0.6 ms)."""
    if E.shape[0] <= BROADCAST_SUM_J:
        return jnp.sum(E[:, :, None] * A[:, None, :], axis=0)
    return E.T @ A


class FactoredMarket(eqx.Module):
    """exp(μ) of one market, computed once per θ, for fast non-nested share evaluations.

    With m_i = max(0, max_j μ_ij) and c = max_j δ_j,
    s_j = e^{δ_j-c} Σ_i w_i E_ji / (e^{-m_i-c} + Σ_k E_ki e^{δ_k-c}),  E_ji = e^{μ_ij-m_i},
    in which no exponential can overflow. With an error scale λ ≠ 1, δ and μ are divided by λ first.
    E is stored products by agents, (J, I) (see :func:`apply_coefficients`).
    """

    E: Float[Array, "J I"]
    m: Float[Array, " I"]
    weights: Float[Array, " I"]
    mask: Bool[Array, " J"]
    scale: float = eqx.field(static=True, default=1.0)

    @classmethod
    def build(cls, mu_, weights, mask, scale: float = 1.0) -> FactoredMarket:
        """From μ as (I, J)."""
        return cls.build_t(mu_.T, weights, mask, scale)

    @classmethod
    def build_t(cls, mu_t: Float[Array, "J I"], weights, mask, scale: float = 1.0) -> FactoredMarket:
        """From μ transposed, (J, I)."""
        mu_t = jnp.where(mask[:, None], mu_t if scale == 1.0 else mu_t / scale, NEG_INF)
        # m (and c below) only shift exponents: every quantity formed from E, m and c is invariant to them, so they
        # are constants to autodiff. A maximum's derivative would divide by the count of entries equal to it, and
        # an XLA fusion that recomputes μ with other rounding (LLVM level 0) made that count 0 and the tangent NaN
        m = jax.lax.stop_gradient(jnp.maximum(jnp.max(mu_t, axis=0), 0.0))
        return cls(jnp.exp(mu_t - m[None, :]), m, weights, mask, scale)

    def scaled(self, delta):
        """δ/λ: mean utilities in units of the error's scale."""
        return delta if self.scale == 1.0 else delta / self.scale

    def shifted_exp(self, delta):
        """(c, e): c = max_j δ_j/λ (0 in a market without products, so that everything below stays finite) and
        e_j = exp(δ_j/λ − c), 0 on padding."""
        delta = self.scaled(delta)
        c = jax.lax.stop_gradient(jnp.where(jnp.any(self.mask), jnp.max(jnp.where(self.mask, delta, NEG_INF)), 0.0))
        return c, jnp.where(self.mask, jnp.exp(delta - c), 0.0)

    def _terms(self, delta):
        c, e = self.shifted_exp(delta)
        denominators = jnp.exp(-self.m - c) + column_sums(self.E, e[:, None])[:, 0]  # (I,)
        return c, e, denominators

    def log_shares_shifted(self, delta):
        """Returns (c, log Σ_i w_i E_ji / den_i); log s_j is δ_j - c plus the second term."""
        c, _, denominators = self._terms(delta)
        inner = self.E @ (self.weights / denominators)
        return c, jnp.log(jnp.maximum(inner, 1e-300))

    def log_shares(self, delta):
        c, log_inner = self.log_shares_shifted(delta)
        return jnp.where(self.mask, self.scaled(delta) - c + log_inner, 0.0)

    def probabilities_t(self, delta) -> Float[Array, "J I"]:
        """P transposed, (J, I) (0 on padded products)."""
        return self.choices_t(delta)[0]

    def probabilities(self, delta) -> Float[Array, "I J"]:
        return self.probabilities_t(delta).T

    def choices_t(self, delta) -> tuple[Float[Array, "J I"], Float[Array, " I"]]:
        """(Pᵀ, P0): the inside probabilities products by agents, (J, I) (0 on padded products), and the outside
        good's, P0_i = e^{-m_i-c} / den_i."""
        c, e, denominators = self._terms(delta)
        return self.E * e[:, None] / denominators[None, :], jnp.exp(-self.m - c) / denominators
