"""Counterfactuals and inference on :class:`Results` (pandas front): costs, markups, profits, HHI, pass-through,
equilibrium prices after a merger, consumer surplus, and delta-method or bootstrap standard errors for any of them.

PyBLP's names and arguments; per-product outputs are Series indexed like product_data, per-market outputs Series
indexed by market id; ``se=True`` returns a DataFrame with the ``estimate`` and its delta-method ``se`` (exact
derivatives through δ(θ), recovered costs and the equilibrium's first-order conditions).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._base.errors import BLPEstimationError, BLPNumericalWarning, BLPSpecificationError, Status
from .._inversion.contraction import ContractionConfig
from .._post.fitted import check_linear_prices
from .._post.inference import Bootstrap, DeltaMethod
from .._supply.bertrand import firm_membership
from .._supply.equilibrium import Ownership
from .post import PostEstimation, _bootstrap, _Call, _delta_method


class Counterfactuals(PostEstimation):
    """The counterfactual and inference half of :class:`Results` (a mixin over :class:`PostEstimation`)."""

    def delta_method(self, fn) -> DeltaMethod:
        """Delta-method inference on ``fn(fitted)``, any array-valued JAX function of the fitted model
        (:class:`blpjax.internal.Fitted`; padded (T, J) arrays), with the estimates' covariance and exact
        derivatives. Returns a :class:`DeltaMethod` (estimate, se, jacobian, covariance) shaped like the output.

        Example:
            >>> out = results.delta_method(lambda f: f.compute_prices(ownership=merged).x - f.prices)
        """
        return _delta_method(fn, self.fitted, jnp.asarray(self.covariances.to_numpy()))

    def bootstrap(
        self, fn, draws: int = 1000, seed: int | None = None, iteration=None, batch_size: int = 100
    ) -> Bootstrap:
        """PyBLP's parametric bootstrap of ``fn(fitted)``: parameters drawn from N(x̂, V̂) (V̂ = :attr:`covariances`,
        θ clipped to its bounds), δ(θ) solved again at every draw, ``fn`` evaluated there; ``batch_size`` draws
        at a time in one vmapped program. Returns a :class:`Bootstrap` (values with a leading draws axis, the
        draws, and which draws had a failed share inversion, with a warning if any).

        A draw can make demand admit no equilibrium (upward-sloping demand for some agents): let ``fn`` mark it,
        e.g. ``fp = f.compute_prices(ownership=O); return jnp.where(fp.status[:, None] == 0, fp.x, jnp.nan)``,
        and use ``np.nanpercentile``.

        Example:
            >>> boot = results.bootstrap(lambda f: f.compute_costs(), draws=200, seed=0)
            >>> lower, upper = np.percentile(boot.values, [2.5, 97.5], axis=0)
        """
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise BLPSpecificationError(f"draws must be a positive integer, not {draws!r}.")
        config = self.config if iteration is None else iteration
        if not isinstance(config, ContractionConfig):
            raise BLPSpecificationError("iteration must be a blpjax.ContractionConfig (the share inversion's).")
        K = len(self.labels) - self.spec.P_theta
        lower, upper = (jnp.asarray(b, jnp.float64) for b in self.spec.estimate_bounds(K))
        key = jax.random.key(np.random.SeedSequence(seed).generate_state(1)[0] if seed is None else seed)
        out = _bootstrap(
            fn,
            self.fitted,
            jnp.asarray(self.covariances.to_numpy()),
            draws,
            key,
            config,
            lower,
            upper,
            min(batch_size, draws),
        )
        failed = int(np.asarray(out.failed).sum())
        if failed:
            warnings.warn(
                f"bootstrap: the share inversion failed in some market in {failed} of {draws} draws (out.failed marks "
                "them); drop them or loosen the bounds.",
                BLPNumericalWarning,
                stacklevel=2,
            )
        return out

    def ownership(self, firm_ids=None, kappa_specification=None) -> Ownership:
        """Every market's ownership for :meth:`delta_method` functions and :class:`Fitted` methods: O_jk = κ(f_j, f_k)
        from ``firm_ids`` (a Series aligned by index, or row order; default the data's), with PyBLP's
        ``kappa_specification``: a function κ(f, g) of two firm ids (partial ownership), ``"monopoly"`` (one owner),
        or None (1 within a firm, 0 across). Kept as each market's owners B and κ (:class:`blpjax.internal.Ownership`;
        ``.dense()`` is the (T, J, J) matrix), so that prices cost I·J·F per market instead of I·J²."""
        if kappa_specification == "monopoly":
            labels = np.zeros(self.index.n_rows, np.int64)
        elif firm_ids is None:
            self._require_firms("ownership")
            labels = self.firm_labels
        else:
            labels = self.index.aligned(firm_ids, "ownership(firm_ids)", numeric=False)
        kappa_fn = None
        if kappa_specification is not None and kappa_specification != "monopoly":
            if not callable(kappa_specification):
                raise BLPSpecificationError("kappa_specification must be a function kappa(f, g), 'monopoly' or None.")
            kappa_fn = kappa_specification
        return self._owners(labels, kappa_fn)

    def _owners(self, labels, kappa_fn=None) -> Ownership:
        """Each market's owners (host side): B (T, J, F) from the supply side's ``firm_membership`` (F the most firms
        in a market), κ (T, F, F) the identity or κ(f, g) of the firms' labels."""
        codes, uniques = self._firm_codes(labels, "firm_ids", with_labels=True)
        members = np.asarray(firm_membership(codes, jnp.asarray(self.index.rows >= 0)), dtype=np.float64)
        present = members.any(axis=1)  # (T, F)
        if kappa_fn is None:
            kappa = np.broadcast_to(np.eye(members.shape[-1]), present.shape + present.shape[-1:]).copy()
        else:
            K = np.array([[float(kappa_fn(f, g)) for g in uniques] for f in uniques])
            if not np.all(np.isfinite(K)):
                raise BLPSpecificationError("kappa_specification returned a non-finite value.")
            owner = np.take_along_axis(np.asarray(codes), members.argmax(axis=1), axis=1)  # (T, F) global code
            kappa = K[owner[:, :, None], owner[:, None, :]] * (present[:, :, None] & present[:, None, :])
        return Ownership(jnp.asarray(members), jnp.asarray(kappa))

    def to_rows(self, values) -> pd.Series | pd.DataFrame:
        """A padded (T, J[, ...]) output (of :meth:`delta_method`, :class:`Fitted`) in product_data's row order,
        indexed like product_data."""
        flat = self._flat(np.asarray(values))
        index = pd.Index(self.index.row_labels if self.index.row_labels is not None else np.arange(self.index.n_rows))
        return pd.Series(flat, index=index) if flat.ndim == 1 else pd.DataFrame(flat, index=index)

    def _firm_codes(self, firm_ids, what: str, with_labels: bool = False):
        """Padded integer codes of firm labels (a Series aligned by index, or an array in row order), and the
        labels of the codes with ``with_labels``."""
        labels = self.index.aligned(firm_ids, what, numeric=False)
        codes, uniques = pd.factorize(pd.Series(labels), use_na_sentinel=False)
        out = np.zeros(self.index.rows.shape, np.int64)
        real = self.index.rows >= 0
        out[real] = codes[self.index.rows[real]]
        return (jnp.asarray(out), list(uniques)) if with_labels else jnp.asarray(out)

    def _require_firms(self, what: str):
        if not self.has_firm_ids:
            raise BLPSpecificationError(
                f"{what} needs firm_ids: product_data has no 'firm_ids' column. Add one (which firm sells each "
                "product), or pass firm_ids= or ownership= to this call."
            )

    def _ownership(self, firm_ids, ownership, what: str):
        """Ownership from ``firm_ids`` or the data (by owners), or from a stacked PyBLP ownership array (dense)."""
        if firm_ids is not None and ownership is not None:
            raise BLPSpecificationError(f"{what}: pass firm_ids or ownership, not both.")
        if isinstance(ownership, Ownership):  # from results.ownership(...)
            return ownership
        if ownership is None:
            if firm_ids is None:
                self._require_firms(what)
                return self._owners(self.firm_labels)
            return self._owners(self.index.aligned(firm_ids, f"{what} firm_ids", numeric=False))
        O = np.asarray(ownership, dtype=np.float64)
        T, J = self.index.rows.shape
        real = self.index.rows >= 0
        counts = real.sum(axis=1)
        if O.shape == (T, J, J):
            padded = O
        elif O.ndim == 2 and O.shape[0] == self.index.n_rows and O.shape[1] >= counts.max():
            padded = np.zeros((T, J, J))
            padded[real] = O[self.index.rows[real], :J]
        else:
            raise BLPSpecificationError(
                f"{what}: ownership must be PyBLP's stacked array ({self.index.n_rows} rows, one per product, "
                f"with at least {counts.max()} columns: row j holds O_jk for the products k of j's market, in row "
                f"order) or a padded ({T}, {J}, {J}) array; got shape {O.shape}."
            )
        both = real[:, :, None] & real[:, None, :]
        bad = both & ~np.isfinite(padded)
        if bad.any():
            markets = np.asarray(self.index.market_ids)[np.nonzero(bad.any(axis=(1, 2)))[0]]
            raise BLPSpecificationError(
                f"{what}: ownership has NaN or infinite entries in market(s) {list(markets[:5])}."
            )
        return jnp.asarray(np.where(both, padded, 0.0))

    # --- costs, markups, profits, concentration ---------------------------------------------
    def compute_costs(self, firm_ids=None, ownership=None, market_id=None, se: bool = False):
        """Marginal costs c = p − η from Bertrand–Nash first-order conditions at the observed prices, under the
        data's ownership (or ``firm_ids`` / PyBLP's stacked ``ownership``), from any demand estimate."""
        O = self._ownership(firm_ids, ownership, "compute_costs")
        return self._per_product(_Call("compute_costs", (O,), {}), "costs", se, market_id)

    def compute_markups(self, prices=None, costs=None, market_id=None, se: bool = False):
        """Lerner indices (p − c)/p, as PyBLP's ``compute_markups`` (the markup *level* p − c is
        :meth:`compute_eta`; with a supply side estimated, ``results.markups`` is p − c too)."""
        p = self._optional(prices, "compute_markups(prices)")
        c = self._optional(costs, "compute_markups(costs)")
        if c is None:
            self._require_firms("compute_markups")
        return self._per_product(_Call("compute_markups", (p, c), {}), "markups", se, market_id)

    def compute_eta(self, firm_ids=None, ownership=None, market_id=None, se: bool = False):
        """Markup levels η = p − c that rationalise the observed prices under the data's ownership (or another)."""
        O = self._ownership(firm_ids, ownership, "compute_eta")
        return self._per_product(_Call("compute_eta", (O,), {}), "eta", se, market_id)

    def compute_profits(self, prices=None, shares=None, costs=None, market_id=None, se: bool = False):
        """Per-product profits (p − c)·s per unit of market size (PyBLP's ``compute_profits``)."""
        p = self._optional(prices, "compute_profits(prices)")
        s = self._optional(shares, "compute_profits(shares)")
        c = self._optional(costs, "compute_profits(costs)")
        if c is None:
            self._require_firms("compute_profits")
        return self._per_product(_Call("compute_profits", (p, s, c), {}), "profits", se, market_id)

    def compute_hhi(self, firm_ids=None, shares=None, market_id=None, se: bool = False):
        """Herfindahl–Hirschman index per market, 10,000 × Σ_f (firm f's share of inside sales)²."""
        if firm_ids is None:
            self._require_firms("compute_hhi")
            codes = None
        else:
            codes = self._firm_codes(firm_ids, "compute_hhi(firm_ids)")
        s = self._optional(shares, "compute_hhi(shares)")
        return self._per_market(_Call("compute_hhi", (codes, s), {}), "hhi", se, market_id)

    def compute_passthrough(self, firm_ids=None, ownership=None, layout: str = "long"):
        """∂p_j/∂c_k: how equilibrium prices respond to marginal costs, at the data's equilibrium."""
        O = self._ownership(firm_ids, ownership, "compute_passthrough")
        return self._layout(self._run("compute_passthrough", O), layout, "passthrough")

    def compute_profit_hessians(self, prices=None, costs=None, market_id=None, layout: str = "stacked"):
        """∂²π_j/∂p_k∂p_l, π_j = (p_j − c_j) s_j, at ``prices`` (observed) and ``costs`` (recovered from the first-order
        conditions): the firms' second-order conditions (PyBLP's stacked N × J_max × J_max)."""
        p = self._optional(prices, "compute_profit_hessians(prices)")
        c = self._optional(costs, "compute_profit_hessians(costs)")
        if c is None:
            self._require_firms("compute_profit_hessians (recovering costs)")
        return self._array(self._run("compute_profit_hessians", p, c), layout, market_id)

    # --- equilibrium prices and consumer surplus --------------------------------------------
    def compute_prices(
        self,
        firm_ids=None,
        ownership=None,
        costs=None,
        prices=None,
        iteration: ContractionConfig | None = None,
        constant_costs: bool = True,
        market_id=None,
        se: bool = False,
        throw: bool = True,
    ):
        """Bertrand–Nash equilibrium prices under new ``firm_ids`` (a merger) or ``ownership``, and/or new
        ``costs`` (default: the costs recovered from the data's first-order conditions), from starting
        ``prices`` (observed), by the ζ-markup fixed point of Morrow and Skerlos, per market.

        ``iteration``: a :class:`ContractionConfig` with ``method="simple"`` (default: tol 1e-12 on the ∞-norm
        of the price step weighted by |Λ|, i.e. of a profit gradient, as PyBLP; 5,000 evaluations). A market that does not converge raises (``throw=True``) or warns.
        With ``se=True`` the standard errors differentiate the whole map θ, β → costs → new prices.
        """
        share_costs = None
        if not constant_costs:
            share_costs = getattr(self, "cost_terms", None)
            if share_costs is None:
                raise BLPSpecificationError(
                    "constant_costs=False re-evaluates costs that depend on shares, but no cost characteristic of this "
                    "problem depends on shares: costs are constant here (drop the argument). Costs that do are stated "
                    "in the costs formula, e.g. costs='1 + sugar + log(shares)'."
                )
        O = self._ownership(firm_ids, ownership, "compute_prices")
        c = self._optional(costs, "compute_prices(costs)")
        if c is None:
            self._require_firms("compute_prices (recovering costs)")
        p0 = self._optional(prices, "compute_prices(prices)")
        config = iteration
        if config is not None and not isinstance(config, ContractionConfig):
            raise BLPSpecificationError("iteration must be a blpjax.ContractionConfig(method='simple', ...).")
        solved = self._run("compute_prices", O, c, p0, config, share_costs=share_costs)
        self._check_equilibrium(solved, throw)
        call = _Call("compute_prices", (O, c, p0, config), {"share_costs": share_costs}, "x")
        return self._per_product(call, "prices", se, market_id, values=solved.x)

    def _check_equilibrium(self, solved, throw: bool):
        status = np.asarray(solved.status)
        if not status.any():
            return
        bad = np.flatnonzero(status)
        markets = np.asarray(self.index.market_ids)[bad]
        reasons = {
            Status.MAX_EVALUATIONS: "hit the evaluation limit (raise iteration=ContractionConfig(method='simple', "
            "max_evaluations=...), or check that the new costs and ownership admit an equilibrium)",
            Status.NONFINITE: "produced non-finite prices (costs above what demand supports, or extreme parameters)",
        }
        message = f"equilibrium prices did not converge in {len(bad)} market(s) {list(markets[:5])}: " + "; ".join(
            sorted({reasons[Status(int(s))] for s in status[bad]})
        )
        if throw:
            raise BLPEstimationError(message + ". Pass throw=False to get the last iterates with a warning.")
        warnings.warn(message, BLPNumericalWarning, stacklevel=3)

    def compute_approximate_prices(self, firm_ids=None, ownership=None, costs=None, market_id=None, se=False):
        """PyBLP's approximate equilibrium prices c + η under the new ownership, with shares and their price
        derivatives held at their observed values (not a Taylor expansion)."""
        O = self._ownership(firm_ids, ownership, "compute_approximate_prices")
        c = self._optional(costs, "compute_approximate_prices(costs)")
        if c is None:
            self._require_firms("compute_approximate_prices (recovering costs)")
        return self._per_product(_Call("compute_approximate_prices", (O, c), {}), "prices", se, market_id)

    def compute_consumer_surpluses(
        self, prices=None, keep_all: bool = False, eliminate_product_ids=None, market_id=None, se: bool = False
    ):
        """Consumer surplus per market, Σ_i w_i log(1 + Σ_j exp u_ij)/(−α_i), per unit of market size (PyBLP's
        units), at ``prices`` (observed by default), ξ held fixed. ``keep_all``: one column per agent (NaN on
        padding). ``eliminate_product_ids``: products removed from every choice set."""
        check_linear_prices(self.fitted)
        p = self._optional(prices, "compute_consumer_surpluses(prices)")
        eliminate = None
        if eliminate_product_ids is not None:
            if isinstance(eliminate_product_ids, str):
                raise BLPSpecificationError("eliminate_product_ids must be a list of product ids, not a string.")
            ids = list(eliminate_product_ids)
            eliminate = np.isin(self.index.product_ids, ids) & (self.index.rows >= 0)
            unknown = [i for i in ids if not np.any(self.index.product_ids == i)]
            if unknown:
                raise BLPSpecificationError(f"eliminate_product_ids: unknown product id(s) {unknown[:5]}.")
            eliminate = jnp.asarray(eliminate)
        if keep_all:
            if se:
                raise BLPSpecificationError("se=True needs market-level surpluses: drop keep_all, or use delta_method.")
            cs = np.asarray(self._run("compute_consumer_surpluses", p, eliminate, True))
            cs = np.where(np.asarray(self.setup.market.weights) != 0, cs, np.nan)  # padded agents
            out = pd.DataFrame(cs, index=pd.Index(self.index.market_ids, name="market_ids"))
            return out if market_id is None else out.iloc[[self._market_rows(market_id)]]
        call = _Call("compute_consumer_surpluses", (p, eliminate), {})
        return self._per_market(call, "consumer_surplus", se, market_id)

    def compute_consumer_surplus(self, prices=None) -> pd.Series:
        """Alias of :meth:`compute_consumer_surpluses` (per market, at ``prices``)."""
        return self.compute_consumer_surpluses(prices)
