"""The pandas front door: validate PyBLP-convention DataFrames and build padded arrays.

Only this module and :mod:`._frames` import pandas. Every check here runs before any numerics
and names the offending column or market, with the fix.

product_data columns (PyBLP conventions): ``market_ids`` and ``shares`` (required), ``prices``,
``product_ids``, ``firm_ids``, ``nesting_ids``, ``clustering_ids``, ``demand_instruments0``,
``demand_instruments1``, ... and any characteristics named in the specification. agent_data:
``market_ids``, ``weights``, ``nodes0``, ``nodes1``, ... and demographics.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
import pandas as pd

from ._errors import BLPDataError, BLPDataWarning, BLPSpecificationError
from ._integration import Integration
from ._markets import Agents, Products

CONSTANT = "1"
ENDOGENOUS = ("prices",)


@dataclass(frozen=True)
class ProductIndex:
    """Labels that map padded (T, J) arrays back to the caller's rows."""

    market_ids: np.ndarray  # (T,)
    rows: np.ndarray  # (T, J) original row positions, -1 on padding
    product_ids: np.ndarray  # (T, J) object
    x1_names: tuple[str, ...]
    x2_names: tuple[str, ...]
    z_names: tuple[str, ...]
    nest_labels: tuple
    n_rows: int

    def padded(self, values) -> np.ndarray:
        """(N, ...) in the caller's row order → (T, J, ...), zero on padding."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape[:1] != (self.n_rows,):
            raise BLPSpecificationError(
                f"expected one value per product row ({self.n_rows}), got shape {values.shape}."
            )
        mask = self.rows >= 0
        out = np.zeros(self.rows.shape + values.shape[1:])
        out[mask] = values[self.rows[mask]]
        return out

    def flat(self, values) -> np.ndarray:
        """(T, J, ...) → (N, ...) in the caller's original row order."""
        values = np.asarray(values)
        mask = self.rows >= 0
        out = np.empty((self.n_rows,) + values.shape[2:], values.dtype)
        out[self.rows[mask]] = values[mask]
        return out


def _columns_by_prefix(df: pd.DataFrame, prefix: str) -> list[str]:
    pattern = re.compile(rf"^{prefix}(\d+)$")
    found = [(int(m.group(1)), c) for c in df.columns if (m := pattern.match(str(c)))]
    return [c for _, c in sorted(found)]


def _require(df: pd.DataFrame, columns, frame: str):
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise BLPDataError(f"{frame} is missing column(s) {missing}. Available columns: {list(map(str, df.columns))}.")


def _numeric(df: pd.DataFrame, column: str, frame: str) -> np.ndarray:
    try:
        values = pd.to_numeric(df[column], errors="raise").to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise BLPDataError(f"{frame} column '{column}' must be numeric ({e}).") from None
    bad = ~np.isfinite(values)
    if bad.any():
        where = df["market_ids"].to_numpy()[bad][:3] if "market_ids" in df.columns else np.flatnonzero(bad)[:3]
        raise BLPDataError(
            f"{frame} column '{column}' has {bad.sum()} NaN/inf value(s) (first in market(s) {where.tolist()}). "
            "Drop or impute these rows before building the problem."
        )
    return values


def _codes(values) -> tuple[np.ndarray, np.ndarray]:
    codes, uniques = pd.factorize(pd.Series(values), sort=True)
    return codes.astype(np.int64), np.asarray(uniques)


def _pad(values: np.ndarray, t_index: np.ndarray, j_index: np.ndarray, T: int, J: int, fill=0.0) -> np.ndarray:
    out = np.full((T, J) + values.shape[1:], fill, dtype=values.dtype)
    out[t_index, j_index] = values
    return out


