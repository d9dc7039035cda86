"""Endpoint classification and Himmelblau's basins of attraction under plain GD."""

import numpy as np
import pytest

from sandbox import basins, landscapes

HIMMELBLAU_MINIMA = np.array(
    [[3.0, 2.0], [-2.805118, 3.131312], [-3.779310, -3.283186], [3.584428, -1.848126]]
)


def test_classify_labels_nearest_point_not_converged_and_diverged():
    points = np.array([[0.0, 0.0], [1.0, 1.0]])
    x = np.array([[0.001, 0.0], [0.99, 1.0], [0.5, 0.5], [np.nan, 0.0], [0.0, 0.0]])
    labels = basins.classify(x, points, tol=0.05, diverged=[False, False, False, False, True])
    np.testing.assert_array_equal(labels, [0, 1, -1, -2, -2])
    np.testing.assert_allclose(basins.fractions(labels, 2), [0.2, 0.2, 0.2, 0.4], rtol=0)


def test_classify_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="`points` must have shape"):
        basins.classify(np.zeros((3, 2)), np.zeros((2, 3)), tol=0.1)
    with pytest.raises(ValueError, match="`tol` must be positive"):
        basins.classify(np.zeros((3, 2)), np.zeros((2, 2)), tol=0.0)
    with pytest.raises(ValueError, match="`labels` must not be empty"):
        basins.fractions([], 2)
    with pytest.raises(ValueError, match=r"`diverged` must have shape \[3\] like `x`, got \(2,\)"):
        basins.classify(np.zeros((3, 2)), np.zeros((2, 2)), tol=0.1, diverged=[True, False])


def test_himmelblau_basin_fractions_for_plain_gd():
    # Reference: GD at lr 0.01 for 1000 steps from 401 x 401 starts on [-6, 6]^2.
    labels = basins.basin_map(
        "himmelblau", [[-6, 6], [-6, 6]], 401, HIMMELBLAU_MINIMA, steps=1000, lr=0.01, tol=1e-2
    )
    frac = basins.fractions(labels, 4)
    np.testing.assert_allclose(frac[:4], [0.263, 0.261, 0.238, 0.237], atol=0.01)
    assert frac[4] + frac[5] < 0.01  # nearly every start converges
    # The stored minima are the same points (to the 6 digits given above).
    stored = landscapes.get("himmelblau").minima
    for m in HIMMELBLAU_MINIMA:
        assert np.min(np.linalg.norm(stored - m, axis=1)) < 1e-5


def test_basin_map_orientation_rows_are_y():
    # The double well's minima are (+-1, 0): the left half of the map belongs to (-1, 0).
    lscape = landscapes.get("double_well")
    labels = basins.basin_map(
        lscape.fn, [[-2, 2], [-1, 1]], (5, 8), lscape.minima, steps=500, lr=0.05
    )
    left = int(np.argmin(lscape.minima[:, 0]))
    assert np.all(labels[:, :4] == left) and np.all(labels[:, 4:] == 1 - left)


def test_cluster_groups_points_within_tol_of_a_groups_first_point():
    x = np.array([[0.0, 0.0], [0.01, 0.0], [1.0, 1.0], [0.0, 0.02], [1.0, 1.03]])
    centres, counts, spread = basins.cluster(x, tol=0.05)
    np.testing.assert_allclose(centres, [[0.01 / 3, 0.02 / 3], [1.0, 1.015]], rtol=1e-12)
    np.testing.assert_array_equal(counts, [3, 2])
    # The largest distance of a point from its group's mean: 0.015 in the second group (the
    # first's largest is |(0, 0.02) - (1/300, 2/300)| = 0.0137).
    np.testing.assert_allclose(spread, 0.015, rtol=1e-9)
    centres, counts, _ = basins.cluster(np.zeros((0, 2)), tol=0.05)
    assert centres.shape == (0, 2) and counts.shape == (0,)
