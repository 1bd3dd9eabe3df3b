"""Time torch-rechub's ESMM (PyPI ``torch-rechub``) on rows exported by bench_train.py.

Runs in a SEPARATE throwaway venv that has torch-rechub (never the project venv)::

    python3.11 -m venv /tmp/rechub-venv && /tmp/rechub-venv/bin/pip install torch==2.13.0 torch-rechub

Usage: ``<rechub python> benchmarks/rechub_esmm.py ROWS.npz BATCH THREADS EMB_DIM TOWER...``.
Same rows, batch size, embedding dimension, tower sizes and dropout as our model,
with torch-rechub's own pipeline: ``DataGenerator`` (a map-style Dataset over
numpy arrays + torch DataLoader, shuffled) and ``MTLTrainer.train_one_epoch``
(Adam over all parameters, dense embedding gradients). rechub's ESMM takes
categorical features only, so our 3 numeric inputs are not given to it.
Prints one JSON line: rows, seconds, rows_per_s.
"""

import json
import sys
import time

import numpy as np
import torch
from torch_rechub.basic.features import SparseFeature
from torch_rechub.models.multi_task import ESMM
from torch_rechub.trainers import MTLTrainer
from torch_rechub.utils.data import DataGenerator


def main() -> None:
    path, batch, threads, emb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    tower = [int(x) for x in sys.argv[5:]]
    torch.set_num_threads(threads)
    data = np.load(path)
    names = [k for k in data.files if k.startswith("cat_")]
    buckets = json.loads(str(data["buckets"]))
    x = {k: data[k].astype(np.int64) for k in names}
    click, conv = data["click"].astype(np.float32), data["conversion"].astype(np.float32)
    y = np.stack([conv, click, click * conv], axis=1)  # rechub's order: cvr, ctr, ctcvr
    feats = [SparseFeature(k, vocab_size=buckets[k], embed_dim=emb) for k in names]
    half = len(feats) // 2
    model = ESMM(
        feats[:half],
        feats[half:],
        cvr_params={"dims": tower, "dropout": 0.1},
        ctr_params={"dims": tower, "dropout": 0.1},
    )
    train_dl, _, _ = DataGenerator(x, y).generate_dataloader(x_val=x, y_val=y, x_test=x, y_test=y, batch_size=batch)
    trainer = MTLTrainer(
        model,
        task_types=["classification"] * 3,
        optimizer_params={"lr": 1e-3, "weight_decay": 0.0},
        n_epoch=1,
        device="cpu",
    )
    t0 = time.perf_counter()
    trainer.train_one_epoch(train_dl)
    secs = time.perf_counter() - t0
    print(json.dumps({"rows": int(len(click)), "seconds": secs, "rows_per_s": len(click) / secs}))


if __name__ == "__main__":
    main()
