"""Evaluation on held-out dates: AUCs, log losses, calibration, truth-based CVR metrics.

Metrics (``evaluate`` returns them as a flat dict of floats):

=========================  ==============================================================
``ctr_auc``                AUC of pCTR against click, all impressions
``cvr_auc_clicked``        AUC of pCVR against conversion, clicked impressions (ESMM paper)
``ctcvr_auc``              AUC of pCTCVR against click*conversion, all impressions
``*_logloss``              mean cross-entropy of the same three (CVR: clicked only)
``*_calibration``          mean prediction / observed rate (1.0 = calibrated) of the same
``cvr_auc_all_truth``      (``sim/truth`` only) AUC of pCVR over *all* impressions with the
                           true conversion propensity ``true_cvr`` as a soft label
``pcvr_bias_all``          (truth only) mean pCVR - mean true_cvr, all impressions
``pcvr_bias_clicked``      (truth only) mean pCVR - mean true_cvr, clicked impressions
``pcvr_over_all``          (truth only) mean pCVR / mean true_cvr, all impressions (1 = unbiased)
``pcvr_over_clicked``      (truth only) the same over clicked impressions
``pctr_over_truth``        (truth with ``true_ctr``) mean pCTR / mean true_ctr
``pctcvr_over_truth``      (truth with ``true_ctr``) mean pCTCVR / mean true_ctr x true_cvr:
                           the PCOC against the expected rate, without the label noise
``cvr_auc_all_potential``  (truth with ``potential_conversion``) AUC of pCVR over all
                           impressions against the potential outcome "would have converted
                           if clicked" (one draw; observed conversion for clicked ones)
=========================  ==============================================================

Soft-label AUC: every impression counts as a positive with weight ``t`` and as a
negative with weight ``1 - t``; the AUC is the weighted probability that a
positive outranks a negative (ties count one half). With ``t = true_cvr`` this is
the expected numerator over the expected denominator of the ordinary AUC against
Bernoulli(true_cvr) draws of "would convert if clicked": the entire-space CVR
ranking quality ESMM claims, without the noise of one draw, and it needs
no counterfactual labels, which real logs never have.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from esmm.config.schema import FeatureSpec
from esmm.data.examples import Snapshot, arrow_batches, pack_categorical

if TYPE_CHECKING:
    from esmm.calibration.maps import CalibrationMaps


def auc(scores: np.ndarray, labels: np.ndarray, weights: Optional[np.ndarray] = None) -> float:
    """Rank AUC with ties counted one half; ``labels`` in [0, 1] may be soft.

    P(s_pos > s_neg) + 0.5 P(s_pos = s_neg) where each row is a positive with weight
    ``w * label`` and a negative with weight ``w * (1 - label)``. O(n log n).
    NaN when there is no positive or no negative weight.
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(labels, dtype=np.float64)
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64)
    if s.size == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    s, pos, neg = s[order], (w * t)[order], (w * (1.0 - t))[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]  # first row of each group of equal scores
    pos_g, neg_g = np.add.reduceat(pos, starts), np.add.reduceat(neg, starts)
    neg_below = np.cumsum(neg_g) - neg_g
    den = pos.sum() * neg.sum()
    if den <= 0:
        return math.nan
    return float(np.sum(pos_g * (neg_below + 0.5 * neg_g)) / den)


