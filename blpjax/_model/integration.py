"""Integration rules for the unobserved taste shocks ν ~ N(0, I_K2).

Each rule returns ``(nodes, weights)`` for one market: nodes (I, K2) and weights (I,) summing to
one. Monte Carlo, scrambled Halton and Latin hypercube draws use SciPy's ``qmc`` (a dependency of
JAX already); MLHS is the modified Latin hypercube of Hess, Train and Polak (2006); ``product`` is
the tensor Gauss–Hermite rule; ``grid`` is a Smolyak sparse grid built from Gauss–Hermite rules
by the combination technique, with coincident nodes merged. ``nested_product`` and ``nested_grid``
use, in place of Gauss–Hermite, the nested rules of Genz and Keister (1996) as arranged by level by
Heiss and Winschel (2008), as PyBLP does; they are computed here (``nested_rule``), not tabulated.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from math import comb

import mpmath
import numpy as np
from scipy.special import roots_hermitenorm
from scipy.stats import norm, qmc

from .._base.errors import BLPSpecificationError

RULES = ("monte_carlo", "halton", "lhs", "mlhs", "product", "grid", "nested_product", "nested_grid")
NESTED_LEVELS = 25


@dataclass(frozen=True)
class Integration:
    """An integration rule.

    Args:
        rule: one of ``monte_carlo``, ``halton``, ``lhs``, ``mlhs``, ``product``, ``grid``,
            ``nested_product``, ``nested_grid`` (PyBLP's names and rules).
        size: draws per market (simulation rules), points per dimension (``product``) or the
            accuracy level (``grid`` and the nested rules: exact for polynomials of degree
            2·size − 1; the nested rules up to level 25).
        seed: seed of NumPy's generator for the simulation rules (markets get independent streams).

    Example:
        >>> nodes, weights = Integration("halton", 100, seed=0).build(dimension=2)
    """

    rule: str
    size: int
    seed: int = 0

    def __post_init__(self):
        if self.rule not in RULES:
            raise BLPSpecificationError(f"Integration rule must be one of {RULES}, got {self.rule!r}.")
        if int(self.size) < 1:
            raise BLPSpecificationError("Integration size must be a positive integer.")
        if self.rule.startswith("nested") and int(self.size) > NESTED_LEVELS:
            raise BLPSpecificationError(
                f"Integration({self.rule!r}, {self.size}): the nested rules are built up to level {NESTED_LEVELS} "
                "(35 nodes per dimension, exact to degree 51), as PyBLP's. Use a lower level, or 'grid'/'product'."
            )

    @property
    def simulated(self) -> bool:
        return self.rule in ("monte_carlo", "halton", "lhs", "mlhs")

    def build(self, dimension: int, market: int = 0, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Nodes and weights of one market (``market`` selects an independent random stream)."""
        n = int(self.size if size is None else size)
        if dimension == 0:
            return np.zeros((n if self.simulated else 1, 0)), np.full(
                n if self.simulated else 1, 1 / (n if self.simulated else 1)
            )
        rng = np.random.default_rng([self.seed, market])
        if self.rule == "monte_carlo":
            return rng.standard_normal((n, dimension)), np.full(n, 1 / n)
        if self.rule == "halton":
            u = qmc.Halton(d=dimension, scramble=True, seed=rng).random(n)
        elif self.rule == "lhs":
            u = qmc.LatinHypercube(d=dimension, seed=rng).random(n)
        elif self.rule == "mlhs":
            u = np.column_stack([rng.permutation((np.arange(n) + rng.uniform()) / n) for _ in range(dimension)])
        elif self.rule.endswith("product"):
            return product_rule(dimension, n, nested=self.rule == "nested_product")
        else:
            return sparse_grid(dimension, n, nested=self.rule == "nested_grid")
        u = np.clip(u, 1e-12, 1 - 1e-12)
        return norm.ppf(u), np.full(n, 1 / n)


def _hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Hermite rule for the standard normal with n points."""
    x, w = roots_hermitenorm(n)
    return x, w / w.sum()


def _moment(k: int):
    """E[x^k] for x ~ N(0, 1), exactly (as an mpmath number)."""
    return mpmath.mpf(0) if k % 2 else mpmath.fac2(k - 1) if k else mpmath.mpf(1)


def _extend(old: list, added: int) -> list:
    """Kronrod–Patterson extension of symmetric nodes ``old`` by ``added`` symmetric nodes: the roots
    of the even monic polynomial p of degree ``added`` with E[p(x) x^k Π(x − old)] = 0 for every k
    where the integrand is not odd (Genz and Keister, 1996)."""
    pi = [mpmath.mpf(1)]  # coefficients of Π(x − old), lowest degree first
    for o in old:
        pi = [(pi[k - 1] if k else 0) - o * (pi[k] if k < len(pi) else 0) for k in range(len(pi) + 1)]

    def expect(k, power):  # E[x^k · x^power · Π(x)]
        return sum(c * _moment(k + power + j) for j, c in enumerate(pi))

    half = added // 2
    ks = [k for k in range(added) if (k + len(old)) % 2 == 0][:half]
    a = mpmath.lu_solve(
        mpmath.matrix([[expect(k, 2 * j) for j in range(half)] for k in ks]),
        mpmath.matrix([-expect(k, added) for k in ks]),
    )
    # roots of x^added + Σ a_j x^(2j) as a polynomial in y = x²
    ys = mpmath.polyroots([1] + [a[j] for j in reversed(range(half))], maxsteps=200, extraprec=200)
    new = [mpmath.sqrt(mpmath.re(y)) for y in ys]
    return sorted(old + new + [-x for x in new])


def _degree(nodes, weights) -> int:
    """The largest d such that the rule integrates every x^k, k ≤ d, exactly under N(0, 1) (odd k by symmetry)."""
    d = 0
    while abs(sum(w * x ** (d + 2) for x, w in zip(nodes, weights, strict=True)) - _moment(d + 2)) < mpmath.mpf(10) ** (
        -40
    ) * _moment(d + 2):
        d += 2
    return d + 1


@lru_cache
def _nested_rules() -> tuple[tuple[int, list, list], ...]:
    """Every nested rule with its degree, smallest first: (degree, nodes, weights) at 80 digits.

    Kronrod–Patterson steps extend {0} to 3, 9, 19 and 35 nodes (Genz and Keister, 1996); between them Heiss and
    Winschel (2008) use the rules that leave out the middle pair of the nodes the next step adds (7 and 17 nodes),
    or of the 8 pairs of the last step both middle pairs, then the lower one (31 and 33 nodes). Weights are interpolatory (they integrate x^k exactly for k below the number of nodes).
    """
    with mpmath.workdps(80):
        chain = [[mpmath.mpf(0)]]
        for added in (2, 6, 10, 16):
            chain.append(_extend(chain[-1], added))
        rules = [chain[0]]
        for before, after in zip(chain, chain[1:], strict=False):
            new = sorted(x for x in after if x > 0 and all(abs(x - o) > 1e-40 for o in before))
            if len(new) > 1:  # the middle pair left out; of two middle pairs, both, then the lower one
                k = len(new) // 2
                for middle in ([new[k]],) if len(new) % 2 else ([new[k - 1], new[k]], [new[k - 1]]):
                    rules.append([x for x in after if all(abs(abs(x) - m) > 1e-40 for m in middle)])
            rules.append(after)
        out = []
        for nodes in rules:
            vandermonde = mpmath.matrix([[x**k for x in nodes] for k in range(len(nodes))])
            weights = list(mpmath.lu_solve(vandermonde, mpmath.matrix([_moment(k) for k in range(len(nodes))])))
            out.append((_degree(nodes, weights), nodes, weights))
        return tuple(sorted(out, key=lambda r: len(r[1])))


@lru_cache
def nested_rule(level: int) -> tuple[np.ndarray, np.ndarray]:
    """The nested (Genz–Keister) univariate rule of a level: the smallest of :func:`_nested_rules` exact to degree
    2·level − 1 for N(0, 1), as PyBLP's tables (levels 1–25)."""
    for degree, nodes, weights in _nested_rules():
        if degree >= 2 * level - 1:
            return np.array([float(x) for x in nodes]), np.array([float(w) for w in weights])
    raise BLPSpecificationError(f"nested rules go up to level {NESTED_LEVELS}, not {level}.")


def _univariate(level: int, nested: bool) -> tuple[np.ndarray, np.ndarray]:
    return nested_rule(level) if nested else _hermite(level)


def product_rule(dimension: int, points: int, nested: bool = False) -> tuple[np.ndarray, np.ndarray]:
    x, w = _univariate(points, nested)
    nodes = np.array(list(itertools.product(x, repeat=dimension)))
    weights = np.prod(np.array(list(itertools.product(w, repeat=dimension))), axis=1)
    return nodes, weights


def sparse_grid(dimension: int, level: int, nested: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Smolyak combination of the univariate rules of levels 1, 2, ... (Gauss–Hermite with that
    many points, or the nested rules), exact for polynomials of total degree 2·level − 1."""
    acc: dict[tuple, float] = {}
    q = level + dimension - 1
    for total in range(max(dimension, q - dimension + 1), q + 1):
        coef = (-1) ** (q - total) * comb(dimension - 1, q - total)
        for levels in itertools.product(range(1, total + 1), repeat=dimension):
            if sum(levels) != total:
                continue
            rules = [_univariate(k, nested) for k in levels]
            for combo in itertools.product(*[range(len(r[0])) for r in rules]):
                node = tuple(round(float(rules[d][0][i]), 12) + 0.0 for d, i in enumerate(combo))
                weight = coef * np.prod([rules[d][1][i] for d, i in enumerate(combo)])
                acc[node] = acc.get(node, 0.0) + weight
    nodes = np.array([k for k, v in acc.items() if abs(v) > 1e-15])
    weights = np.array([v for v in acc.values() if abs(v) > 1e-15])
    return nodes, weights / weights.sum()
