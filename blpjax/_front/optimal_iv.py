"""Approximate optimal instruments (Chamberlain 1987; Reynaert & Verboven 2014), as PyBLP builds them.

PyBLP's ``ProblemResults.compute_optimal_instruments(method='approximate')`` followed by
``OptimalInstrumentResults.to_problem()``, for the demand side:

1. Expected prices p̂ = E[p | Z]: by default the fitted values of the reduced-form regression of
   prices on all demand instruments Z_D (exogenous X1 columns and excluded instruments), both with
   the absorbed fixed effects partialled out and the prices' fixed-effect part added back:
   p̂ = Z̃ (Z̃'Z̃)⁻¹Z̃'p̃ + (p − p̃).
2. ξ set to its expectation 0: δ̂ = δ − ξ + β_p (p̂ − p) = X1(p̂)β + fixed effects, and X2 evaluated
   at p̂; the shares ŝ = s(δ̂, θ̂) those imply.
3. E[∂ξ/∂θ | Z] ≈ ∂δ/∂θ at (ŝ, p̂, θ̂), by the implicit function theorem (blpjax's IFT rule through
   :func:`._engine.deltas_at_solution`, forward mode, one column per free nonlinear parameter
   in the order of ``results.spec.labels``). As in PyBLP, this Jacobian is *not* demeaned by the
   absorbed fixed effects (the new problem absorbs them from its instruments).
4. Z_D^opt = Var(ξ̂)⁻¹ E[∂ξ/∂θ | Z] (``np.var`` of the estimated ξ, PyBLP's normalisation).

The excluded instruments of the new problem are [Z_D^opt, X1 endogenous columns at p̂] (β is
always concentrated out in blpjax, so no column of Z_D^opt is dropped; the optimal instrument for
β_p is the prices column evaluated at p̂, E[−∂ξ/∂α] up to sign); the new Problem adds the exogenous
X1 columns itself, as PyBLP's ``OptimalInstrumentProblem`` does.

Not covered: the supply side (PyBLP's Z_S^opt and the joint (ξ, ω) normalisation; expected prices
from the markup equation), the ``'normal'``/``'empirical'`` integration methods, and columns other
than ``prices`` that depend on prices.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._base.config import jit
from .._base.errors import BLPSpecificationError
from .._engine.pieces import deltas_at_solution
from .._engine.setup import absorb_columns
from .._model.market import market_log_shares

if TYPE_CHECKING:
    from .._model.params import ParameterSpec

__all__ = ["OptimalInstruments", "compute_optimal_instruments", "expected_prices_reduced_form"]


# --- numerics (padded arrays) --------------------------------------------------------------------
def expected_prices_reduced_form(setup, prices):
    """Fitted values of absorbed prices on the absorbed demand instruments, plus the prices' fixed effects.

    Args:
        setup: the problem's :class:`._objective.Setup` (absorbed instruments ``Z``).
        prices: (T, J) prices, 0 on padding.

    Returns:
        (T, J) expected prices, 0 on padding.
    """
    mask = setup.mask
    p_abs = absorb_columns(prices[..., None], setup.fe_ids, mask, setup.fe_sizes)[..., 0]
    Z = setup.Z.reshape(-1, setup.Z.shape[-1])
    coef = jnp.linalg.lstsq(Z, p_abs.reshape(-1))[0]
    fitted = (Z @ coef).reshape(prices.shape)
    return jnp.where(mask, fitted + prices - p_abs, 0.0)


@partial(jit, once=True, inline=True, static_argnums=(0, 1))
def _approximate_jacobian(spec: ParameterSpec, price_column: int, x, delta_hat, prices_hat, setup):
    """Expected shares at (δ̂, X2(p̂), θ̂) and ∂δ/∂θ there (T, J, P), by the IFT."""
    theta = spec.unpack(x)
    market = setup.market
    if price_column >= 0:
        market = eqx.tree_at(lambda m: m.X2, market, market.X2.at[..., price_column].set(prices_hat))
    log_s = jax.vmap(market_log_shares, in_axes=(0, None, 0))(delta_hat, theta, market)
    log_s = jnp.where(setup.mask, log_s, 0.0)
    shares = jnp.where(setup.mask, jnp.exp(log_s), 0.0)
    market = eqx.tree_at(lambda m: m.log_shares, market, log_s)
    setup_hat = eqx.tree_at(lambda s: (s.market, s.shares), setup, (market, shares))
    jac = jax.jacfwd(lambda y: deltas_at_solution(spec.unpack(y), setup_hat, delta_hat))(x)
    return shares, jnp.where(setup.mask[..., None], jac, 0.0)


# --- front ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OptimalInstruments:
    """Approximate optimal demand instruments at an estimate (PyBLP's ``OptimalInstrumentResults``).

    Arrays are in product_data's row order.

    Attributes:
        demand_instruments: Z_D^opt = Var(ξ̂)⁻¹ E[∂ξ/∂θ | Z], N × P (one column per free nonlinear
            parameter, ``labels`` order); PyBLP's ``demand_instruments``.
        xi_jacobian: E[∂ξ/∂θ | Z] ≈ ∂δ/∂θ at expected prices (PyBLP's ``expected_xi_by_theta_jacobian``).
        inverse_covariance: Var(ξ̂)⁻¹ (PyBLP's 1 × 1 ``inverse_covariance_matrix``).
        expected_prices: p̂ = E[p | Z] used.
        expected_shares: the shares implied by p̂ and ξ = 0 at θ̂.
        labels: the parameters of the columns of ``demand_instruments``.
        endogenous: X1 columns evaluated at p̂ (the optimal instruments for their concentrated-out β),
            N × K_en, and ``endogenous_labels`` their names.
    """

    problem: Any  # the Problem the results came from
    demand_instruments: np.ndarray
    xi_jacobian: np.ndarray
    inverse_covariance: float
    expected_prices: np.ndarray
    expected_shares: np.ndarray
    labels: tuple[str, ...]
    endogenous: np.ndarray
    endogenous_labels: tuple[str, ...]

    @property
    def excluded_instruments(self) -> pd.DataFrame:
        """The new excluded instruments ``demand_instruments0..``: [Z_D^opt, endogenous X1 at p̂] (row order)."""
        values = np.column_stack([self.demand_instruments, self.endogenous])
        names = [f"demand_instruments{k}" for k in range(values.shape[1])]
        index = self.problem.product_data.index
        return pd.DataFrame(values, columns=names, index=index)

    def to_product_data(self) -> pd.DataFrame:
        """product_data with its ``demand_instruments*`` columns replaced by :attr:`excluded_instruments`."""
        df = self.problem.product_data
        old = [c for c in df.columns if str(c).startswith("demand_instruments")]
        out = df.drop(columns=old)
        for name, column in self.excluded_instruments.items():
            out[name] = column.to_numpy()
        return out

    def to_problem(self, **overrides):
        """The same :class:`Problem` specification on :meth:`to_product_data` (PyBLP's ``to_problem``).

        ``overrides`` replace Problem arguments (e.g. ``integration=`` when the original problem
        built its nodes from an integration rule instead of ``agent_data``).
        """
        p = self.problem
        kwargs = dict(
            linear=p.linear,
            nonlinear=p.nonlinear,
            absorb=p.absorb,
            agent_data=p.agent_data,
            demographics=p.demographics,
            rho_by_nest=p.rho_by_nest,
        )
        kwargs.update(overrides)
        return type(self.problem)(self.to_product_data(), **kwargs)


def compute_optimal_instruments(results, method: str = "approximate", expected_prices=None) -> OptimalInstruments:
    """Approximate optimal demand instruments at ``results``' estimate (see the module docstring).

    Args:
        results: a demand-only :class:`Results`.
        method: only ``"approximate"`` (Jacobians at ξ = 0).
        expected_prices: E[p | Z], one value per product row; default: reduced-form fitted values.

    Raises:
        BLPSpecificationError: a supply side, another method, or expected prices of the wrong shape.
    """
    if method != "approximate":
        raise BLPSpecificationError("only method='approximate' is implemented (Jacobians at E[ξ] = 0).")
    problem, setup, final = results.problem, results.setup, results.final
    if setup.supply is not None:
        raise BLPSpecificationError(
            "optimal instruments with a supply side are not implemented: estimate the demand side alone."
        )
    index = problem.index
    prices = problem.products.prices
    if expected_prices is None:
        prices_hat = expected_prices_reduced_form(setup, prices)
    else:
        values = np.asarray(expected_prices, dtype=np.float64).reshape(-1)
        if values.shape != (problem.N,):
            raise BLPSpecificationError(f"expected_prices must have one value per product ({problem.N}).")
        prices_hat = jnp.asarray(index.padded(values))
    beta_p = final.beta[problem.linear.index("prices")] if "prices" in problem.linear else 0.0
    delta_hat = jnp.where(setup.mask, final.delta - final.xi + beta_p * (prices_hat - prices), 0.0)
    price_column = problem.nonlinear.index("prices") if "prices" in problem.nonlinear else -1
    P = results.spec.P
    if results.spec.linear_free:
        raise BLPSpecificationError(
            "optimal instruments with linear parameters optimised with θ (solve(beta=...) starting values) are not "
            "supported yet: estimate with them concentrated out (NaN) or fixed (equal bounds) first."
        )
    if P:
        shares, jac = _approximate_jacobian(
            results.spec, price_column, jnp.asarray(final.theta), delta_hat, prices_hat, setup
        )
    else:
        theta = results.theta
        market = setup.market
        if price_column >= 0:
            market = eqx.tree_at(lambda m: m.X2, market, market.X2.at[..., price_column].set(prices_hat))
        log_s = jax.vmap(market_log_shares, in_axes=(0, None, 0))(delta_hat, theta, market)
        shares = jnp.where(setup.mask, jnp.exp(log_s), 0.0)
        jac = jnp.zeros(setup.mask.shape + (0,))
    xi = index.flat(final.xi)
    inverse_covariance = float(1.0 / np.var(xi))
    jacobian = index.flat(jac)
    endogenous_labels = ("prices",) if "prices" in problem.linear else ()
    p_flat = index.flat(prices_hat)
    return OptimalInstruments(
        problem,
        inverse_covariance * jacobian,
        jacobian,
        inverse_covariance,
        p_flat,
        index.flat(shares),
        tuple(results.spec.labels),
        p_flat[:, None] if endogenous_labels else np.zeros((problem.N, 0)),
        endogenous_labels,
    )