def logloss(p: np.ndarray, y: np.ndarray, eps: float = 1e-7) -> float:
    if len(p) == 0:
        return math.nan
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def calibration(p: np.ndarray, y: np.ndarray) -> float:
    """mean(p) / mean(y); NaN without positives."""
    if len(p) == 0 or float(np.mean(y)) == 0.0:
        return math.nan
    return float(np.mean(p) / np.mean(y))


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    cat: np.ndarray,
    num: np.ndarray,
    batch_size: int = 16384,
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """cat [n, W] int (esmm.data.examples.pack_categorical), num [n, N] float -> {'pctr', 'pcvr', 'pctcvr'} float64 [n]."""
    net = getattr(model, "module", model)
    was_training = net.training
    net.eval()
    out: dict[str, list[np.ndarray]] = {"pctr": [], "pcvr": [], "pctcvr": []}
    for i in range(0, len(cat), batch_size):
        c = torch.as_tensor(cat[i : i + batch_size], dtype=torch.long, device=device)
        x = torch.as_tensor(num[i : i + batch_size], dtype=torch.float32, device=device)
        res = net(c, x)
        for k in out:
            out[k].append(res[k].double().cpu().numpy())
    net.train(was_training)
    return {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in out.items()}


def predict_rows(
    model: torch.nn.Module,
    snapshot: Snapshot,
    spec: FeatureSpec,
    keep: list[str],
    *,
    mature_only: bool = True,
    batch_size: int = 16384,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Scores of ``snapshot``'s rows: (predictions {'pctr', 'pcvr', 'pctcvr'} float64 [n],
    {column in ``keep``: its values [n]}), rows in file order (label-mature only when ``mature_only``).

    The rows stream as Arrow batches of at most ``batch_size`` rows, each packed (cat [B, W],
    num [B, N]) and scored on its own: memory holds one batch's padded multi-valued ids,
    never a whole day's [n, W] matrix.
    """
    columns = list(
        dict.fromkeys([*keep, "label_mature", *(f.name for f in spec.categorical), *(f.name for f in spec.numeric)])
    )
    preds: list[dict[str, np.ndarray]] = []
    kept: dict[str, list[np.ndarray]] = {c: [] for c in keep}
    for rb in arrow_batches(snapshot, columns, batch_size, mature_only):
        cat = pack_categorical({f.name: rb.column(f.name) for f in spec.categorical}, spec)
        num = np.zeros((rb.num_rows, len(spec.numeric)), np.float32)
        for j, f in enumerate(spec.numeric):
            num[:, j] = rb.column(f.name).to_numpy(zero_copy_only=False)
        preds.append(predict(model, cat, num, batch_size, device))
        for c in keep:
            kept[c].append(rb.column(c).to_numpy(zero_copy_only=False))
    pred = {k: np.concatenate([p[k] for p in preds]) if preds else np.zeros(0) for k in ("pctr", "pcvr", "pctcvr")}
    return pred, {c: np.concatenate(v) if v else np.zeros(0) for c, v in kept.items()}


def compute_metrics(
    pred: dict[str, np.ndarray],
    click: np.ndarray,
    conversion: np.ndarray,
    true_cvr: Optional[np.ndarray] = None,
    potential_conversion: Optional[np.ndarray] = None,
    true_ctr: Optional[np.ndarray] = None,
) -> dict[str, float]:
    """All metrics of the module docstring from predictions and labels (arrays [n])."""
    o = np.asarray(click, dtype=np.float64)
    y = o * np.asarray(conversion, dtype=np.float64)
    c = o > 0
    m = {
        "rows": float(len(o)),
        "clicks": float(o.sum()),
        "conversions": float(y.sum()),
        "ctr_auc": auc(pred["pctr"], o),
        "cvr_auc_clicked": auc(pred["pcvr"][c], y[c]),
        "ctcvr_auc": auc(pred["pctcvr"], y),
        "ctr_logloss": logloss(pred["pctr"], o),
        "cvr_logloss_clicked": logloss(pred["pcvr"][c], y[c]),
        "ctcvr_logloss": logloss(pred["pctcvr"], y),
        "ctr_calibration": calibration(pred["pctr"], o),
        "cvr_calibration_clicked": calibration(pred["pcvr"][c], y[c]),
        "ctcvr_calibration": calibration(pred["pctcvr"], y),
    }
    if true_cvr is not None:
        t = np.asarray(true_cvr, dtype=np.float64)
        m["cvr_auc_all_truth"] = auc(pred["pcvr"], t)
        m["pcvr_bias_all"] = float(np.mean(pred["pcvr"]) - np.mean(t))
        m["pcvr_bias_clicked"] = float(np.mean(pred["pcvr"][c]) - np.mean(t[c])) if c.any() else math.nan
        m.update(_over_estimation(pred["pcvr"], t, c))
        if true_ctr is not None:
            tc = np.asarray(true_ctr, dtype=np.float64)
            m["pctr_over_truth"] = float(np.mean(pred["pctr"]) / np.mean(tc)) if np.mean(tc) > 0 else math.nan
            e = float(np.mean(tc * t))
            m["pctcvr_over_truth"] = float(np.mean(pred["pctcvr"]) / e) if e > 0 else math.nan
    if potential_conversion is not None:
        m["cvr_auc_all_potential"] = auc(pred["pcvr"], np.asarray(potential_conversion, dtype=np.float64))
    return m


def _over_estimation(pcvr: np.ndarray, t: np.ndarray, clicked: np.ndarray) -> dict[str, float]:
    """mean pCVR / mean true CVR over all and over clicked impressions."""
    ratio = lambda p, q: float(np.mean(p) / np.mean(q)) if len(q) and np.mean(q) > 0 else math.nan  # noqa: E731
    return {"pcvr_over_all": ratio(pcvr, t), "pcvr_over_clicked": ratio(pcvr[clicked], t[clicked])}


def read_truth(truth_path: str, dates: list[str]):
    """``sim/truth`` rows of ``dates`` (impression_id, true_cvr, and true_ctr and
    potential_conversion where the table has them) as pandas, or None without a table."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        t = DeltaTable(truth_path)
    except TableNotFoundError:
        return None
    cols = ["impression_id", "true_cvr"]
    names = t.schema().to_pyarrow().names
    cols += [c for c in ("true_ctr", "potential_conversion") if c in names]
    return t.to_pyarrow_table(partitions=[("dt", "in", list(dates))], columns=cols).to_pandas()