def _rank_check(A: np.ndarray, names, what: str, hint: str):
    """Raise naming the first column that is a linear combination of the previous ones."""
    if A.shape[1] == 0:
        return
    scale = np.maximum(np.abs(A).max(axis=0), 1e-300)
    A = A / scale
    for k in range(A.shape[1]):
        sub = A[:, : k + 1]
        sv = np.linalg.svd(sub, compute_uv=False)
        if sv[-1] <= 1e-10 * max(sv[0], 1.0) * np.sqrt(A.shape[0]):
            raise BLPDataError(
                f"collinear {what}: '{names[k]}' is (numerically) a linear combination of "
                f"{list(names[:k]) or 'nothing (it is zero)'}{hint}."
            )


def build_products(
    product_data: pd.DataFrame,
    x1: tuple[str, ...],
    x2: tuple[str, ...],
    absorb: tuple[str, ...],
) -> tuple[Products, ProductIndex]:
    """Validate ``product_data`` and build padded :class:`Products`."""
    frame = "product_data"
    if not isinstance(product_data, pd.DataFrame):
        raise BLPDataError("product_data must be a pandas DataFrame with PyBLP's column names.")
    df = product_data.reset_index(drop=True)
    if len(df) == 0:
        raise BLPDataError("product_data has no rows.")
    needed = ["market_ids", "shares"] + [c for c in (*x1, *x2) if c != CONSTANT] + list(absorb)
    _require(df, dict.fromkeys(needed), frame)
    if not x1 and not absorb:
        raise BLPSpecificationError(
            "the linear part X1 is empty: give at least one characteristic or absorb fixed effects."
        )
    if CONSTANT in x1 and absorb:
        raise BLPDataError(
            f"collinear regressors: the constant '1' in X1 is absorbed by the fixed effects {list(absorb)}. "
            "Drop '1' from the linear characteristics."
        )
    for c in absorb:
        if df[c].isna().any():
            raise BLPDataError(f"{frame} column '{c}' (absorbed fixed effect) has missing values.")
    if df["market_ids"].isna().any():
        raise BLPDataError("product_data column 'market_ids' has missing values.")

    shares = _numeric(df, "shares", frame)
    markets = df["market_ids"].to_numpy()
    bad = shares <= 0
    if bad.any():
        raise BLPDataError(
            f"shares must be positive: {bad.sum()} share(s) ≤ 0, in market(s) {pd.unique(markets[bad]).tolist()[:5]}."
        )
    tiny = shares < np.finfo(np.float64).tiny
    if tiny.any():
        raise BLPDataError(
            f"shares below {np.finfo(np.float64).tiny:.3g} (subnormal floating-point numbers) in market(s) "
            f"{pd.unique(markets[tiny]).tolist()[:5]}: their logarithms lose precision and the share inversion "
            "cannot match them. Check how these shares were computed (market size), or drop the products."
        )
    totals = pd.Series(shares).groupby(markets, sort=False).sum()
    if (totals >= 1).any():
        raise BLPDataError(
            f"inside shares must sum to less than one in every market (the outside good needs a positive share); "
            f"they sum to ≥ 1 in market(s) {totals.index[totals >= 1].tolist()[:5]} "
            f"(sum = {totals[totals >= 1].iloc[0]:.6g}). Check the market size used to compute shares."
        )
    if "product_ids" in df.columns:
        dup = df.duplicated(["market_ids", "product_ids"])
        if dup.any():
            first = df.loc[dup].iloc[0]
            raise BLPDataError(
                f"duplicate products: product '{first['product_ids']}' appears more than once in market "
                f"'{first['market_ids']}'. Each (market_ids, product_ids) pair must be unique."
            )

    def column(name):
        return np.ones(len(df)) if name == CONSTANT else _numeric(df, name, frame)

    X1 = np.column_stack([column(c) for c in x1]) if x1 else np.zeros((len(df), 0))
    X2 = np.column_stack([column(c) for c in x2]) if x2 else np.zeros((len(df), 0))
    prices = _numeric(df, "prices", frame) if "prices" in df.columns else np.zeros(len(df))
    excluded = _columns_by_prefix(df, "demand_instruments")
    endogenous = [c for c in x1 if c in ENDOGENOUS]
    exogenous = [c for c in x1 if c not in ENDOGENOUS]
    if len(excluded) < len(endogenous):
        raise BLPDataError(
            f"too few instruments: X1 has endogenous regressor(s) {endogenous} but product_data has "
            f"{len(excluded)} excluded instrument column(s) (demand_instruments0, demand_instruments1, ...). "
            "Add at least one per endogenous regressor."
        )
    Zx = np.column_stack([_numeric(df, c, frame) for c in excluded]) if excluded else np.zeros((len(df), 0))
    Z = np.column_stack([X1[:, [x1.index(c)]] for c in exogenous] + [Zx]) if exogenous else Zx
    z_names = tuple(exogenous) + tuple(excluded)

    # market layout
    t_codes, market_labels = pd.factorize(df["market_ids"], sort=False)
    T = len(market_labels)
    j_index = df.groupby(t_codes, sort=False).cumcount().to_numpy()
    J = int(j_index.max()) + 1
    rows = _pad(np.arange(len(df)), t_codes, j_index, T, J, fill=-1)
    mask = rows >= 0

    nest_labels: tuple = ()
    if "nesting_ids" in df.columns:
        if df["nesting_ids"].isna().any():
            raise BLPDataError("product_data column 'nesting_ids' has missing values.")
        nest_codes, nest_uniques = _codes(df["nesting_ids"])
        nest_labels = tuple(nest_uniques.tolist())
    else:
        nest_codes = np.zeros(len(df), np.int64)
    firm_codes = _codes(df["firm_ids"])[0] if "firm_ids" in df.columns else np.arange(len(df))
    if "clustering_ids" in df.columns:
        cluster_codes, cluster_uniques = _codes(df["clustering_ids"])
        n_clusters = len(cluster_uniques)
    else:
        cluster_codes, n_clusters = np.arange(len(df)), len(df)
    fe_codes, fe_sizes = [], []
    for c in absorb:
        codes, uniques = _codes(df[c])
        fe_codes.append(codes)
        fe_sizes.append(len(uniques))
    fe = np.column_stack(fe_codes) if fe_codes else np.zeros((len(df), 0), np.int64)

    # collinearity, after absorbing fixed effects (numpy, before any jitted numerics)
    if absorb:
        from ._objective import absorb_columns  # the core routine (one jitted call for Z and X1 together)

        # [Z, X1] in one call, the column order Setup.build uses, so the compiled absorption is reused
        ZX1c = absorb_columns(
            _pad(np.column_stack([Z, X1]), t_codes, j_index, T, J),
            _pad(fe, t_codes, j_index, T, J),
            mask,
            tuple(fe_sizes),
            xp=np,
        )[mask]
        Zc, X1c = ZX1c[:, : Z.shape[1]], ZX1c[:, Z.shape[1] :]
        hint = f" after absorbing {list(absorb)} (a characteristic that is constant within a fixed effect is absorbed by it)"
    else:
        X1c, Zc, hint = X1, Z, ""
    _rank_check(X1c, list(x1), "regressors in X1", hint + ". Drop one of them")
    _rank_check(Zc, list(z_names), "instruments", hint + ". Drop the redundant instrument")
    _rank_check(X2, list(x2), "nonlinear characteristics in X2", ". Drop one of them")

    products = Products(
        shares=jnp.asarray(_pad(shares, t_codes, j_index, T, J)),
        mask=jnp.asarray(mask),
        prices=jnp.asarray(_pad(prices, t_codes, j_index, T, J)),
        X1=jnp.asarray(_pad(X1, t_codes, j_index, T, J)),
        X2=jnp.asarray(_pad(X2, t_codes, j_index, T, J)),
        Z=jnp.asarray(_pad(Z, t_codes, j_index, T, J)),
        nest_ids=jnp.asarray(_pad(nest_codes, t_codes, j_index, T, J)),
        firm_ids=jnp.asarray(_pad(firm_codes, t_codes, j_index, T, J)),
        cluster_ids=jnp.asarray(_pad(cluster_codes, t_codes, j_index, T, J)),
        fe_ids=jnp.asarray(_pad(fe, t_codes, j_index, T, J)),
        n_nests=len(nest_labels),
        fe_sizes=tuple(fe_sizes),
        n_clusters=int(n_clusters),
        n_products=len(df),
    )
    product_ids = (
        _pad(df["product_ids"].to_numpy(dtype=object), t_codes, j_index, T, J, fill=None)
        if "product_ids" in df.columns
        else _pad(np.arange(len(df)).astype(object), t_codes, j_index, T, J, fill=None)
    )
    index = ProductIndex(
        np.asarray(market_labels), rows, product_ids, tuple(x1), tuple(x2), z_names, nest_labels, len(df)
    )
    return products, index


