"""Linear IV-GMM pieces shared by every model: concentrated β, weighting matrices, covariances.

Notation follows PyBLP. With N products, absorbed instruments Z̃ and regressors X̃ (fixed effects
removed), mean moments ḡ = Z̃'ξ/N and objective q = N ḡ'Wḡ. β is concentrated out:
β(δ) = (X̃'Z̃WZ̃'X̃)⁻¹X̃'Z̃WZ̃'δ, so ḡ = C Z̃'δ/N with C = I − (Z̃'X̃/N)B and q = N ḡ'Wḡ (C and B precomputed once per W;
ḡ is formed before the quadratic form so that a small q is not lost to cancellation).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .._base.errors import BLPSpecificationError

SE_TYPES = ("robust", "unadjusted", "clustered")


def symmetric_inverse(A: Float[Array, "M M"], xp=jnp) -> Float[Array, "M M"]:
    """The Moore–Penrose pseudo-inverse of a symmetric matrix, symmetrised: the classic inverse when A is
    well conditioned, and what PyBLP computes by default (``options.pseudo_inverses``; singular values
    below max(M, N)·eps of the largest are dropped) when it is not. ``xp=numpy`` on the host."""
    A = xp.asarray(A, xp.float64)
    rtol = max(A.shape) * np.finfo(np.float64).eps
    inv = xp.linalg.pinv(A, rtol=rtol)  # by SVD, as PyBLP (an eigendecomposition loses digits on small eigenvalues)
    return (inv + inv.T) / 2


def symmetric_inverse_host(A) -> np.ndarray:
    """:func:`symmetric_inverse` in NumPy (host-side set-up)."""
    return symmetric_inverse(A, xp=np)


def condition_number(A, xp=jnp):
    """The 2-norm condition number of a symmetric matrix (inf when singular, NaN when not finite), as PyBLP
    checks against ``options.singular_tol``."""
    finite = xp.all(xp.isfinite(A))
    s = xp.linalg.svd(xp.where(finite, A, 0.0), compute_uv=False)
    cond = xp.where(xp.min(s) > 0, xp.max(s) / xp.where(xp.min(s) > 0, xp.min(s), 1.0), xp.inf)
    return xp.where(finite, cond, xp.nan)  # a non-finite matrix is reported elsewhere


def check_weighting_matrix(W, size: int, what: str = "W") -> np.ndarray:
    """A user weighting matrix as float64, checked before any numerics: shape, finite, symmetric, positive definite.

    Raises:
        BLPSpecificationError: naming what is wrong and how to fix it.
    """
    W = np.asarray(W, dtype=np.float64)
    if W.shape != (size, size):
        raise BLPSpecificationError(
            f"{what} must be {size}×{size} (one row per instrument, then one per micro moment), not {W.shape}."
        )
    if not np.all(np.isfinite(W)):
        raise BLPSpecificationError(f"{what} has {int(np.sum(~np.isfinite(W)))} NaN or infinite entries.")
    scale = max(float(np.max(np.abs(W))), 1e-300)
    asym = float(np.max(np.abs(W - W.T)))
    if asym > 1e-8 * scale:
        raise BLPSpecificationError(
            f"{what} is not symmetric (max |W − Wᵀ| = {asym:.3g}); a GMM weighting matrix must be symmetric: "
            "pass (W + W.T) / 2 if the asymmetry is rounding."
        )
    smallest = float(np.linalg.eigvalsh((W + W.T) / 2)[0])
    if smallest <= 0:
        raise BLPSpecificationError(
            f"{what} is not positive definite (smallest eigenvalue {smallest:.3g}): the GMM objective N ḡ'Wḡ would "
            "not be bounded below. Use the inverse of a moment covariance matrix (e.g. results.updated_W)."
        )
    return W


class Concentration(eqx.Module):
    """Precomputed maps for one weighting matrix W.

    With some linear parameters b_f not concentrated out (fixed, or optimised with θ: ``Theta.linear``), the moments
    are those of ḡ_δ − (Z'X/N) b_f: :meth:`residual` subtracts them, and B and C concentrate out the other columns only
    (B's rows of the others are zero).
    """

    W: Float[Array, "M M"]
    B: Float[Array, "K1 M"]  # β = B ḡ_δ with ḡ_δ = Z̃'δ/N
    C: Float[Array, "M M"]  # ḡ = C ḡ_δ
    ZX: Float[Array, "M K1"] | None = None  # Z'X/N, kept when some columns are not concentrated out

    @classmethod
    def build(
        cls, ZX: Float[Array, "M K1"], W: Float[Array, "MW MW"], N: int | None = None, xp=jnp, concentrated=None
    ) -> Concentration:
        """Maps for W; with micro moments W is larger than M×M and β uses its product block (as PyBLP).

        ``concentrated``: per column of ``ZX``, whether its parameter is concentrated out (default: all).
        ``xp=numpy`` computes them on the host (see :meth:`build_host`); the default is traceable.
        """
        M, K1 = ZX.shape
        keep = np.ones(K1, bool) if concentrated is None else np.asarray(concentrated, bool)
        WD = W[:M, :M]
        if keep.any():
            Zc = ZX[:, np.flatnonzero(keep)]
            Bc = xp.linalg.solve(Zc.T @ WD @ Zc, Zc.T @ WD)
            C = xp.eye(M) - Zc @ Bc
            B = np.eye(K1)[:, keep] @ Bc  # zero rows for the parameters not concentrated out
        else:
            B = xp.zeros((K1, M))
            C = xp.eye(M)
        return cls(jnp.asarray(W), jnp.asarray(B), jnp.asarray(C), None if keep.all() else jnp.asarray(ZX))

    @classmethod
    def build_host(cls, ZX, W, concentrated=None) -> Concentration:
        """:meth:`build` in NumPy, for the host side of a solve (no XLA program to compile per shape)."""
        return cls.build(np.asarray(ZX, np.float64), np.asarray(W, np.float64), xp=np, concentrated=concentrated)

    def residual(self, g_delta: Float[Array, " M"], linear: Float[Array, " K1"] | None) -> Float[Array, " M"]:
        """ḡ_δ less the moments of the linear parameters that are not concentrated out."""
        if linear is None or self.ZX is None:
            return g_delta
        return g_delta - self.ZX @ linear

    def coefficients(self, g_delta, linear) -> Float[Array, " K1"]:
        """(β, γ): the concentrated ones from the residual moments, the others as given."""
        b = self.B @ self.residual(g_delta, linear)
        return b if linear is None or self.ZX is None else b + linear


def instrument_moments(Z: Float[Array, "T J M"], v: Float[Array, "T J"], mask: Bool[Array, "T J"], N: int):
    """Z̃'v / N over real products."""
    return jnp.einsum("tjm,tj->m", Z, jnp.where(mask, v, 0.0)) / N


def moment_covariances(
    xi: Float[Array, "T J"],
    Z: Float[Array, "T J M"],
    mask: Bool[Array, "T J"],
    N: int,
    se_type: str,
    cluster_ids: Int[Array, "T J"] | None = None,
    n_clusters: int = 0,
    center: bool = True,
) -> Float[Array, "M M"]:
    """S, the covariance of the product moments z_j ξ_j (PyBLP's conventions)."""
    return stacked_moment_covariances([(xi, Z)], mask, N, se_type, cluster_ids, n_clusters, center)


def stacked_moment_covariances(
    blocks: list[tuple[Float[Array, "T J"], Float[Array, "T J Mb"]]],
    mask: Bool[Array, "T J"],
    N: int,
    se_type: str,
    cluster_ids: Int[Array, "T J"] | None = None,
    n_clusters: int = 0,
    center: bool = True,
) -> Float[Array, "M M"]:
    """S of stacked product moments (z_Dj ξ_j, z_Sj ω_j, ...): one (residual, instruments) pair per block.

    Robust and clustered S are the (centred) outer products of the stacked contributions;
    unadjusted S has blocks Σ_ab Z_a'Z_b/N with Σ the covariance of the residuals (as PyBLP).
    """
    w = mask.astype(blocks[0][0].dtype)
    flat = [((u * w).reshape(-1), Z.reshape(-1, Z.shape[-1]) * w.reshape(-1, 1)) for u, Z in blocks]
    if se_type == "unadjusted":
        U = jnp.stack([u for u, _ in flat], axis=1)  # (TJ, B)
        U = (U - jnp.sum(U, axis=0, keepdims=True) / N) * w.reshape(-1, 1)
        sigma_u = U.T @ U / N
        rows = [
            jnp.concatenate([sigma_u[a, b] * Za.T @ Zb / N for b, (_, Zb) in enumerate(flat)], axis=1)
            for a, (_, Za) in enumerate(flat)
        ]
        S = jnp.concatenate(rows, axis=0)
    else:
        g = jnp.concatenate([Z * u[:, None] for u, Z in flat], axis=1)
        if center:
            g = (g - jnp.sum(g, axis=0, keepdims=True) / N) * w.reshape(-1, 1)
        if se_type == "clustered":
            g = jax.ops.segment_sum(g, cluster_ids.reshape(-1), num_segments=n_clusters)
        S = g.T @ g / N
    return (S + S.T) / 2


def parameter_covariances(
    G: Float[Array, "M P"], W: Float[Array, "M M"], S: Float[Array, "M M"], robust: bool
) -> tuple[Float[Array, "P P"], Array]:
    """(G'WG)⁺ G'WSWG (G'WG)⁺, or (G'WG)⁺ when not robust (PyBLP's formula, before /N), and the condition
    number of G'WG (the matrix inverted: large values mean some parameters are not identified)."""
    GWG = G.T @ W @ G
    bread = symmetric_inverse(GWG)
    cov = bread @ G.T @ W @ S @ W @ G @ bread if robust else bread
    return (cov + cov.T) / 2, condition_number(GWG)
