"""The pandas front door: validate PyBLP-convention DataFrames and build padded arrays.

The front (this package) is the only part of blpjax that imports pandas. Every check here runs before any numerics
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

from .._base.errors import BLPDataError, BLPDataWarning, BLPSpecificationError
from .._engine.setup import absorb_columns
from .._model.containers import Agents, Products
from .._model.integration import Integration
from .checks import check_agent_weights

CONSTANT = "1"
ENDOGENOUS = ("prices",)


@dataclass(frozen=True)
class Specification:
    """The column names of a problem's specification (what results label their tables with)."""

    linear: tuple[str, ...]
    nonlinear: tuple[str, ...]
    absorb: tuple[str, ...] = ()
    demographics: tuple[str, ...] = ()
    costs: tuple[str, ...] = ()
    costs_type: str = "linear"
    zs_names: tuple[str, ...] = ()
    rho_by_nest: bool = False


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
    row_labels: np.ndarray | None = None  # product_data's index, to align pandas inputs by label

    def aligned(self, values, what: str, numeric: bool = True) -> np.ndarray:
        """One finite number per product row, in product_data's row order, checked before any numerics.

        ``numeric=False`` accepts labels (firm ids, product ids) instead of numbers: any type but missing.

        A pandas Series is aligned by its index with product_data's index (every row once, in any order);
        anything else must be a 1-D array of one value per row, in row order.

        Raises:
            BLPSpecificationError: a wrong shape, missing or extra labels, duplicate labels, NaN or inf (the
                message names the rows or markets and the fix).
        """
        if isinstance(values, pd.DataFrame):
            raise BLPSpecificationError(
                f"{what}: pass a Series or a 1-D array (one value per product row), not a DataFrame."
            )
        if isinstance(values, pd.Series):
            labels = pd.Index(self.row_labels if self.row_labels is not None else np.arange(self.n_rows))
            if not labels.is_unique:
                raise BLPSpecificationError(
                    f"{what}: product_data's index has duplicate labels, so a Series cannot be aligned with it: pass "
                    "a NumPy array in product_data's row order, or give product_data a unique index."
                )
            if not values.index.is_unique:
                raise BLPSpecificationError(f"{what}: the Series' index has duplicate labels.")
            missing = labels.difference(values.index)
            extra = values.index.difference(labels)
            if len(missing) or len(extra):
                raise BLPSpecificationError(
                    f"{what}: the Series is aligned with product_data by its index, but "
                    + (f"{len(missing)} row label(s) are missing (e.g. {list(missing[:3])})" if len(missing) else "")
                    + (" and " if len(missing) and len(extra) else "")
                    + (f"{len(extra)} label(s) are not in product_data (e.g. {list(extra[:3])})" if len(extra) else "")
                    + "."
                )
            values = values.reindex(labels)
        if not numeric:
            array = np.asarray(values, dtype=object)
            if array.shape != (self.n_rows,):
                raise BLPSpecificationError(
                    f"{what}: expected one label per product row, shape ({self.n_rows},), got {array.shape}."
                )
            if pd.isna(array).any():
                raise BLPSpecificationError(f"{what}: {int(pd.isna(array).sum())} missing label(s).")
            return array
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise BLPSpecificationError(f"{what}: values must be numeric ({e}).") from None
        if array.shape != (self.n_rows,):
            raise BLPSpecificationError(
                f"{what}: expected one value per product row, shape ({self.n_rows},), got {array.shape}"
                + (" (flatten it: a column vector is ambiguous)" if array.shape == (self.n_rows, 1) else "")
                + "."
            )
        bad = ~np.isfinite(array)
        if bad.any():
            t = np.nonzero(self.rows >= 0)[0][np.argsort(self.rows[self.rows >= 0])]  # market of every row
            raise BLPSpecificationError(
                f"{what}: {int(bad.sum())} NaN or infinite value(s), in market(s) "
                f"{pd.unique(self.market_ids[t[bad]]).tolist()[:5]}."
            )
        return array

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


