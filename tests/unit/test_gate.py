"""The nightly gate: DeLong's paired test against an independent reference, the
decision rule on synthetic evaluation days, and the gate step's outputs.

No Spark: the days are numpy arrays (a few hundred conversions, like a real
evaluation day at the bench's size), the registry and runs table are delta-rs.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from esmm.config.errors import ConfigError
from esmm.config.loader import load_config
from esmm.config.schema import GateConfig
from esmm.evaluation.intervals import (
    calibration_interval,
    delong,
    delong_test,
    logloss_test,
    poisson_interval,
    wilson_interval,
)
from esmm.evaluation.predictions import align, load_predictions, save_predictions
from pipelines.nightly.gate import decide

G = GateConfig()  # the defaults: alpha 0.05, min_conversions 100, calibration [0.8, 1.25]


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def day(seed: int, n: int = 100_000, base: float = -6.5, noise: float = 0.0):
    """One evaluation day: ``(logit, labels)``; conversions ~ Bernoulli(sigmoid(logit)).

    With the defaults about 0.31% of rows convert (~310 conversions); the true
    probabilities reach a CTCVR AUC of about 0.79.
    """
    rng = np.random.default_rng(seed)
    logit = base + 1.2 * rng.normal(size=n)
    y = (rng.random(n) < sigmoid(logit)).astype(np.float64)
    return logit, y


# --------------------------------------------------------------------------- DeLong against a reference


def delong_reference(a, b, y):
    """DeLong, DeLong & Clarke-Pearson (1988) from the Mann-Whitney kernel, O(m n), in plain Python.

    Returns (auc_a, auc_b, var of auc_a - auc_b, one-sided p of "a is worse").
    """
    psi = lambda x, v: 1.0 if x > v else (0.5 if x == v else 0.0)  # noqa: E731
    pos = [i for i in range(len(y)) if y[i] == 1]
    neg = [j for j in range(len(y)) if y[j] == 0]
    m, n = len(pos), len(neg)
    v10 = [[sum(psi(s[i], s[j]) for j in neg) / n for i in pos] for s in (a, b)]
    v01 = [[sum(psi(s[i], s[j]) for i in pos) / m for j in neg] for s in (a, b)]
    auc = [sum(v) / m for v in v10]

    def cov(u, w):
        mu, mw = sum(u) / len(u), sum(w) / len(w)
        return sum((x - mu) * (z - mw) for x, z in zip(u, w)) / (len(u) - 1)

    var = (cov(v10[0], v10[0]) + cov(v10[1], v10[1]) - 2 * cov(v10[0], v10[1])) / m + (
        cov(v01[0], v01[0]) + cov(v01[1], v01[1]) - 2 * cov(v01[0], v01[1])
    ) / n
    z = (auc[0] - auc[1]) / math.sqrt(var)
    return auc[0], auc[1], var, 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_the_quadratic_definition(seed):
    rng = np.random.default_rng(seed)
    n = 80
    y = (rng.random(n) < 0.3).astype(float)
    # One decimal: many ties, within and across the classes, and between the two models.
    a = np.round(np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1), 1)
    b = np.round(np.clip(0.15 * y + rng.random(n) * 0.85, 0, 1), 1)
    ra, rb, rvar, rp = delong_reference(a.tolist(), b.tolist(), y.tolist())
    t = delong_test(a, b, y)
    assert t["candidate"] == pytest.approx(ra, abs=1e-12) and t["champion"] == pytest.approx(rb, abs=1e-12)
    assert t["se"] ** 2 == pytest.approx(rvar, abs=1e-12)
    assert t["p_worse"] == pytest.approx(rp, abs=1e-9)
    assert t["diff"] == pytest.approx(ra - rb, abs=1e-12)


def test_delong_hand_computed_example():
    # Positives (a, b): (0.9, 0.8), (0.6, 0.3), (0.4, 0.5); negatives (0.5, 0.5), (0.3, 0.6), (0.4, 0.2), (0.1, 0.1).
    # Model a: V10 = [1, 1, 5/8] (0.4 ties the negative 0.4), V01 = [2/3, 1, 5/6, 1]: AUC 7/8.
    # Model b: V10 = [1, 1/2, 5/8], V01 = [1/2, 1/3, 1, 1]: AUC 17/24.
    # Var(a - b) = (S10aa + S10bb - 2 S10ab) / 3 + (S01aa + S01bb - 2 S01ab) / 4
    #            = (3/64 + 13/192 - 1/32) / 3 + (11/432 + 17/144 - 1/72) / 4 = 1/36 + 7/216 = 13/216,
    # so z = (1/6) / sqrt(13/216) = sqrt(6/13) = 0.67937 and P(Z <= z) = 0.75155.
    y = np.array([1, 1, 1, 0, 0, 0, 0], float)
    a = np.array([0.9, 0.6, 0.4, 0.5, 0.3, 0.4, 0.1])
    b = np.array([0.8, 0.3, 0.5, 0.5, 0.6, 0.2, 0.1])
    t = delong_test(a, b, y)
    assert (t["candidate"], t["champion"]) == (pytest.approx(7 / 8), pytest.approx(17 / 24))
    assert t["se"] ** 2 == pytest.approx(13 / 216, abs=1e-15)
    assert t["z"] == pytest.approx(math.sqrt(6 / 13), abs=1e-12)
    assert t["p_worse"] == pytest.approx(0.751547076, abs=1e-8)
    # One model: Var = S10aa / 3 + S01aa / 4 = (3/64) / 3 + (11/432) / 4 = 19/864.
    assert delong(a, y)[1][0, 0] == pytest.approx(19 / 864, abs=1e-15)


def test_logloss_standard_error_agrees_with_a_paired_bootstrap():
    logit, y = day(7, n=20_000, base=-4.5)
    rng = np.random.default_rng(8)
    a = sigmoid(logit + rng.normal(0, 0.4, len(y)))
    b = sigmoid(logit + rng.normal(0, 0.4, len(y)))
    t = logloss_test(a, b, y)
    la = -(y * np.log(a) + (1 - y) * np.log(1 - a))
    lb = -(y * np.log(b) + (1 - y) * np.log(1 - b))
    boots = [np.mean((la - lb)[idx]) for idx in (rng.integers(0, len(y), len(y)) for _ in range(400))]
    assert t["se"] == pytest.approx(np.std(boots, ddof=1), rel=0.12)
    assert t["diff"] == pytest.approx(np.mean(la - lb), abs=1e-12)


def test_intervals_known_values():
    # Wilson 95% of 8/10, by hand: centre (0.8 + z^2/20) / (1 + z^2/10) = 0.7168, half-width 0.2266.
    lo, hi = wilson_interval(np.array([8]), np.array([10]))
    assert (lo[0], hi[0]) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    # Poisson score interval of 0 events: [0, z^2].
    assert poisson_interval(0) == (0.0, pytest.approx(1.959964**2, rel=1e-6))
    ratio, lo, hi = calibration_interval(np.full(1000, 0.1), np.r_[np.ones(100), np.zeros(900)])
    assert ratio == pytest.approx(1.0) and lo < 1.0 < hi and hi - lo == pytest.approx(0.4, abs=0.03)


def test_wilson_interval_holds_the_rate_at_zero_and_all():
    # In floating point the textbook formula puts the lower bound of 0/n a hair above 0 for
    # many n (a negative error bar in the reliability chart); the interval must hold k / n.
    n = np.arange(1, 3000, dtype=np.float64)
    for k in (np.zeros_like(n), n):
        lo, hi = wilson_interval(k, n)
        assert (lo <= k / n).all() and (hi >= k / n).all() and (lo >= 0).all() and (hi <= 1).all()


# --------------------------------------------------------------------------- the decision


@pytest.mark.parametrize("seed", range(5))
def test_a_candidate_equal_to_the_champion_is_never_rejected(seed):
    logit, y = day(seed)
    p = sigmoid(logit)
    d = decide(p.copy(), p, y, G)
    assert d.promote, d.reason
    assert d.tests["ctcvr_auc"]["diff"] == 0.0 and d.tests["ctcvr_auc"]["p_worse"] == 0.5
    assert d.tests["ctcvr_logloss"]["p_worse"] == 0.5
    assert d.n_rows == len(y) and d.n_conversions == int(y.sum()) >= G.min_conversions


@pytest.mark.parametrize("seed", range(5))
def test_a_candidate_shuffled_within_the_day_is_rejected(seed):
    logit, y = day(seed)
    p = sigmoid(logit)
    shuffled = np.random.default_rng(100 + seed).permutation(p)
    d = decide(shuffled, p, y, G)
    assert not d.promote and d.reason.startswith("kept the champion"), d.reason
    assert d.tests["ctcvr_auc"]["worse"] and d.tests["ctcvr_auc"]["p_worse"] < 1e-6
    assert d.tests["ctcvr_auc"]["candidate"] == pytest.approx(0.5, abs=0.06)
    assert not d.tests["calibration"]["outside"]  # same scores, same mean: only the ranking is lost


def test_an_equally_good_candidate_is_rejected_at_most_alpha_of_the_time():
    # 200 days on which candidate and champion are different but equally good noisy
    # versions of the truth; the gate may reject at most alpha of them (plus 3 binomial SEs).
    rejected = 0
    for seed in range(200):
        logit, y = day(1000 + seed, n=20_000, base=-4.5)
        rng = np.random.default_rng(5000 + seed)
        cand = sigmoid(logit + rng.normal(0, 0.5, len(y)))
        champ = sigmoid(logit + rng.normal(0, 0.5, len(y)))
        rejected += not decide(cand, champ, y, G).promote
    assert rejected / 200 <= G.alpha + 3 * math.sqrt(G.alpha * (1 - G.alpha) / 200), rejected


def test_a_clearly_worse_candidate_is_caught_by_log_loss_too():
    logit, y = day(3)
    p = sigmoid(logit)
    d = decide(sigmoid(logit * 1.6), p, y, G)  # same ranking (AUC equal), over-confident
    assert d.tests["ctcvr_auc"]["diff"] == pytest.approx(0.0, abs=1e-12)
    assert d.tests["ctcvr_logloss"]["worse"] and not d.promote, d.reason


def test_calibration_rejects_only_when_the_whole_interval_is_outside():
    logit, y = day(4)
    p = sigmoid(logit)
    conv = y.sum()
    # Predictions scaled so that the ratio is 1.5 x the observed: all of the interval above 1.25.
    far = np.clip(p * 1.5 * conv / p.sum(), 0, 1)
    c = decide(far, far, y, G).tests["calibration"]
    assert c["lo"] > G.calibration_max and c["outside"]
    assert not decide(far, far, y, G).promote
    # A ratio of 1.27 on ~300 conversions: point estimate outside, interval overlapping: not rejected.
    near = p * 1.27 * conv / p.sum()
    c = decide(near, near, y, G).tests["calibration"]
    assert c["ratio"] > G.calibration_max and c["lo"] < G.calibration_max and not c["outside"]
    assert decide(near, near, y, G).promote


def test_below_min_conversions_keeps_the_champion_or_promotes_the_first_model():
    logit, y = day(5, n=6_000)  # ~18 conversions
    assert 0 < y.sum() < G.min_conversions
    p = sigmoid(logit)
    champ = sigmoid(logit + np.random.default_rng(2).normal(0, 1.0, len(y)))  # a noisier model
    worse = np.random.default_rng(1).permutation(p)
    for cand in (worse, p):
        d = decide(cand, champ, y, G)
        assert not d.promote
        assert d.reason.startswith(
            f"kept the champion: {int(y.sum())} conversions on the evaluation day, "
            f"below nightly.gate.min_conversions = 100"
        ), d.reason
        assert "ctcvr_auc" not in d.tests  # not compared
    first = decide(worse, None, y, G)
    assert first.promote and first.reason.startswith("promoted: first model"), first.reason


def test_scores_of_other_rows_are_refused():
    logit, y = day(6, n=1000)
    with pytest.raises(ValueError, match="same evaluation rows"):
        decide(sigmoid(logit), sigmoid(logit[:-1]), y, G)
    with pytest.raises(ValueError, match="probabilities"):
        decide(logit, sigmoid(logit), y, G)


def test_align_reorders_by_id_and_refuses_different_rows(tmp_path):
    ids = np.array([f"i{k}" for k in range(6)])
    click, conv = np.array([1, 0, 1, 0, 0, 1.0]), np.array([1, 0, 0, 0, 0, 1.0])
    pred = {k: np.linspace(0.1, 0.6, 6) for k in ("pctr", "pcvr", "pctcvr")}
    a = load_predictions(save_predictions(tmp_path / "a.npz", ids, click, conv, pred))
    perm = np.array([3, 0, 5, 1, 4, 2])
    b = load_predictions(
        save_predictions(tmp_path / "b.npz", ids[perm], click[perm], conv[perm], {k: v[perm] for k, v in pred.items()})
    )
    a2, b2 = align(a, b)
    assert np.array_equal(a2["impression_id"], b2["impression_id"])
    assert np.array_equal(a2["pctcvr"], b2["pctcvr"]) and np.array_equal(a2["click"], b2["click"])
    b["impression_id"] = np.r_[["other"], b["impression_id"][1:]]
    with pytest.raises(ValueError, match=r"differ \(e\.g\. impression_id \['i3', 'other'\]\)"):
        align(a, b)


def test_config_keys_are_validated_by_name():
    with pytest.raises(ConfigError, match=r"nightly\.gate\.max_auc_drop: removed; .*nightly\.gate\.alpha"):
        load_config(overrides=["nightly.gate.max_auc_drop=0.01"])
    with pytest.raises(ConfigError, match=r"nightly\.gate\.alpha: 0\.7 must be in \(0, 0\.5\)"):
        load_config(overrides=["nightly.gate.alpha=0.7"])
    with pytest.raises(ConfigError, match=r"nightly\.gate\.min_conversions: 0 must be >= 1"):
        load_config(overrides=["nightly.gate.min_conversions=0"])


# --------------------------------------------------------------------------- the nightly gate step


def _artifact(models, model_id: str):
    from esmm.registry.artifacts import META_FORMAT

    d = models / model_id
    d.mkdir(parents=True)
    meta = {
        "format": META_FORMAT,
        "model_id": model_id,
        "kind": "esmm",
        "feature_mapping_id": "fm1",
        "examples": {"version": 3},
        "window": {"train_start": "2026-11-01", "train_end": "2026-11-02", "eval_dates": ["2026-11-03"]},
        "metrics": {},
        "code_version": "test",
    }
    (d / "meta.json").write_text(json.dumps(meta))
    return d


@pytest.mark.parametrize("shuffle", [True, False])
def test_the_gate_step_decision_lands_in_the_step_outputs(make_cfg, tmp_path, shuffle):
    from esmm.registry import artifacts as registry
    from pipelines.nightly import steps as nightly_steps
    from pipelines.nightly.runner import Step, run_nightly
    from pipelines.nightly.runs import RunsTable

    cfg = make_cfg()
    reg, models = cfg.lakehouse.path("registry"), tmp_path / "models"
    for mid in ("champ", "cand"):
        registry.register(reg, _artifact(models, mid))
    registry.promote(reg, "champ")
    logit, y = day(11)
    ids = np.array([f"imp{k}" for k in range(len(y))])
    p = sigmoid(logit)
    cand = np.random.default_rng(2).permutation(p) if shuffle else p
    paths = {}
    for role, s in (("candidate", cand), ("champion", p)):
        order = np.random.default_rng(len(role)).permutation(len(y))  # rows in a different order per file
        paths[role] = str(
            save_predictions(
                tmp_path / f"{role}.npz",
                ids[order],
                y[order],
                y[order],
                {"pctr": s[order], "pcvr": s[order], "pctcvr": s[order]},
            )
        )
    evaluated = {"model_ids": {"candidate": "cand", "champion": "champ"}, "predictions": paths}
    steps = [Step("evaluate", lambda ctx: evaluated), Step("gate", nightly_steps.gate)]
    r = run_nightly(
        cfg, "2026-11-04", lambda: None, steps=steps, available=["2026-11-03", "2026-11-04"], log=lambda m: None
    )
    assert r.exit_code == 0, r.message
    out = r.outputs["gate"]
    assert out["promoted"] is (not shuffle)
    assert out["champion"] == ("champ" if shuffle else "cand") == registry.champion(reg)["model_id"]
    assert out["n_conversions"] == int(y.sum()) and out["n_rows"] == len(y)
    assert out["tests"]["ctcvr_auc"]["worse"] is shuffle
    assert out["tests"]["ctcvr_auc"]["diff"] == pytest.approx(0.0 if not shuffle else -0.3, abs=0.06 if shuffle else 0)
    # The runs table keeps the same outputs and shows the reason as the step's message.
    row = [s for s in RunsTable(cfg.lakehouse.path("runs")).rows("2026-11-04") if s["step"] == "gate"][0]
    assert json.loads(row["outputs"]) == json.loads(json.dumps(out))
    assert row["message"] == out["decision"] and row["message"].startswith(
        "kept the champion" if shuffle else "promoted"
    )
