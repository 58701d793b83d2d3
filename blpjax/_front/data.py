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
from .._model.containers import Products

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
    costs_absorb: tuple[str, ...] = ()


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

    def per_product(self, values, what: str) -> np.ndarray:
        """Values per product row (a Series aligned by its index, or an array in row order) or already padded (T, J),
        as padded (T, J)."""
        if isinstance(values, pd.Series) or np.ndim(values) == 1:
            return self.padded(self.aligned(values, what))
        out = np.asarray(values, np.float64)
        if out.shape != self.rows.shape:
            raise BLPSpecificationError(
                f"{what} must have one value per product row ({self.n_rows},) or the padded shape {self.rows.shape}, "
                f"not {out.shape}."
            )
        return out

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


def fixed_effect_codes(df: pd.DataFrame, absorb, frame: str) -> tuple[np.ndarray, list[int]]:
    """(N, F) level codes of the absorbed columns (checked for missing values) and each one's number of levels."""
    codes, sizes = [], []
    for c in absorb:
        if df[c].isna().any():
            raise BLPDataError(f"{frame} column '{c}' (absorbed fixed effect) has missing values.")
        k, uniques = _codes(df[c])
        codes.append(k)
        sizes.append(len(uniques))
    return (np.column_stack(codes) if codes else np.zeros((len(df), 0), np.int64)), sizes


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
    fe, fe_sizes = fixed_effect_codes(df, absorb, frame)  # missing values refused here, before any numerics
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
