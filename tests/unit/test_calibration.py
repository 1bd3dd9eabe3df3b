"""Calibration maps (PAV, Platt, field-aware fallback, serialisation) and metrics: numpy only."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from esmm.calibration import maps as C
from esmm.calibration.metrics import ece, field_rce, pcoc


def brute_isotonic(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit by trying every partition into blocks (small n only)."""
    n = len(y)
    best, best_fit = np.inf, None
    for cuts in itertools.product([0, 1], repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        fit = np.empty(n)
        for a, b in zip(bounds[:-1], bounds[1:]):
            fit[a:b] = np.sum(w[a:b] * y[a:b]) / np.sum(w[a:b])
        if np.all(np.diff(fit) >= -1e-12):
            loss = np.sum(w * (y - fit) ** 2)
            if loss < best - 1e-12:
                best, best_fit = loss, fit
    return best_fit


@pytest.mark.parametrize("seed", range(25))
def test_pav_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 9))
    x = np.sort(rng.choice(20, size=n, replace=False)).astype(float)
    y = rng.random(n).round(2)
    w = rng.integers(1, 4, n).astype(float)
    cx, cy, cw = C.pav(x, y, w)
    # Expand blocks back to rows: block k covers the next rows whose weights sum to cw[k].
    per_row, k, acc = np.empty(n), 0, 0.0
    for i in range(n):
        per_row[i] = cy[k]
        acc += w[i]
        if np.isclose(acc, cw[k]):
            k, acc = k + 1, 0.0
    np.testing.assert_allclose(per_row, brute_isotonic(y, w), atol=1e-9)
    assert np.all(np.diff(cy) > 0)  # equal adjacent blocks are merged


def test_pav_pools_equal_scores():
    cx, cy, cw = C.pav(np.array([0.1, 0.1, 0.2]), np.array([1.0, 0.0, 1.0]))
    np.testing.assert_allclose(cy, [0.5, 1.0])
    np.testing.assert_allclose(cw, [2.0, 1.0])


def test_isotonic_map_monotone_strict_and_no_zero():
    rng = np.random.default_rng(0)
    p = rng.random(5000) * 0.1
    y = (rng.random(5000) < p * 0.5).astype(float)
    m = C.Map.fit("isotonic", p, y)
    grid = np.sort(rng.random(2000))
    out = m(grid)
    assert np.all(np.diff(out) > 0), "strictly increasing where raw scores differ"
    assert out.min() > 0 and out.max() < 1
    # On its own calibration set the map reproduces the labels' total.
    assert m(p).sum() == pytest.approx(y.sum(), rel=1e-6)


def test_platt_recovers_a_known_scaling():
    rng = np.random.default_rng(1)
    z = rng.normal(-3, 1, 200_000)
    p_raw = 1 / (1 + np.exp(-z))
    p_true = 1 / (1 + np.exp(-(0.7 * z - 0.4)))
    y = (rng.random(len(z)) < p_true).astype(float)
    a, b = C.fit_platt(p_raw, y)
    assert abs(a - 0.7) < 0.05 and abs(b + 0.4) < 0.15


def _maps(fields=("position",), min_count=5):
    rng = np.random.default_rng(3)
    n = 4000
    pos = rng.integers(1, 4, n)
    pctr = rng.random(n) * 0.3
    click = (rng.random(n) < pctr * np.where(pos == 1, 1.0, 0.5)).astype(int)
    conv = (rng.random(n) < 0.3).astype(int) * click
    pctcvr = pctr * 0.4
    return C.CalibrationMaps.fit(
        "m-1",
        pctr,
        pctcvr,
        click,
        conv,
        {"position": pos},
        fields=list(fields),
        min_count=min_count,
        dates=["2026-11-08"],
    ), pos


def test_pcvr_is_ratio_clipped_and_identity_exact():
    maps, _ = _maps(fields=())
    pctr = np.array([0.01, 0.2, 0.5])
    pctcvr = np.array([0.009, 0.19, 0.6])  # raw pctcvr > pctr on purpose in the last row
    c_ctr, c_cvr, c_ctcvr = maps.apply(pctr, pctcvr)
    assert np.all((c_cvr >= 0) & (c_cvr <= 1))
    np.testing.assert_allclose(c_ctcvr, c_ctr * c_cvr, rtol=0, atol=0)
    np.testing.assert_allclose(c_ctcvr, np.minimum(maps.global_maps["pctcvr"](pctcvr), c_ctr))