def agent_positions(agent_data: pd.DataFrame, index: ProductIndex) -> tuple[np.ndarray, np.ndarray]:
    """(market position t, agent position i within the market) of every agent_data row."""
    t_of = {m: t for t, m in enumerate(index.market_ids.tolist())}
    t_codes = agent_data["market_ids"].map(t_of).to_numpy()
    i_index = agent_data.groupby(t_codes, sort=False).cumcount().to_numpy()
    return t_codes, i_index


def padded_agent_columns(agent_data: pd.DataFrame, index: ProductIndex, I: int) -> dict[str, np.ndarray]:
    """Every numeric agent_data column as a (T, I) array (0 on padding), for micro-moment functions."""
    df = agent_data.reset_index(drop=True)
    t_codes, i_index = agent_positions(df, index)
    T = len(index.market_ids)
    out = {}
    for c in df.columns:
        if c != "market_ids" and pd.api.types.is_numeric_dtype(df[c]):
            out[str(c)] = _pad(df[c].to_numpy(np.float64), t_codes, i_index, T, I)
    return out


def build_agents(
    agent_data: pd.DataFrame | None,
    index: ProductIndex,
    K2: int,
    demographics: tuple[str, ...],
    integration: Integration | None,
) -> Agents:
    """Validate ``agent_data`` (and/or build nodes by ``integration``) into padded :class:`Agents`."""
    T = len(index.market_ids)
    D = len(demographics)
    if agent_data is None:
        if D:
            raise BLPSpecificationError(f"demographics {list(demographics)} were named but no agent_data was given.")
        if K2 == 0:
            return Agents(jnp.ones((T, 1)), jnp.zeros((T, 1, 0)), jnp.zeros((T, 1, 0)))
        if integration is None:
            raise BLPSpecificationError(
                "a model with random coefficients needs agents: pass agent_data (market_ids, weights, nodes0..) "
                "or integration=Integration(rule, size)."
            )
        built = [integration.build(K2, market=t) for t in range(T)]
        I = max(n.shape[0] for n, _ in built)
        nodes = np.zeros((T, I, K2))
        weights = np.zeros((T, I))
        for t, (n, w) in enumerate(built):
            nodes[t, : len(w)] = n
            weights[t, : len(w)] = w
        return Agents(jnp.asarray(weights), jnp.asarray(nodes), jnp.zeros((T, I, 0)))

    frame = "agent_data"
    if not isinstance(agent_data, pd.DataFrame):
        raise BLPDataError("agent_data must be a pandas DataFrame.")
    df = agent_data.reset_index(drop=True)
    _require(df, ["market_ids", *demographics], frame)
    node_columns = _columns_by_prefix(df, "nodes")
    if integration is None:
        _require(df, ["weights"], frame)
        if len(node_columns) < K2:
            raise BLPDataError(
                f"agent_data has {len(node_columns)} node column(s) but X2 has {K2} characteristic(s); "
                f"add nodes0..nodes{K2 - 1} (one per X2 column, in order) or pass integration=..."
            )
    product_markets = set(index.market_ids.tolist())
    agent_markets = set(pd.unique(df["market_ids"]).tolist())
    extra = agent_markets - product_markets
    missing = product_markets - agent_markets
    if extra:
        raise BLPDataError(f"agent_data has market(s) with no products: {sorted(map(str, extra))[:5]}.")
    if missing:
        raise BLPDataError(f"market(s) {sorted(map(str, missing))[:5]} have products but no agents in agent_data.")
    t_codes, i_index = agent_positions(df, index)
    I = int(i_index.max()) + 1
    demo = np.column_stack([_numeric(df, c, frame) for c in demographics]) if D else np.zeros((len(df), 0))
    if integration is None:
        weights = _numeric(df, "weights", frame)
        nodes = np.column_stack([_numeric(df, c, frame) for c in node_columns[:K2]]) if K2 else np.zeros((len(df), 0))
    else:
        if not integration.simulated:
            raise BLPSpecificationError(
                "with agent_data, integration must be a simulation rule (monte_carlo, halton, lhs, mlhs): "
                "one node per agent row. For product rules or sparse grids, build agent_data with the nodes yourself."
            )
        nodes = np.zeros((len(df), K2))
        weights = _numeric(df, "weights", frame) if "weights" in df.columns else np.zeros(len(df))
        for t in range(T):
            rows = np.flatnonzero(t_codes == t)
            n, w = integration.build(K2, market=t, size=len(rows))
            nodes[rows] = n
            if "weights" not in df.columns:
                weights[rows] = w
    check_agent_weights(weights, t_codes, index.market_ids)
    return Agents(
        jnp.asarray(_pad(weights, t_codes, i_index, T, I)),
        jnp.asarray(_pad(nodes, t_codes, i_index, T, I)),
        jnp.asarray(_pad(demo, t_codes, i_index, T, I)),
    )


