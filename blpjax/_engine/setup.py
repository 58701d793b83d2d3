"""The θ-independent set-up of an estimation problem: :class:`Setup`, on the padded (T, J) layout.

Everything that does not depend on θ (absorbed instruments and regressors, Z̃'X̃, the supply
side's arrays) is computed once here, on the host; the objective itself is one per-market
contribution and one reduction (:mod:`._engine`) mapped over markets by a layout (:mod:`._layouts`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jaxtyping import Array, Bool, Float, Int

from .._base.config import jit
from .._model.absorb import absorb
from .._model.containers import Agents, Products
from .._model.market import Market
from .._supply.bertrand import SupplySetup


class Setup(eqx.Module):
    """θ-independent arrays of one estimation problem (fixed effects already absorbed)."""

    market: Market  # batched over T
    shares: Float[Array, "T J"]
    mask: Bool[Array, "T J"]
    Z: Float[Array, "T J M"]  # absorbed instruments, 0 on padding
    X1: Float[Array, "T J K1"]  # absorbed linear characteristics, 0 on padding
    ZX: Float[Array, "M K1"]  # Z̃'X̃/N
    fe_ids: Int[Array, "T J F"]
    N: int = eqx.field(static=True)
    K2: int = eqx.field(static=True)
    fe_sizes: tuple[int, ...] = eqx.field(static=True)
    supply: SupplySetup | None = None

    @property
    def elements(self) -> int:
        """Markets × products × agents of the padded arrays (the size of one I×J quantity for all markets)."""
        T, J = self.mask.shape
        return T * J * self.market.weights.shape[-1]

    @property
    def M(self) -> int:
        """Product moments: demand instruments, then supply instruments."""
        return self.Z.shape[-1] + (self.supply.MS if self.supply is not None else 0)

    def ZX_all(self, host: bool = False) -> Float[Array, "M K"]:
        """Z'X/N of the stacked (demand, supply) linear IV problem: block diagonal in (β, γ).

        ``host=True`` returns it in NumPy (host-side set-up: no XLA program per shape).
        """
        xp, block_diag = (np, scipy.linalg.block_diag) if host else (jnp, jax.scipy.linalg.block_diag)
        ZX = xp.asarray(self.ZX, xp.float64)
        if self.supply is None:
            return ZX
        return block_diag(ZX, xp.asarray(self.supply.ZX3, xp.float64))

    @classmethod
    def build(
        cls, products: Products, agents: Agents, supply: SupplySetup | None = None, epsilon_scale: float = 1.0
    ) -> Setup:
        # host-side set-up in NumPy (one jitted absorption at most): no XLA program per array shape
        mask = products.mask
        mask_np = np.asarray(mask)
        shares = np.asarray(products.shares)
        log_S = jnp.asarray(np.where(mask_np, np.log(np.where(mask_np, shares, 1.0)), 0.0))
        market = Market(
            products.X2,
            agents.nodes,
            agents.demographics,
            agents.weights,
            log_S,
            mask,
            products.nest_ids,
            agents.product_demographics,
            agents.availability,
            float(epsilon_scale),
        )
        M = products.Z.shape[-1]
        ZX1 = absorb_columns(
            np.concatenate([np.asarray(products.Z), np.asarray(products.X1)], axis=-1),
            products.fe_ids,
            mask_np,
            products.fe_sizes,
            xp=np,
        )
        Z, X1 = ZX1[..., :M], ZX1[..., M:]
        N = products.n_products
        ZX = np.einsum("tjm,tjk->mk", Z, X1) / N
        return cls(
            market,
            products.shares,
            mask,
            jnp.asarray(Z),
            jnp.asarray(X1),
            jnp.asarray(ZX),
            products.fe_ids,
            N,
            products.X2.shape[-1],
            products.fe_sizes,
            supply,
        )


def absorb_columns(values, fe_ids, mask, sizes, xp=jnp):
    """Absorb fixed effects from (T, J, K) arrays (identity when nothing is absorbed).

    ``xp=numpy`` for host-side set-up: NumPy in and out, the absorption itself one jitted call
    (none without fixed effects), so no eager XLA program is compiled per array shape.
    """
    values, mask = xp.asarray(values, xp.float64), xp.asarray(mask)
    T, J, K = values.shape
    values = xp.where(mask[..., None], values, 0.0)
    if not sizes or K == 0:
        return values
    r, _, _ = _absorb_jit(
        jnp.asarray(values.reshape(T * J, K)),
        jnp.asarray(xp.asarray(fe_ids).reshape(T * J, -1)),  # reshaped before any transfer: no eager XLA op
        jnp.asarray(mask.reshape(-1)),
        sizes,
    )
    return xp.asarray(r).reshape(T, J, K)


_absorb_jit = jit(absorb, once=True, inline=True, static_argnums=(3, 4, 5))
