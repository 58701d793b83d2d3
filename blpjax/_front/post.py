"""Post-estimation on :class:`Results` (pandas front): the fitted model as a JAX value, elasticities, diversion,
shares, aggregate elasticities, probabilities and diagonals, and the labelled-output helpers that
:mod:`.counterfactuals` (costs, mergers, inference) builds on.

Inputs follow PyBLP's names and conventions; a pandas Series is aligned by product_data's index (never by
position), arrays are in product_data's row order. Per-product outputs are Series indexed like
product_data, per-market outputs Series indexed by market id; with ``se=True`` a DataFrame with the
``estimate`` and its delta-method ``se`` (exact derivatives through δ(θ), recovered costs and the
equilibrium's first-order conditions; :meth:`PostEstimation.delta_method` for any other function).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._base.config import jit
from .._base.errors import BLPEstimationError, BLPSpecificationError, Status
from .._inversion.contraction import ContractionConfig
from .._inversion.implicit import solve_delta
from .._model.market import Market
from .._model.post import (
    Characteristic,
    counterfactual_shares,
    diversion_ratios,
    elasticities,
    share_hessian,
    share_jacobian,
)
from .._post.fitted import Fitted
from .._post.inference import bootstrap, delta_method
from .agent_data import build_agents


@jit(once=True, inline=True, static_argnums=(0,))
def _vmapped(fn, x, delta, theta, market, ch):
    return jax.vmap(fn, in_axes=(0, 0, None, 0, None))(x, delta, theta, market, ch)


@jit(once=True, inline=True, static_argnums=(0,))
def _vmapped_cf(fn, x_new, x, delta, theta, market, ch):
    return jax.vmap(fn, in_axes=(0, 0, 0, None, 0, None))(x_new, x, delta, theta, market, ch)


class _Call(eqx.Module):
    """``fitted.<name>(*args, **kwargs)`` (then ``.<attr>``) as a pytree, so that one jitted program serves
    every call with the same structure."""

    name: str = eqx.field(static=True)
    args: tuple
    kwargs: dict
    attr: str | None = eqx.field(static=True, default=None)

    def __call__(self, fitted: Fitted):
        out = getattr(fitted, self.name)(*self.args, **self.kwargs)
        return out if self.attr is None else getattr(out, self.attr)


_evaluate = eqx.filter_jit(lambda call, fitted: call(fitted))
_delta_method = eqx.filter_jit(delta_method)


@eqx.filter_jit
def _bootstrap(fn, fitted, covariance, draws, key, config, lower, upper, batch_size):
    return bootstrap(fn, fitted, covariance, draws, key, config, lower, upper, batch_size)


class PostEstimation:
    """The post-estimation half of :class:`Results` (a mixin: it reads ``final``, ``theta``, ``setup``,
    ``products``, ``index``, ``specification``, ``spec`` and ``covariances``)."""

    # --- the fitted model ------------------------------------------------------------------
    @property
    def fitted(self) -> Fitted:
        """The estimated model as a JAX value (:class:`blpjax.internal.Fitted`): what :meth:`delta_method`
        hands to its function."""
        if getattr(self, "_fitted", None) is None:
            dX1, dX2 = self.price_derivatives
            gamma = jnp.zeros(0) if self.final.gamma is None else jnp.asarray(self.final.gamma)
            self._fitted = Fitted.build(
                self.spec,
                jnp.asarray(self.final.theta),
                jnp.asarray(self.final.beta),
                gamma,
                self.final.delta,
                self.setup.market,
                self.products.prices,
                jnp.asarray(dX1),
                jnp.asarray(dX2),
                self.products.firm_ids,
                self.products.shares,
                getattr(self, "price_terms", None),
            )
        return self._fitted

    def _run(self, name, *args, attr=None, **kwargs):
        return _evaluate(_Call(name, args, kwargs, attr), self.fitted)

    # --- labelled outputs ------------------------------------------------------------------
    def _per_product(self, call: _Call, name: str, se: bool, market_id=None, values=None):
        """``call``'s (T, J) output in row order (``values``: already computed), with delta-method SEs if ``se``."""
        values = np.asarray(_evaluate(call, self.fitted) if values is None else values)
        index = pd.Index(self.index.row_labels if self.index.row_labels is not None else np.arange(self.index.n_rows))
        if se:
            out = _delta_method(call, self.fitted, jnp.asarray(self.covariances.to_numpy()))
            result = pd.DataFrame({"estimate": self._flat(values), "se": self._flat(np.asarray(out.se))}, index=index)
        else:
            result = pd.Series(self._flat(values), index=index, name=name)
        if market_id is not None:
            self._market_rows(market_id)  # an unknown market raises
            result = result[self._flat_market_ids() == market_id]
        return result

    def _per_market(self, call: _Call, name: str, se: bool, market_id=None):
        values = np.asarray(_evaluate(call, self.fitted))
        index = pd.Index(self.index.market_ids, name="market_ids")
        if se:
            out = _delta_method(call, self.fitted, jnp.asarray(self.covariances.to_numpy()))
            result = pd.DataFrame({"estimate": values, "se": np.asarray(out.se)}, index=index)
        else:
            result = pd.Series(values, index=index, name=name)
        if market_id is not None:
            result = result.iloc[[self._market_rows(market_id)]]
        return result

    def _flat_market_ids(self) -> np.ndarray:
        idx = self.index
        t = np.broadcast_to(np.arange(idx.rows.shape[0])[:, None], idx.rows.shape)
        return np.asarray(idx.market_ids)[self._flat(t)]

    # --- inputs ----------------------------------------------------------------------------
    def _padded(self, values, what: str) -> jnp.ndarray:
        """(T, J) padded values from a Series (aligned by index) or a row-ordered array, checked."""
        return jnp.asarray(self.index.padded(self.index.aligned(values, what)))

    def _optional(self, values, what: str):
        return None if values is None else self._padded(values, what)

    # --- elasticities, diversion, shares (any characteristic) -------------------------------
    def _require_prices(self, what: str) -> None:
        """Prices must enter utility (a column of X1 or X2 that depends on them, see ``price_derivatives``)."""
        dX1, dX2 = self.price_derivatives
        if not (np.any(np.asarray(dX1) != 0) or np.any(np.asarray(dX2) != 0)):
            raise BLPSpecificationError(
                f"{what}: prices do not enter this model's utility (no X1 or X2 column named 'prices', and no "
                "price_derivatives for another column), so their derivatives are zero. Name the characteristic instead."
            )

    def _characteristic(self, name: str) -> tuple[jnp.ndarray, Characteristic]:
        p, products = self.specification, self.products
        if name not in p.linear and name not in p.nonlinear:
            raise BLPSpecificationError(f"'{name}' is not a characteristic of X1 {p.linear} or X2 {p.nonlinear}.")
        beta = self.final.beta[p.linear.index(name)] if name in p.linear else jnp.asarray(0.0)
        col = p.nonlinear.index(name) if name in p.nonlinear else -1
        x = products.X1[..., p.linear.index(name)] if name in p.linear else products.X2[..., col]
        return x, Characteristic(beta, col)

    def _market_rows(self, market) -> int:
        ids = list(self.index.market_ids)
        if market not in ids:
            raise BLPSpecificationError(f"unknown market {market!r}.")
        return ids.index(market)

    def _stacked(self, arr) -> np.ndarray:
        """(T, J, J) → PyBLP's stacked layout: one row per product (row order), J columns."""
        return self._flat(np.asarray(arr))

    def _long(self, arr, value_name: str) -> pd.DataFrame:
        """(T, J, J) → tidy rows (market, product, other product, value), vectorised."""
        idx = self.index
        arr = np.asarray(arr)
        real = idx.rows >= 0
        pairs = real[:, :, None] & real[:, None, :]
        t, j, k = np.nonzero(pairs)
        return pd.DataFrame(
            {
                "market_ids": idx.market_ids[t],
                "product_ids": idx.product_ids[t, j],
                "other_product_ids": idx.product_ids[t, k],
                value_name: arr[t, j, k],
            }
        )

    def _layout(self, arr, layout, value_name):
        if layout == "padded":
            return np.asarray(arr)
        if layout == "stacked":
            return self._stacked(arr)
        if layout == "long":
            return self._long(arr, value_name)
        raise BLPSpecificationError("layout must be 'long', 'stacked' or 'padded'.")

    def compute_elasticities(self, name: str = "prices", layout: str = "long"):
        """∂log s_j/∂log x_k for every market.

        Args:
            name: the characteristic (default prices).
            layout: ``"long"`` (tidy DataFrame), ``"stacked"`` (PyBLP's N × J_max array in row
                order) or ``"padded"`` (T × J × J array).
        """
        if name == "prices":  # through every X1/X2 column as price_derivatives says
            self._require_prices("compute_elasticities")
            return self._layout(self._run("compute_elasticities"), layout, "elasticity")
        x, ch = self._characteristic(name)
        E = _vmapped(elasticities, x, self.final.delta, self.theta, self.setup.market, ch)
        return self._layout(E, layout, "elasticity")

    def _array(self, arr, layout: str, market_id=None) -> np.ndarray:
        """Per-market arrays (T, J, J[, J]) as PyBLP gives them: stacked rows in row order with NaN beyond a market's
        products (``"stacked"``), one market's J_t × J_t[ × J_t] block (``market_id``), or ``"padded"``."""
        arr = np.asarray(arr, dtype=np.float64)
        real = self.index.rows >= 0
        if market_id is not None:
            t = self._market_rows(market_id)
            js = np.flatnonzero(real[t])
            return arr[t][np.ix_(*([js] * (arr.ndim - 1)))]
        if layout == "padded":
            return arr
        if layout != "stacked":
            raise BLPSpecificationError("layout must be 'stacked' or 'padded'.")
        out = self._flat(arr)
        others = self._flat(np.broadcast_to(real[:, None, :], real.shape + real.shape[1:]))  # (N, J): k in j's market
        keep = others[:, :, None] & others[:, None, :] if out.ndim == 3 else others
        return np.where(keep, out, np.nan)

    def compute_demand_jacobians(self, name: str = "prices", market_id=None, layout: str = "stacked"):
        """∂s_j/∂x_k within each market (PyBLP's stacked N × J_max with NaN beyond a market's products). For prices,
        through every X1/X2 column as ``price_derivatives`` says; another characteristic by its name."""
        if name == "prices":
            self._require_prices("compute_demand_jacobians")
            arr = self._run("compute_share_jacobian")
        else:
            x, ch = self._characteristic(name)
            arr = _vmapped(share_jacobian, x, self.final.delta, self.theta, self.setup.market, ch)
        return self._array(arr, layout, market_id)

    def compute_demand_hessians(self, name: str = "prices", market_id=None, layout: str = "stacked"):
        """∂²s_j/∂x_k∂x_l within each market (PyBLP's stacked N × J_max × J_max, NaN beyond a market's products)."""
        if name == "prices":
            self._require_prices("compute_demand_hessians")
            arr = self._run("compute_share_hessian")
        else:
            x, ch = self._characteristic(name)
            arr = _vmapped(share_hessian, x, self.final.delta, self.theta, self.setup.market, ch)
        return self._array(arr, layout, market_id)

    def compute_delta(self, agent_data=None, integration=None, iteration: ContractionConfig | None = None) -> pd.Series:
        """δ solved from the observed shares at the estimated θ under new agents (PyBLP's ``compute_delta``): new
        ``agent_data`` (nodes, weights and the same demographics) and/or an ``integration`` rule, checked as
        :class:`Problem` checks agents. ``iteration``: the share inversion (default: the estimation's). Starts from
        the estimated δ; a market whose inversion fails raises :class:`BLPEstimationError` naming it."""
        if agent_data is None and integration is None:
            raise BLPSpecificationError("compute_delta needs new agent_data, an integration rule, or both.")
        if iteration is not None and not isinstance(iteration, ContractionConfig):
            raise BLPSpecificationError("iteration must be a blpjax.ContractionConfig.")
        spec = self.specification
        agents = build_agents(agent_data, self.index, len(spec.nonlinear), spec.demographics, integration)
        m = self.setup.market
        market = Market(
            m.X2,
            agents.nodes,
            agents.demographics,
            agents.weights,
            m.log_shares,
            m.mask,
            m.nest_ids,
            agents.product_demographics,
            agents.availability,
            m.epsilon_scale,
        )
        theta = self.spec.unpack(jnp.asarray(self.final.theta))
        solve = jax.jit(jax.vmap(solve_delta, in_axes=(None, 0, 0, None)))
        solved = solve(theta, market, jnp.asarray(self.final.delta), iteration or self.config)
        status = np.asarray(solved.status)
        if status.any():
            bad = np.flatnonzero(status)
            raise BLPEstimationError(
                f"compute_delta: the share inversion failed in {len(bad)} market(s) "
                f"{list(np.asarray(self.index.market_ids)[bad][:5])}: {Status(int(status[bad[0]])).explain()}."
            )
        index = pd.Index(self.index.row_labels if self.index.row_labels is not None else np.arange(self.index.n_rows))
        return pd.Series(self._flat(np.asarray(solved.x)), index=index, name="delta")

    def compute_diversion_ratios(self, name: str = "prices", layout: str = "long"):
        """Diversion from j to k when x_j rises; the diagonal is diversion to the outside good."""
        if name == "prices":
            self._require_prices("compute_diversion_ratios")
            return self._layout(self._run("compute_diversion_ratios"), layout, "diversion")
        x, ch = self._characteristic(name)
        D = _vmapped(diversion_ratios, x, self.final.delta, self.theta, self.setup.market, ch)
        return self._layout(D, layout, "diversion")

    def elasticity_matrix(self, market, name: str = "prices") -> pd.DataFrame:
        """The J×J elasticity matrix of one market, labelled by product ids."""
        t = self._market_rows(market)
        E = self.compute_elasticities(name, layout="padded")[t]
        js = np.flatnonzero(self.index.rows[t] >= 0)
        labels = list(self.index.product_ids[t, js])
        return pd.DataFrame(E[np.ix_(js, js)], index=pd.Index(labels, name="product"), columns=labels)

    def compute_shares(self, prices=None, values=None) -> np.ndarray:
        """Shares at new ``prices`` (PyBLP's ``compute_shares(prices)``), ξ held fixed, in row order.

        ``compute_shares(name, values)`` with a characteristic's name first sets that characteristic instead.
        """
        if isinstance(prices, str):
            name, new = prices, values
        elif values is not None:
            raise BLPSpecificationError("compute_shares(prices) or compute_shares(name, values), not both.")
        else:
            name, new = "prices", prices
        if name == "prices":  # prices move X1 and X2 as price_derivatives says
            self._require_prices("compute_shares")
            p = None if new is None else self._padded(new, "compute_shares(prices)")
            return self._flat(np.asarray(self._run("compute_shares", p)))
        x, ch = self._characteristic(name)
        x_new = x if new is None else self._padded(new, f"compute_shares({name!r}, values)")
        s = _vmapped_cf(counterfactual_shares, x_new, x, self.final.delta, self.theta, self.setup.market, ch)
        return self._flat(s)

    def counterfactual(self, values, name: str = "prices") -> pd.DataFrame:
        """A tidy table of shares before/after setting ``name`` to ``values`` (row order)."""
        idx = self.index
        before = self.compute_shares(name)
        after = self.compute_shares(name, values)
        t = np.empty(self.index.n_rows, dtype=int)
        j = np.empty(self.index.n_rows, dtype=int)
        tt, jj = np.nonzero(idx.rows >= 0)
        t[idx.rows[tt, jj]], j[idx.rows[tt, jj]] = tt, jj
        df = pd.DataFrame(
            {
                "market_ids": idx.market_ids[t],
                "product_ids": idx.product_ids[t, j],
                "shares": before,
                "new_shares": after,
            }
        )
        df["pct_change"] = 100 * (df["new_shares"] / df["shares"] - 1)
        return df

    def compute_aggregate_elasticities(self, factor: float = 0.1, name: str = "prices", market_id=None):
        """Per market, (Σ_j s_j(x(1 + factor)) − Σ_j s_j)/factor: the inside goods' response to scaling x."""
        if name == "prices":
            self._require_prices("compute_aggregate_elasticities")
            p = self.fitted.prices
            s_new, s_old = self._run("compute_shares", p * (1 + factor)), self._run("compute_shares", p)
        else:
            x, ch = self._characteristic(name)
            s_new = _vmapped_cf(
                counterfactual_shares, x * (1 + factor), x, self.final.delta, self.theta, self.setup.market, ch
            )
            s_old = _vmapped_cf(counterfactual_shares, x, x, self.final.delta, self.theta, self.setup.market, ch)
        values = np.asarray(jnp.sum(s_new - s_old, axis=1)) / factor
        out = pd.Series(values, index=pd.Index(self.index.market_ids, name="market_ids"), name="aggregate_elasticity")
        return out if market_id is None else out.iloc[[self._market_rows(market_id)]]

    def compute_long_run_diversion_ratios(self, layout: str = "long"):
        """Diversion when a product leaves the market: (s_k without j − s_k)/s_j; the diagonal is diversion to the
        outside good (PyBLP's definition)."""
        return self._layout(self._run("compute_long_run_diversion_ratios"), layout, "diversion")

    def compute_probabilities(self, prices=None) -> np.ndarray:
        """Agents' choice probabilities in PyBLP's layout: one row per product (row order), one column per agent
        of its market (NaN beyond a market's agents), at ``prices`` (observed by default), ξ held fixed."""
        p = self._optional(prices, "compute_probabilities(prices)")
        P = np.asarray(self._run("compute_probabilities", p))  # (T, I, J)
        P = np.where((np.asarray(self.setup.market.weights) != 0)[:, :, None], P, np.nan)
        return self._flat(np.swapaxes(P, 1, 2))

    def extract_diagonals(self, matrices) -> np.ndarray:
        """The diagonal of each market's block of a stacked N × J_max matrix (elasticities, diversion ratios), one
        value per product in row order."""
        M = self._stacked_input(matrices, "extract_diagonals")
        position = self._flat(np.broadcast_to(np.arange(self.index.rows.shape[1]), self.index.rows.shape))
        return M[np.arange(M.shape[0]), position]

    def extract_diagonal_means(self, matrices) -> pd.Series:
        """The mean of each market's diagonal of a stacked N × J_max matrix (e.g. mean own-price elasticity)."""
        diagonals = pd.Series(self.extract_diagonals(matrices))
        means = diagonals.groupby(self._flat_market_ids(), sort=False).mean()
        return pd.Series(
            means.reindex(self.index.market_ids).to_numpy(), index=pd.Index(self.index.market_ids, name="market_ids")
        )

    def _stacked_input(self, matrices, what: str) -> np.ndarray:
        M = np.asarray(matrices, dtype=np.float64)
        J = self.index.rows.shape[1]
        if M.ndim != 2 or M.shape[0] != self.index.n_rows or M.shape[1] < J:
            raise BLPSpecificationError(
                f"{what}: expected a stacked matrix with one row per product ({self.index.n_rows}) and at least {J} "
                f"columns (as compute_elasticities(layout='stacked') returns), got shape {M.shape}."
            )
        return M