def eval_maturity(snapshot: Snapshot, log=print) -> float:
    """The share of the evaluation rows whose labels are mature, said when it is not 1.

    Metrics use the mature rows when there are any (an immature row's conversion may still
    come, so it would count as a negative); on a day with none they use every row, and the
    caller records the share (``eval_label_mature_share``) beside them."""
    from esmm.data.examples import mature_share

    share = mature_share(snapshot)
    days = ", ".join(snapshot.dates)
    if share == 0.0:
        log(
            f"evaluation on {days}: no label is mature yet (as-of < ts + click + attribution + lateness "
            "windows); the metrics count conversions still to come as negatives"
        )
    elif share < 1.0:
        log(f"evaluation on {days}: {share:.1%} of the labels are mature; the metrics use those rows")
    return share


def evaluate(
    model: torch.nn.Module,
    snapshot: Snapshot,
    spec: FeatureSpec,
    *,
    truth_path: Optional[str] = None,
    mature_only: bool = True,
    batch_size: int = 16384,
    out_dir: Optional[str | Path] = None,
    device: str | torch.device = "cpu",
    predictions_path: Optional[str | Path] = None,
    calibration: Optional[CalibrationMaps] = None,
) -> dict[str, float]:
    """Metrics of ``model`` on the rows of ``snapshot`` (the evaluation dates).

    Rows with immature labels are left out when ``mature_only`` (their missing
    conversions would count as negatives). When ``truth_path`` holds a Delta
    table, ``true_cvr`` is joined by impression_id; ``truth_coverage`` reports
    the share of rows that found their truth (metrics use those rows).
    With ``out_dir`` a reliability diagram is written to ``out_dir/reliability.png``.
    With ``predictions_path`` the per-row scores and labels are saved there
    (:func:`esmm.evaluation.predictions.save_predictions`), for tests paired with another model.
    With ``calibration`` (the artifact's maps, :func:`esmm.calibration.maps.load`) the
    metrics, diagram and saved scores are those of the calibrated scores, i.e.
    what ``esmm score`` writes to serving/scores; ``calibrated`` = 1.0 says so.
    """
    fields = list(calibration.fields) if calibration is not None else []
    keep = list(dict.fromkeys(["impression_id", "click", "conversion", *fields]))
    pred, cols = predict_rows(
        model, snapshot, spec, keep, mature_only=mature_only, batch_size=batch_size, device=device
    )
    if calibration is not None:
        from esmm.calibration.maps import apply

        pctr, pcvr, pctcvr = apply(calibration, pred["pctr"], pred["pctcvr"], {f: cols[f] for f in fields})
        pred = {**pred, "pctr": pctr, "pcvr": pcvr, "pctcvr": pctcvr}
    ids, click, conv = cols["impression_id"], cols["click"], cols["conversion"]
    metrics = compute_metrics(pred, click, conv)
    if calibration is not None:
        metrics["calibrated"] = 1.0
    truth = read_truth(truth_path, list(snapshot.dates)) if truth_path else None
    if truth is not None:
        import pandas as pd

        joined = pd.DataFrame({"impression_id": ids, "_row": np.arange(len(ids))}).merge(
            truth.drop_duplicates("impression_id"), on="impression_id", how="inner"
        )
        rows = joined["_row"].to_numpy()
        metrics["truth_coverage"] = float(len(rows) / max(len(ids), 1))
        sub = {k: v[rows] for k, v in pred.items()}
        pot = joined["potential_conversion"].to_numpy() if "potential_conversion" in joined else None
        tctr = joined["true_ctr"].to_numpy() if "true_ctr" in joined else None
        tm = compute_metrics(sub, click[rows], conv[rows], joined["true_cvr"].to_numpy(), pot, tctr)
        for k in (
            "cvr_auc_all_truth",
            "pcvr_bias_all",
            "pcvr_bias_clicked",
            "pcvr_over_all",
            "pcvr_over_clicked",
            "cvr_auc_all_potential",
            "pctr_over_truth",
            "pctcvr_over_truth",
        ):
            if k in tm:
                metrics[k] = tm[k]
    if out_dir is not None:
        reliability_diagram(pred, click, conv, Path(out_dir) / "reliability.png")
    if predictions_path is not None:
        from esmm.evaluation.predictions import save_predictions

        save_predictions(predictions_path, ids, click, conv, pred)
    return metrics


