"""Padded per-market containers for the pandas-free numerical core.

Every per-product array has a leading market axis T and a padded product axis J (the largest
market's product count); every per-agent array has T and a padded agent axis I. Padded products
have ``mask == False`` and exactly zero share; padded agents have zero integration weight.
"""

from __future__ import annotations

import equinox as eqx
from jaxtyping import Array, Bool, Float, Int


class Products(eqx.Module):
    """Product data of T markets, padded to J products per market.

    Attributes:
        shares: observed market shares s_jt (0 on padding).
        mask: True for real products.
        prices: prices p_jt (0 on padding).
        X1: linear characteristics (fixed effects not absorbed yet).
        X2: nonlinear characteristics (may have K2 = 0).
        Z: demand instruments, the exogenous columns of X1 followed by the excluded instruments.
        nest_ids: nest index in [0, n_nests) (0 on padding, or everywhere for non-nested models).
        firm_ids: firm index (0 on padding).
        cluster_ids: cluster index for clustered standard errors.
        fe_ids: one column of level codes per absorbed fixed-effect dimension.
        n_nests: number of nests H (0 means no nesting).
        fe_sizes: number of levels of each absorbed dimension.
        n_clusters: number of clusters.
        n_products: number N of real products (the GMM sample size).
    """

    shares: Float[Array, "T J"]
    mask: Bool[Array, "T J"]
    prices: Float[Array, "T J"]
    X1: Float[Array, "T J K1"]
    X2: Float[Array, "T J K2"]
    Z: Float[Array, "T J M"]
    nest_ids: Int[Array, "T J"]
    firm_ids: Int[Array, "T J"]
    cluster_ids: Int[Array, "T J"]
    fe_ids: Int[Array, "T J F"]
    n_nests: int = eqx.field(static=True)
    fe_sizes: tuple[int, ...] = eqx.field(static=True)
    n_clusters: int = eqx.field(static=True)
    n_products: int = eqx.field(static=True)

    @property
    def T(self) -> int:
        return self.shares.shape[0]

    @property
    def J(self) -> int:
        return self.shares.shape[1]


class Agents(eqx.Module):
    """Agents (integration nodes) of T markets, padded to I agents per market.

    Attributes:
        weights: integration weights w_it, summing to one within a market, 0 on padding.
        nodes: unobserved taste shocks ν_it, one column per X2 characteristic.
        demographics: observed demographics d_it.
        product_demographics: every demographic per agent and product, d_ijt, when some are product-specific
            (a distance to each product), else None.
        availability: 1 where product j is available to agent i, 0 where not, or None (all available).
    """

    weights: Float[Array, "T I"]
    nodes: Float[Array, "T I K2"]
    demographics: Float[Array, "T I D"]
    product_demographics: Float[Array, "T I J D"] | None = None
    availability: Float[Array, "T I J"] | None = None

    @property
    def I(self) -> int:
        return self.weights.shape[1]