def test_value_below_min_count_falls_back_to_global_map():
    rng = np.random.default_rng(5)
    n = 3000
    pos = np.where(np.arange(n) < 2900, 1, 2)  # value 2: 100 rows, few clicks
    pctr = rng.random(n) * 0.2
    click = (rng.random(n) < pctr).astype(int)
    conv = click * (rng.random(n) < 0.5)
    maps = C.CalibrationMaps.fit(
        "m-1", pctr, pctr * 0.5, click, conv, {"position": pos}, fields=["position"], min_count=50
    )
    assert "1" in maps.by_value["pctr"] and "2" not in maps.by_value["pctr"]
    q = np.array([0.05, 0.1])
    out, _, _ = maps.apply(q, q * 0.5, {"position": np.array([2, 2])})
    np.testing.assert_allclose(out, maps.global_maps["pctr"](q))
    own, _, _ = maps.apply(q, q * 0.5, {"position": np.array([1, 1])})
    np.testing.assert_allclose(own, maps.by_value["pctr"]["1"](q))
    unseen, _, _ = maps.apply(q, q * 0.5, {"position": np.array([9, 9])})
    np.testing.assert_allclose(unseen, maps.global_maps["pctr"](q))


def test_ranking_unchanged_within_a_field_value():
    maps, pos = _maps()
    rng = np.random.default_rng(9)
    q = rng.random(500) * 0.3
    for v in (1, 2, 3):
        out, _, _ = maps.apply(q, q * 0.4, {"position": np.full(500, v)})
        order = np.argsort(q)
        assert np.all(np.diff(out[order]) >= 0)


def test_state_round_trips_through_torch_weights_only(tmp_path):
    maps, _ = _maps()
    maps.save(tmp_path)
    state = torch.load(tmp_path / C.FILE_NAME, weights_only=True)
    back = C.CalibrationMaps.from_state(state, "m-1")
    assert back.calibration_id == maps.calibration_id
    q = np.linspace(0.001, 0.3, 50)
    fv = {"position": np.tile([1, 2, 3, 7, 1], 10)}
    for a, b in zip(maps.apply(q, q * 0.3, fv), C.load(tmp_path, "m-1").apply(q, q * 0.3, fv)):
        np.testing.assert_array_equal(a, b)


def test_maps_of_another_model_are_refused(tmp_path):
    maps, _ = _maps()
    maps.save(tmp_path)
    with pytest.raises(C.CalibrationError, match="fitted for model 'm-1', not 'm-2'"):
        C.load(tmp_path, "m-2")
    assert C.load(tmp_path / "nothing", "m-1") is None


def test_metrics_on_hand_computed_values():
    p = np.array([0.1, 0.1, 0.2, 0.2])
    y = np.array([0.0, 1.0, 0.0, 0.0])
    assert pcoc(p, y) == pytest.approx(0.6)
    # field values a (rows 0,1): |1 - 0.2| / 1 = 0.8 weighted 2/4; b: |0 - 0.4| / (0 + 2 eps) huge -> use eps
    v = np.array(["a", "a", "b", "b"])
    eps = 1e-6
    expect = (2 * 0.8 / (1 + 2 * eps) + 2 * 0.4 / (0 + 2 * eps)) / 4
    assert field_rce(p, y, v, eps) == pytest.approx(expect)
    # two equal-frequency bins: (0.1, 0.5) and (0.2, 0.0) -> 0.5 * 0.4 + 0.5 * 0.2
    assert ece(p, y, n_bins=2) == pytest.approx(0.3)
    # 25% too high in every field value: field-RCE 0.25 (eps aside).
    y2 = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    p2 = np.array([0.5, 0.75, 0.25, 1.0, 0.5, 0.25])
    v2 = np.array(["a", "a", "b", "b", "c", "c"])
    sums_p = {"a": 1.25, "b": 1.25, "c": 0.75}
    sums_y = {"a": 1.0, "b": 2.0, "c": 1.0}
    expect2 = sum(2 * abs(sums_y[k] - sums_p[k]) / (sums_y[k] + 2 * eps) for k in "abc") / 6
    assert field_rce(p2, y2, v2, eps) == pytest.approx(expect2)
    assert field_rce(
        1.25 * np.array([0.2, 0.2, 0.4, 0.4]), np.array([0.4, 0.0, 0.8, 0.0]), np.array([1, 1, 2, 2])
    ) == pytest.approx(0.25, rel=1e-4)


def test_format_report_reads_only_the_raw_and_calibrated_pairs():
    from esmm.calibration.metrics import format_report

    text = format_report(
        {"ctcvr_auc": 0.8, "ctr_auc": 0.7, "ctcvr_pcoc_raw": 1.25, "ctcvr_pcoc_cal": 1.0, "ctr_ece_raw": 0.02}
    )
    assert "ctcvr: pcoc 1.25 -> 1" in text and "ctr: ece 0.02" in text and "auc" not in text
