"""One model's per-row evaluation scores on disk, and pairing two models' scores (numpy only).

The evaluation writes them (:func:`save_predictions`); the nightly gate
(:mod:`pipelines.nightly.gate`) and the run report read them back and pair a
candidate's rows with a champion's (:func:`align`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PREDICTION_COLUMNS = ("impression_id", "click", "conversion", "pctr", "pcvr", "pctcvr")


def save_predictions(
    path: str | Path, impression_id: np.ndarray, click: np.ndarray, conversion: np.ndarray, pred: dict[str, np.ndarray]
) -> Path:
    """Write one model's per-row evaluation scores as ``.npz`` (columns :data:`PREDICTION_COLUMNS`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")  # np.savez appends .npz to other names
    np.savez(
        tmp,
        impression_id=np.asarray(impression_id).astype(str),
        click=np.asarray(click, np.float64),
        conversion=np.asarray(conversion, np.float64),
        **{k: np.asarray(pred[k], np.float64) for k in ("pctr", "pcvr", "pctcvr")},
    )
    tmp.replace(path)
    return path


def load_predictions(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(Path(path), allow_pickle=False) as z:
        missing = [c for c in PREDICTION_COLUMNS if c not in z.files]
        if missing:
            raise ValueError(f"{path}: not an evaluation predictions file (missing {missing})")
        return {c: z[c] for c in PREDICTION_COLUMNS}


def align(
    cand: dict[str, np.ndarray], champ: dict[str, np.ndarray], names: tuple[str, str] = ("candidate", "champion")
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The two models' predictions in one row order (by impression_id).

    Raises ValueError, naming what differs, unless both cover exactly the same
    rows with the same labels: a paired test on different rows means nothing.
    """
    a_ids, b_ids = cand["impression_id"], champ["impression_id"]
    if not (len(a_ids) == len(b_ids) and np.array_equal(a_ids, b_ids)):
        ia, ib = np.argsort(a_ids, kind="mergesort"), np.argsort(b_ids, kind="mergesort")
        if len(a_ids) != len(b_ids) or not np.array_equal(a_ids[ia], b_ids[ib]):
            only = sorted(set(a_ids.tolist()) ^ set(b_ids.tolist()))[:5]
            raise ValueError(
                f"gate: the {names[0]} was scored on {len(a_ids)} rows, the {names[1]} on "
                f"{len(b_ids)}; they differ (e.g. impression_id {only}): score both on the "
                f"same evaluation rows"
            )
        cand, champ = {k: v[ia] for k, v in cand.items()}, {k: v[ib] for k, v in champ.items()}
    for col in ("click", "conversion"):
        if not np.array_equal(cand[col], champ[col]):
            raise ValueError(
                f"gate: the {names[0]}'s and the {names[1]}'s evaluation rows have different "
                f"'{col}' labels; they were read from different versions of the examples"
            )
    return cand, champ


def ctcvr_label(p: dict[str, np.ndarray]) -> np.ndarray:
    """click * conversion [n]: the label of pCTCVR."""
    return p["click"] * p["conversion"]
