"""agent_data → padded :class:`Agents`: weights, nodes (given or built by an integration rule), demographics
(product-specific ones too) and availability, validated before any numerics."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._base.errors import BLPDataError, BLPSpecificationError
from .._model.containers import Agents
from .._model.integration import Integration
from .checks import check_agent_weights
from .data import ProductIndex, _columns_by_prefix, _numeric, _pad, _require, _unique_columns


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
