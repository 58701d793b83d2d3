"""Integration rules against PyBLP's: the same nodes and weights for the product rules and sparse
grids, Gauss–Hermite and nested (Genz–Keister / Heiss–Winschel), as sets of (node, weight) rows."""

import numpy as np
import pyblp
import pytest

import blpjax


def _rows(nodes, weights):
    keep = np.abs(weights) > 1e-15
    nodes, weights = np.round(nodes[keep], 12) + 0.0, weights[keep] / weights[keep].sum()
    order = np.lexsort(nodes[:, ::-1].T)
    return nodes[order], weights[order]


@pytest.mark.parametrize("rule", ["product", "nested_product", "grid", "nested_grid"])
@pytest.mark.parametrize(
    ("dimension", "level"), [(1, 1), (1, 4), (1, 9), (1, 15), (1, 16), (1, 17), (1, 25), (2, 3), (2, 7), (3, 5), (4, 4)]
)
def test_rules_match_pyblp(rule, dimension, level):
    ours = _rows(*blpjax.Integration(rule, level).build(dimension))
    theirs = _rows(*pyblp.Integration(rule, level)._build(dimension))
    assert ours[0].shape == theirs[0].shape
    np.testing.assert_allclose(ours[0], theirs[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-10, atol=1e-14)


def test_nested_rules_are_exact_to_their_degree():
    """Each level integrates x^k for k ≤ 2·level − 1 exactly under N(0, 1) (closed-form moments)."""
    for level in range(1, 26):
        x, w = blpjax.Integration("nested_product", level).build(1)
        for k in range(0, 2 * level, 2):
            exact = float(np.prod(np.arange(k - 1, 0, -2, dtype=np.float64))) if k else 1.0
            assert abs(w @ x[:, 0] ** k - exact) <= 1e-9 * exact, (level, k)


def test_nested_levels_above_twenty_five_are_refused():
    with pytest.raises(blpjax.BLPSpecificationError, match="up to level 25"):
        blpjax.Integration("nested_grid", 26)
