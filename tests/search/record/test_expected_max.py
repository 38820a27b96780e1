"""search.record.expected_max (Dodge et al. 2019) against hand-worked values and brute force."""
import itertools

import numpy as np
import pytest

from search.record.expected_max import curve, expected_max, figure, line


def test_closed_form_by_hand_and_by_enumeration():
    v = [0.3, 0.1, 0.2]
    # n = 2 by hand: 0.1 * (1/9) + 0.2 * (4/9 - 1/9) + 0.3 * (1 - 4/9) = 2.2 / 9
    assert expected_max(v, 2)[0] == pytest.approx(2.2 / 9)
    assert expected_max(v, 1)[0] == pytest.approx(0.2)                 # the mean
    for n in (1, 2, 3, 4):                                              # every ordered draw of n
        brute = np.mean([max(c) for c in itertools.product(v, repeat=n)])
        assert expected_max(v, n)[0] == pytest.approx(brute)
    ties = [0.5, 0.5, 0.7, 0.1]
    brute = np.mean([max(c) for c in itertools.product(ties, repeat=3)])
    assert expected_max(ties, 3)[0] == pytest.approx(brute)


def test_curve_band_and_summary_line(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.uniform(0.6, 0.8, 8)
    c = curve(v, n_boot=200)
    assert c["n"] == list(range(1, 17)) and c["n_trials"] == 8
    mean = np.array(c["mean"])
    assert np.all(np.diff(mean) >= -1e-12) and mean[-1] <= v.max() + 1e-12   # rises, capped at the best
    assert np.all(np.array(c["lo"]) <= mean + 1e-12) and np.all(mean <= np.array(c["hi"]) + 1e-12)
    text = line(c)
    assert text.startswith(f"estimated expected best val ES-AUC with 8 trials {mean[7]:.3f}, with 16 {mean[15]:.3f}")
    assert f"~{mean[15] - mean[7]:.3f}" in text
    assert figure(c, tmp_path).stat().st_size > 0


def test_non_finite_values_are_dropped_and_counted():
    """A trial with an undefined validation ES-AUC (NaN) or an infinite one is left out: the
    curve is the one of the finite values, and the line says how many were dropped."""
    v = [0.70, 0.75, 0.72]
    with_nan = curve(v + [float("nan"), float("inf")], n_boot=50, seed=1)
    clean = curve(v, n_boot=50, seed=1)
    assert with_nan["n_trials"] == 3 and with_nan["n_dropped"] == 2
    assert with_nan["mean"] == pytest.approx(clean["mean"]) and np.all(np.isfinite(with_nan["lo"]))
    assert "2 undefined value(s) left out" in line(with_nan) and "an estimate" in line(with_nan)
    assert curve([float("nan")] * 3) is None