def _bins(p: np.ndarray, y: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-count bins of p: (mean prediction, observed rate) per bin."""
    if len(p) == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(p, kind="mergesort")
    chunks = np.array_split(order, min(n_bins, len(p)))
    return (np.array([p[c].mean() for c in chunks]), np.array([y[c].mean() for c in chunks]))


def reliability_diagram(
    pred: dict[str, np.ndarray], click: np.ndarray, conversion: np.ndarray, path: Path, n_bins: int = 10
) -> Path:
    """PNG with one panel per task: observed rate vs mean prediction in equal-count bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    o = np.asarray(click, dtype=np.float64)
    y = o * np.asarray(conversion, dtype=np.float64)
    c = o > 0
    panels = [
        ("CTR (all impressions)", pred["pctr"], o),
        ("CVR (clicked impressions)", pred["pcvr"][c], y[c]),
        ("CTCVR (all impressions)", pred["pctcvr"], y),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (title, p, t) in zip(axes, panels):
        mp, obs = _bins(p, t, n_bins)
        hi = max(float(mp.max()) if len(mp) else 1.0, float(obs.max()) if len(obs) else 1.0, 1e-4) * 1.1
        ax.plot([0, hi], [0, hi], "--", color="grey", lw=1, label="calibrated")
        ax.plot(mp, obs, "o-", label="model")
        ax.set_title(title)
        ax.set_xlabel("mean prediction (bin)")
        ax.set_ylabel("observed rate (bin)")
        ax.set_xlim(0, hi)
        ax.set_ylim(0, hi)
        ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