def _unique_columns(df: pd.DataFrame, frame: str) -> None:
    duplicated = df.columns[df.columns.duplicated()].unique().tolist()
    if duplicated:
        raise BLPDataError(f"{frame} has duplicate column names {duplicated}: rename or drop the repeated columns.")


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
    endogenous: tuple[str, ...] = ENDOGENOUS,
) -> tuple[Products, ProductIndex]:
    """Validate ``product_data`` and build padded :class:`Products`. ``endogenous``: the X1 columns that are not
    their own instruments (prices, columns that depend on prices, declared ones)."""
    frame = "product_data"
    if not isinstance(product_data, pd.DataFrame):
        raise BLPDataError("product_data must be a pandas DataFrame with PyBLP's column names.")
    _unique_columns(product_data, frame)
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
    else:  # without product ids, a row repeated within a market (same share and characteristics) may be a duplicate
        used = ["market_ids", "shares", *dict.fromkeys(c for c in (*x1, *x2) if c != CONSTANT)]
        dup = df.duplicated(used)
        if dup.any():
            first = df.loc[dup].iloc[0]
            warnings.warn(
                f"duplicate rows? {int(dup.sum())} row(s) repeat another row of the same market (first: row "
                f"{int(np.flatnonzero(dup)[0])}, market '{first['market_ids']}') in every column used ({used}). "
                "Drop them if they are the same product counted twice; add a product_ids column if they are "
                "different products (twins do occur in real data), which also silences this warning.",
                BLPDataWarning,
                stacklevel=4,
            )

    def column(name):
        return np.ones(len(df)) if name == CONSTANT else _numeric(df, name, frame)

    X1 = np.column_stack([column(c) for c in x1]) if x1 else np.zeros((len(df), 0))
    X2 = np.column_stack([column(c) for c in x2]) if x2 else np.zeros((len(df), 0))
    prices = _numeric(df, "prices", frame) if "prices" in df.columns else np.zeros(len(df))
    excluded = _columns_by_prefix(df, "demand_instruments")
    endogenous = [c for c in x1 if c in endogenous]
    exogenous = [c for c in x1 if c not in endogenous]
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
        np.asarray(market_labels),
        rows,
        product_ids,
        tuple(x1),
        tuple(x2),
        z_names,
        nest_labels,
        len(df),
        np.asarray(product_data.index),
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
    _unique_columns(agent_data, frame)
    df = agent_data.reset_index(drop=True)
    J_max = index.rows.shape[1]
    # a demographic that is not a column but has columns name0, name1, ... is product-specific (PyBLP's
    # multi-column demographics): column j belongs to the market's j-th product in product_data's order
    by_product = {c: _columns_by_prefix(df, c) for c in demographics if c not in df.columns}
    by_product = {c: cols for c, cols in by_product.items() if cols}
    _require(df, ["market_ids", *[c for c in demographics if c not in by_product]], frame)
    for c, cols in by_product.items():
        if len(cols) < J_max:
            raise BLPDataError(
                f"the product-specific demographic '{c}' has {len(cols)} column(s) ({cols[0]}, ...) but markets have "
                f"up to {J_max} products: give {c}0..{c}{J_max - 1} (column j for each market's j-th product)."
            )
    availability_columns = _columns_by_prefix(df, "availability")
    if availability_columns and len(availability_columns) < J_max:
        raise BLPDataError(
            f"agent_data has {len(availability_columns)} availability column(s) but markets have up to {J_max} "
            f"products: give availability0..availability{J_max - 1} (1 if the market's j-th product is available)."
        )
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
    if extra and missing and {str(m) for m in extra} & {str(m) for m in missing}:
        kinds = lambda ids: sorted({type(m).__name__ for m in ids})  # noqa: E731
        raise BLPDataError(
            f"market_ids differ in type: product_data has {kinds(product_markets)} ids, agent_data "
            f"{kinds(agent_markets)} (e.g. {sorted(map(repr, extra))[:3]}): convert one of the columns, e.g. "
            "agent_data['market_ids'] = agent_data['market_ids'].astype(product_data['market_ids'].dtype)."
        )
    if extra:
        raise BLPDataError(f"agent_data has market(s) with no products: {sorted(map(str, extra))[:5]}.")
    if missing:
        raise BLPDataError(f"market(s) {sorted(map(str, missing))[:5]} have products but no agents in agent_data.")
    t_codes, i_index = agent_positions(df, index)
    I = int(i_index.max()) + 1
    demo = (
        np.column_stack([_numeric(df, c, frame) if c not in by_product else np.zeros(len(df)) for c in demographics])
        if D
        else np.zeros((len(df), 0))
    )
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
    J_agent = (index.rows >= 0).sum(axis=1)[t_codes]  # each agent's market's product count

    def per_product(columns: list[str]) -> np.ndarray:
        """(N, J_max) from columns name0..: finite for each agent's market's products, 0 beyond them."""
        values = np.column_stack([pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64) for c in columns[:J_max]])
        real = np.arange(J_max)[None, :] < J_agent[:, None]
        bad = real & ~np.isfinite(values)
        if bad.any():
            r, j = np.argwhere(bad)[0]
            raise BLPDataError(
                f"agent_data column '{columns[j]}' is missing or not numeric for agent row {r} of market "
                f"'{index.market_ids[t_codes[r]]}', which has {J_agent[r]} products (values beyond a market's "
                "products are ignored)."
            )
        return np.where(real, values, 0.0)

    product_demo = None
    if by_product:  # (N, J_max, D): agent-level demographics repeated over products
        product_demo = np.repeat(demo[:, None, :], J_max, axis=1)
        for k, c in enumerate(demographics):
            if c in by_product:
                product_demo[:, :, k] = per_product(by_product[c])
    availability = None
    if availability_columns:
        availability = per_product(availability_columns)
        if not np.isin(availability, (0.0, 1.0)).all():
            raise BLPDataError("agent_data availability columns must be 1 (available) or 0 (not available).")
        padded = _pad(availability, t_codes, i_index, T, I)
        reach = np.einsum("ti,tij->tj", _pad(weights, t_codes, i_index, T, I) != 0, padded)
        unreached = (index.rows >= 0) & (reach == 0)
        if unreached.any():
            t, j = np.argwhere(unreached)[0]
            raise BLPDataError(
                f"product '{index.product_ids[t, j]}' of market '{index.market_ids[t]}' is available to no agent "
                "(availability columns), yet it has a positive share: make it available to some agents or drop it."
            )
    return Agents(
        jnp.asarray(_pad(weights, t_codes, i_index, T, I)),
        jnp.asarray(_pad(nodes, t_codes, i_index, T, I)),
        jnp.asarray(_pad(demo, t_codes, i_index, T, I)),
        None if product_demo is None else jnp.asarray(_pad(product_demo, t_codes, i_index, T, I)),
        None if availability is None else jnp.asarray(_pad(availability, t_codes, i_index, T, I)),
    )
