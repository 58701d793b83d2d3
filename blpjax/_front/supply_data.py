"""The supply side's data: cost characteristics X3, supply instruments and ∂X2/∂p, validated."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .._base.errors import BLPDataError, BLPDataWarning, BLPSpecificationError
from .._supply.bertrand import COSTS_TYPES
from .data import (
    CONSTANT,
    ENDOGENOUS,
    ProductIndex,
    _columns_by_prefix,
    _numeric,
    _rank_check,
    _require,
    fixed_effect_codes,
)


def build_supply_arrays(
    product_data: pd.DataFrame,
    index: ProductIndex,
    x3: tuple[str, ...],
    costs_type: str,
    price_derivatives: dict | None,
    share_columns: tuple[str, ...] = (),
    absorb: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """Validate the supply side and build its padded arrays: X3, Z_S and ∂X2/∂p.

    ``absorb``: columns of ids whose fixed effects are absorbed from the cost equation (PyBLP's ``absorb`` in the
    X3 formulation): X3 and Z_S are returned absorbed (within those groups), with the padded codes (``fe_ids``,
    ``fe_sizes``) that absorb f(c) in the statistics.

    Z_S holds the X3 columns (exogenous cost shifters) followed by ``supply_instruments0``, ...; X3 columns that
    depend on shares (``share_columns``, and a column named ``shares``) are endogenous and left out, as in PyBLP.
    ``price_derivatives`` maps X1/X2 column names to ∂column/∂price: a number or the name of a
    column (for an interaction such as prices × sugar, the column ``sugar``). ``prices`` itself
    has derivative 1 unless overridden; every other column 0.
    """
    frame = "product_data"
    df = product_data.reset_index(drop=True)
    if costs_type not in COSTS_TYPES:
        raise BLPSpecificationError(f"costs_type must be one of {COSTS_TYPES}, not {costs_type!r}.")
    _require(df, ["prices", "firm_ids", *[c for c in x3 if c != CONSTANT], *absorb], frame)
    if df["firm_ids"].isna().any():
        raise BLPDataError("product_data column 'firm_ids' has missing values: every product needs a firm.")
    if "prices" in x3:
        raise BLPSpecificationError(
            "'prices' cannot be a cost characteristic in X3 (costs are p − markup; prices are endogenous there)."
        )
    dX1, dX2 = price_derivative_arrays(df, index, price_derivatives)
    if not np.any(dX2 != 0) and not np.any(dX1 != 0):
        raise BLPSpecificationError(
            "with a supply side, prices must enter utility: no characteristic depends on prices. Add 'prices' to "
            "nonlinear (or to linear, with a starting value for its coefficient in solve(beta=...))."
        )
    X3 = np.column_stack([np.ones(len(df)) if c == CONSTANT else _numeric(df, c, frame) for c in x3])
    excluded = _columns_by_prefix(df, "supply_instruments")
    Zx = np.column_stack([_numeric(df, c, frame) for c in excluded]) if excluded else np.zeros((len(df), 0))
    exogenous = [k for k, c in enumerate(x3) if c not in share_columns and c != "shares"]
    ZS = np.column_stack([X3[:, exogenous], Zx])
    zs_names = tuple(x3[k] for k in exogenous) + tuple(excluded)
    if ZS.shape[1] < X3.shape[1]:
        raise BLPDataError(
            f"too few supply instruments: X3 has {X3.shape[1]} column(s), {X3.shape[1] - len(exogenous)} of them "
            f"depending on shares (endogenous), but only {ZS.shape[1]} instrument(s) {list(zs_names)}. Add "
            "supply_instruments0, ... columns."
        )
    fe_ids, fe_sizes, hint = index.padded(np.zeros((len(df), 0))).astype(np.int64), (), ""
    if absorb:
        if CONSTANT in x3:
            raise BLPSpecificationError(
                f"collinear cost characteristics: the constant '1' in X3 is absorbed by the fixed effects "
                f"{list(absorb)}. Drop it (a costs formula: start it with '0 +')."
            )
        fe_ids, fe_sizes, X3, ZS = absorbed_columns(df, index, absorb, X3, ZS, frame=frame)
        hint = f" after absorbing {list(absorb)} (a characteristic constant within a fixed effect is absorbed by it)"
    _rank_check(X3, list(x3), "cost characteristics in X3", hint + ". Drop one of them")
    _rank_check(ZS, list(zs_names), "supply instruments", hint + ". Drop the redundant instrument")
    return {
        "X3": index.padded(X3),
        "ZS": index.padded(ZS),
        "dX2": index.padded(dX2),
        "dX1": index.padded(dX1) if np.any(dX1 != 0) else None,
        "zs_names": zs_names,
        "fe_ids": fe_ids,
        "fe_sizes": fe_sizes,
    }


def check_price_coefficients(spec, dX1, linear: tuple[str, ...]) -> None:
    """Under a supply side, the coefficients of X1 columns that move with prices must not be concentrated out."""
    if dX1 is None:
        return
    dX1 = np.asarray(dX1)
    moved = [k for k in range(dX1.shape[-1]) if np.any(dX1[..., k] != 0)]
    names = [linear[k] for k in moved if not spec.has_linear or spec.concentrated[k]]
    if names:
        raise BLPSpecificationError(
            f"with a supply side, markups depend on the coefficients of {names} (linear characteristics that move "
            "with prices), so they cannot be concentrated out of the GMM problem like the other linear parameters: "
            "give them starting values in solve(beta=[...]) (NaN for the others), as PyBLP's beta=; they are then "
            "optimised with θ (beta_bounds=(lower, upper) keeps them away from zero)."
        )


def absorbed_columns(df: pd.DataFrame, index: ProductIndex, absorb, *columns: np.ndarray, frame: str = "product_data"):
    """(padded fixed-effect codes, their sizes, each (N, K) array of ``columns`` absorbed within them)."""
    from .._engine.setup import absorb_columns

    codes, sizes = fixed_effect_codes(df, absorb, frame)
    fe_ids = index.padded(codes).astype(np.int64)
    widths = [a.shape[1] for a in columns]
    stacked = absorb_columns(index.padded(np.column_stack(columns)), fe_ids, index.rows >= 0, tuple(sizes), xp=np)
    return (fe_ids, tuple(sizes), *np.split(index.flat(stacked), np.cumsum(widths)[:-1], axis=1))


def price_derivative_arrays(
    product_data: pd.DataFrame, index: ProductIndex, price_derivatives: dict | None
) -> tuple[np.ndarray, np.ndarray]:
    """∂X1/∂p and ∂X2/∂p, one row per product in row order.

    ``price_derivatives`` maps X1/X2 column names to ∂column/∂price: a number or the name of a column
    (for an interaction such as prices × sugar, the column ``sugar``). ``prices`` itself has derivative 1
    unless overridden; every other column 0.
    """
    frame = "product_data"
    df = product_data.reset_index(drop=True)
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
        if isinstance(d, np.ndarray):  # per row, from a formula (autodiff)
            return np.asarray(d, np.float64)
        if isinstance(d, str):
            _require(df, [d], frame)
            return _numeric(df, d, frame)
        return np.full(len(df), float(d))

    dX1 = np.column_stack([derivative(c) for c in x1]) if x1 else np.zeros((len(df), 0))
    dX2 = np.column_stack([derivative(c) for c in x2]) if x2 else np.zeros((len(df), 0))
    return dX1, dX2


def endogenous_columns(linear: tuple[str, ...], price_derivatives: dict | None, declared) -> tuple[str, ...]:
    """The endogenous X1 columns: ``prices``, every column ``price_derivatives`` says moves with prices (a column name
    or a non-zero number), and the ``declared`` ones (checked to be X1 columns)."""
    if isinstance(declared, str):
        raise BLPSpecificationError(f"endogenous must be a sequence of column names, not the string {declared!r}.")
    declared = tuple(declared)
    unknown = [c for c in declared if c not in linear or c == CONSTANT]
    if unknown:
        raise BLPSpecificationError(
            f"endogenous names {unknown}, which are not columns of the linear characteristics X1 {list(linear)}."
        )
    moving = []
    for name, d in (price_derivatives or {}).items():
        if isinstance(d, np.ndarray):
            if np.any(d != 0):
                moving.append(name)
        elif isinstance(d, str) or (isinstance(d, int | float) and not isinstance(d, bool) and d != 0):
            moving.append(name)
    return tuple(dict.fromkeys((*ENDOGENOUS, *moving, *declared)))


def warn_price_functions(product_data: pd.DataFrame, linear: tuple[str, ...], endogenous: tuple[str, ...]) -> None:
    """Warn about an exogenous X1 column that is an exact function of prices in the data (a pre-built prices², log
    prices, 1/prices or prices × another column): it would instrument itself and be held fixed when prices move."""
    if "prices" not in product_data.columns:
        return
    df = product_data.reset_index(drop=True)
    p = pd.to_numeric(df["prices"], errors="coerce").to_numpy(np.float64)
    if not np.all(np.isfinite(p)) or np.unique(p).size < 5:
        return
    others = {
        c: pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64)
        for c in df.columns
        if c != "prices"
        and pd.api.types.is_numeric_dtype(df[c])
        and not str(c).startswith(("demand_instr", "supply_instr"))
    }
    bases = {"a polynomial in prices": np.column_stack([np.ones_like(p), p, p**2, p**3])}
    if np.all(p > 0):
        bases["log(prices)"] = np.column_stack([np.ones_like(p), np.log(p)])
    if np.all(p != 0):
        bases["1/prices"] = np.column_stack([np.ones_like(p), 1 / p])
    for column in linear:
        if column in (*endogenous, CONSTANT) or column not in others:
            continue
        x = others[column]
        if not np.all(np.isfinite(x)) or np.ptp(x) == 0:
            continue
        scale = np.linalg.norm(x - x.mean())
        found = None
        for what, B in bases.items():
            residual = x - B @ np.linalg.lstsq(B, x, rcond=None)[0]
            if np.linalg.norm(residual) <= 1e-9 * scale:
                found = what
                break
        if found is None and np.all(p != 0):
            ratio = x / p
            for name, v in others.items():
                if name != column and np.ptp(v) > 0 and np.allclose(ratio, v, rtol=1e-10, atol=0):
                    found = f"prices × {name}"
                    break
        if found:
            warnings.warn(
                f"the linear characteristic '{column}' is exactly {found} in product_data, yet it is treated as "
                "exogenous (its own instrument) and held fixed when prices change (elasticities, markups, "
                "counterfactuals). State it in a formula instead, e.g. linear='1 + prices + I(prices**2)' or "
                "'prices:sugar', so that it is endogenous and moves with prices; or declare it with endogenous= and "
                "its price derivative with price_derivatives=.",
                BLPDataWarning,
                stacklevel=3,
            )