WEIGHTS_TOL = 1e-10
"""Agent weights whose sum in a market differs from one by more than this get a warning (PyBLP's
``options.weights_tol``)."""


def check_agent_weights(weights: np.ndarray, t_codes: np.ndarray, market_ids: np.ndarray) -> None:
    """Integration weights: finite, a positive sum in every market, non-negative unless they sum to one.

    Negative weights are meaningful only for quadrature rules (sparse grids), whose weights sum to one
    in each market; anywhere else they are a data error. Sums that differ from one are allowed (e.g.
    importance sampling) with a warning, as PyBLP does.

    Raises:
        BLPDataError: non-finite weights, a market whose weights sum to ≤ 0, or negative weights in a
            market whose weights do not sum to one.
    """
    bad = ~np.isfinite(weights)
    if bad.any():
        raise BLPDataError(
            f"agent_data column 'weights' has {bad.sum()} NaN/inf value(s), in market(s) "
            f"{pd.unique(market_ids[t_codes[bad]]).tolist()[:5]}."
        )
    T = len(market_ids)
    totals = np.bincount(t_codes, weights=weights, minlength=T)
    nonpositive = totals <= 0
    if nonpositive.any():
        raise BLPDataError(
            f"agent_data column 'weights' sums to {totals[nonpositive][0]:.6g} (≤ 0) in market(s) "
            f"{market_ids[nonpositive].tolist()[:5]}: every market needs integration weights with a positive sum "
            "(usually 1/I for I agents)."
        )
    off = np.abs(totals - 1.0) > WEIGHTS_TOL
    negative = np.bincount(t_codes, weights=(weights < 0).astype(float), minlength=T) > 0
    if (negative & off).any():
        raise BLPDataError(
            f"agent_data column 'weights' has negative weights in market(s) {market_ids[negative & off].tolist()[:5]}, "
            "where the weights do not sum to one. Negative weights only make sense for quadrature rules such as "
            "sparse grids, whose weights sum to one in each market; check the weights column."
        )
    if off.any():
        where = "all markets" if off.all() else market_ids[off].tolist()[:5]
        warnings.warn(
            f"agent_data weights sum to a value that differs from 1 by more than {WEIGHTS_TOL:g} in {where} "
            f"(e.g. {totals[off][0]:.10g}). This is fine for importance sampling; otherwise it is a data problem "
            "(shares are integrals with these weights).",
            BLPDataWarning,
            stacklevel=4,
        )


