"""Raw vs calibrated scores of one trained model against the simulator's truth
(``esmm bench quality --calibration-days K``).

The evaluation day's labels hold a few hundred conversions, so a PCOC against them
carries +-1/sqrt(N) of counting noise; ``sim/truth`` gives every impression's true
CTR and CVR, so the bench also measures the calibration against the expected rate
``sum(true_ctr x true_cvr)``, where only the calibration days' noise remains.
"""

from __future__ import annotations

import math

import numpy as np

from esmm.calibration.metrics import ece, field_rce, pcoc


def truth_calibration(
    artifact_dir: str,
    model_id: str,
    examples_path: str,
    version: int,
    truth_path: str,
    eval_date: str,
    field: str = "position",
) -> dict[str, float]:
    """Metrics of the model's raw and calibrated scores on ``eval_date`` (mature rows joined
    with ``sim/truth``), keys ``<name>_raw`` and ``<name>_cal``:

    ``pctcvr_pcoc_truth`` / ``pctr_pcoc_truth``  sum(p) / sum(true probability)
    ``pctcvr_pcoc_labels``                      sum(p) / observed conversions
    ``pctcvr_frce_truth_<field>``                field-RCE of pCTCVR against true_ctr x true_cvr
    ``pctr_frce_truth_<field>``                  the same for pCTR against true_ctr
    ``pctcvr_ece``                               ECE against the labels (20 equal-frequency bins)
    ``pcvr_over_all``                            mean pCVR / mean true CVR, all impressions

    plus ``calibration_conversions`` (conversions of the calibration days) and
    ``eval_conversions``. An artifact without maps gives the raw keys only.
    """
    from esmm.calibration import maps as calibration
    from esmm.data.examples import pack_categorical, read_arrow, resolve_snapshot
    from esmm.evaluation.metrics import predict, read_truth
    from esmm.registry import artifacts as registry

    model, meta = registry.load_model(artifact_dir)
    maps = calibration.load(artifact_dir, model_id)
    spec = registry.spec_of(meta)
    cat_names = [f.name for f in spec.categorical]
    num_names = [f.name for f in spec.numeric]
    snap = resolve_snapshot(examples_path, [eval_date], version)
    table = read_arrow(
        snap, ["impression_id", "click", "conversion", "label_mature", *cat_names, *num_names], filter_mature=True
    )
    df = table.to_pandas()
    cat = pack_categorical({n: table.column(n) for n in cat_names}, spec)
    num = df[num_names].to_numpy(np.float32) if num_names else np.zeros((len(df), 0), np.float32)
    raw = predict(model, cat, num)
    variants = {"raw": raw}
    if maps is not None:
        pctr, pcvr, pctcvr = calibration.apply(
            maps, raw["pctr"], raw["pctcvr"], {f: df[f].to_numpy() for f in maps.fields}
        )
        variants["cal"] = {"pctr": pctr, "pcvr": pcvr, "pctcvr": pctcvr}
    truth = read_truth(truth_path, [eval_date]).drop_duplicates("impression_id")
    j = df[["impression_id"]].assign(_row=np.arange(len(df))).merge(truth, on="impression_id", how="inner")
    rows = j["_row"].to_numpy()
    t_ctr, t_cvr = j["true_ctr"].to_numpy(np.float64), j["true_cvr"].to_numpy(np.float64)
    y = df["click"].to_numpy(np.float64) * df["conversion"].to_numpy(np.float64)
    values = df[field].to_numpy()[rows] if field in df else np.zeros(len(rows))
    out: dict[str, float] = {"eval_conversions": float(y.sum()), "truth_rows": float(len(rows))}
    for v, p in variants.items():
        pc, pr, pv = (np.asarray(p[k], np.float64) for k in ("pctcvr", "pctr", "pcvr"))
        out[f"pctcvr_pcoc_truth_{v}"] = pcoc(pc[rows], t_ctr * t_cvr)
        out[f"pctr_pcoc_truth_{v}"] = pcoc(pr[rows], t_ctr)
        out[f"pctcvr_pcoc_labels_{v}"] = pcoc(pc, y)
        out[f"pctcvr_frce_truth_{field}_{v}"] = field_rce(pc[rows], t_ctr * t_cvr, values)
        out[f"pctr_frce_truth_{field}_{v}"] = field_rce(pr[rows], t_ctr, values)
        out[f"pctcvr_ece_{v}"] = ece(pc, y)
        out[f"pcvr_over_all_{v}"] = float(pv[rows].mean() / t_cvr.mean()) if t_cvr.mean() > 0 else math.nan
    if maps is not None:
        counts = (meta.get("calibration") or {}).get("counts") or {}
        out["calibration_conversions"] = float(counts.get("conversions", math.nan))
    return out