def build_supply_arrays(
    product_data: pd.DataFrame,
    index: ProductIndex,
    x3: tuple[str, ...],
    costs_type: str,
    price_derivatives: dict | None,
) -> dict[str, np.ndarray]:
    """Validate the supply side and build its padded arrays: X3, Z_S and ∂X2/∂p.

    Z_S holds the X3 columns (exogenous cost shifters) followed by ``supply_instruments0``, ...
    ``price_derivatives`` maps X1/X2 column names to ∂column/∂price: a number or the name of a
    column (for an interaction such as prices × sugar, the column ``sugar``). ``prices`` itself
    has derivative 1 unless overridden; every other column 0.
    """
    from ._supply import COSTS_TYPES

    frame = "product_data"
    df = product_data.reset_index(drop=True)
    if costs_type not in COSTS_TYPES:
        raise BLPSpecificationError(f"costs_type must be one of {COSTS_TYPES}, not {costs_type!r}.")
    _require(df, ["prices", "firm_ids", *[c for c in x3 if c != CONSTANT]], frame)
    if df["firm_ids"].isna().any():
        raise BLPDataError("product_data column 'firm_ids' has missing values: every product needs a firm.")
    if "prices" in x3:
        raise BLPSpecificationError(
            "'prices' cannot be a cost characteristic in X3 (costs are p − markup; prices are endogenous there)."
        )
    derivs = {"prices": 1.0}
    derivs.update(price_derivatives or {})
    x1, x2 = index.x1_names, index.x2_names
    unknown = [k for k in derivs if k not in (*x1, *x2) and k != "prices"]
    if unknown:
        raise BLPSpecificationError(
            f"price_derivatives names column(s) {unknown} that are in neither the linear nor the nonlinear "
            f"characteristics (X1 = {list(x1)}, X2 = {list(x2)})."
        )

    def derivative(name):
        d = derivs.get(name, 0.0)
        if isinstance(d, str):
            _require(df, [d], frame)
            return _numeric(df, d, frame)
        return np.full(len(df), float(d))

    dX1 = np.column_stack([derivative(c) for c in x1]) if x1 else np.zeros((len(df), 0))
    dX2 = np.column_stack([derivative(c) for c in x2]) if x2 else np.zeros((len(df), 0))
    if np.any(dX1 != 0):
        moved = [c for k, c in enumerate(x1) if np.any(dX1[:, k] != 0)]
        raise BLPSpecificationError(
            f"with a supply side, markups depend on the mean price coefficient, so it cannot be concentrated out of "
            f"the GMM problem like the other linear parameters; {moved} in the linear characteristics X1 depend on "
            "prices. Put prices among the nonlinear characteristics instead: add a column of ones to agent_data "
            "(e.g. 'one'), name it in demographics, and give pi a nonzero starting value for (prices, one); that "
            "entry of Π is then the mean price coefficient α, estimated with θ (PyBLP does the same with `beta`)."
        )
    if not np.any(dX2 != 0):
        raise BLPSpecificationError(
            "with a supply side, prices must enter utility: no nonlinear characteristic depends on prices. Add "
            "'prices' (or a column holding −prices, with price_derivatives={'neg_prices': -1}) to nonlinear."
        )
    X3 = np.column_stack([np.ones(len(df)) if c == CONSTANT else _numeric(df, c, frame) for c in x3])
    excluded = _columns_by_prefix(df, "supply_instruments")
    Zx = np.column_stack([_numeric(df, c, frame) for c in excluded]) if excluded else np.zeros((len(df), 0))
    ZS = np.column_stack([X3, Zx])
    _rank_check(X3, list(x3), "cost characteristics in X3", ". Drop one of them")
    _rank_check(ZS, list(x3) + excluded, "supply instruments", ". Drop the redundant instrument")
    return {
        "X3": index.padded(X3),
        "ZS": index.padded(ZS),
        "dX2": index.padded(dX2),
        "zs_names": tuple(x3) + tuple(excluded),
    }
