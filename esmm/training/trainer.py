"""``train(config) -> TrainResult``: one function for every launcher.

* single process: ``train(cfg)``;
* ``torchrun --nproc_per_node N -m jobs.cli train ...`` (or any launcher that
  sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``):
  DDP over gloo on CPU, NCCL on GPU;
* Spark: ``TorchDistributor(num_processes=N, local_mode=True, use_gpu=False).run(train, cfg)``.

Per step: every rank reads its own shard of one Delta snapshot (esmm.data.examples), runs
the model, the loss of ``cfg.model.kind`` (esmm.model.losses), and two optimizers: Adam
on the towers, SparseAdam (or Adagrad) on the embedding table, whose gradient is
sparse so a step touches only the rows of the batch; under DDP over NCCL (no sparse
all-reduce) the gradient is dense and the table's optimizer Adam (esmm/model/parallel.py,
``model.sparse_embedding``). ``train.amp``: bf16 autocast of the forward pass on CUDA.

Uneven shards (a rank may even have no file at all): before each step the ranks
all-reduce (MAX) a "have a batch" flag. While any rank has data, a rank that ran
dry still steps, on a one-row dummy batch whose loss is multiplied by 0, so every
rank joins every gradient all-reduce (what DDP's Join context does) and the
replicas stay identical; the epoch ends when all ranks are dry. No row is skipped;
in those tail steps the gradient average includes the dry ranks' zeros.

Rank 0 shows a progress bar (rows/s, running losses), records the mean loss
parts of its batches every ``log_every`` steps (``TrainResult.history``, kept in
checkpoints and written to the artifact's ``losses.json``), writes checkpoints
atomically every ``checkpoint_every`` steps and at each epoch end, evaluates,
saves the artifact, logs the run to MLflow (esmm.registry.tracking; best effort) and
registers it. A rerun of the same configuration (same
model, data window, Delta version, world size) resumes from the last checkpoint.
Resuming inside an epoch skips the number of batches already done; with a
shuffle buffer fed by parallel readers the skipped rows are the same number,
not exactly the same rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from esmm.config.schema import Config
from esmm.data.examples import Batch, cat_width, example_batches, latest_version, resolve_snapshot
from esmm.model.losses import DELAY_METHODS, Feedback, compute_loss
from esmm.model.network import EntireSpaceModel, build_model
from esmm.model.parallel import embedding_gradients, note, precision
from esmm.training.artifact import finish
from esmm.training.delay import DelayCurve, fit_from_examples
from esmm.training.distributed import Dist, any_has_batch, gather_counts, setup, shutdown
from esmm.training.history import History, Running
from esmm.training.result import TrainResult
from esmm.util.files import atomic_torch_save

# Fields that change how a run is observed, not what it computes: they do not
# enter the checkpoint key, so a crashed run can be resumed with them changed.
_OPERATIONAL = {
    "progress",
    "log_every",
    "fail_after_steps",
    "checkpoint_every",
    "checkpoint_dir",
    "resume",
    "register",
    "reader_workers",
    "eval_batch_size",
    "eval_dates",
    "device",
    "torch_threads",
}


def _run_key(cfg: Config, table: str, version: int, world: int) -> str:
    train = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in _OPERATIONAL}
    payload = json.dumps(
        {
            "model": dataclasses.asdict(cfg.model),
            "train": train,
            "features": cfg.features.mapping_id,
            "table": table,
            "version": version,
            "world": world,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def checkpoint_dir(cfg: Config) -> Path:
    if cfg.train.checkpoint_dir:
        return Path(cfg.train.checkpoint_dir)
    return Path(cfg.lakehouse.root).expanduser().resolve() / "checkpoints"


def _optimizers(model: EntireSpaceModel, cfg: Config) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    t = cfg.train
    dense = torch.optim.Adam(model.dense_parameters(), lr=t.lr, weight_decay=t.weight_decay)
    emb = [model.embedding.table.weight]
    if t.embedding_optimizer == "adagrad":
        sparse = torch.optim.Adagrad(emb, lr=t.embedding_lr)
    elif model.embedding.table.sparse:
        sparse = torch.optim.SparseAdam(emb, lr=t.embedding_lr)
    else:  # dense gradients (DDP over NCCL has no sparse all-reduce): plain Adam
        sparse = torch.optim.Adam(emb, lr=t.embedding_lr)
    return dense, sparse


def planned_steps(rows: Optional[int], cfg: Config, world_size: int) -> Optional[int]:
    """Optimizer steps the run will take: ``ceil(rows / (batch_size x world_size))`` per
    epoch (rows from the Delta log, immature rows included, so a slight over-estimate
    when some are dropped), capped by ``max_steps``. None when the rows are unknown."""
    t = cfg.train
    if rows is None:
        return t.max_steps or None
    steps = max(1, math.ceil(rows / (t.batch_size * world_size))) * t.epochs
    return min(steps, t.max_steps) if t.max_steps else steps


def lr_factor(step: int, total: Optional[int], cfg: Config) -> float:
    """Learning-rate multiplier at ``step`` (0-based) of ``total``: 1 for ``constant``;
    for ``linear`` from 1 down to ``lr_final_fraction`` at the last step. Why decay: with
    rare conversions a batch holds one or two positives, and the towers' output biases
    follow the last few hundred steps at full rate, so the model's mean prediction
    (its calibration level) swung by a factor of two between training seeds."""
    t = cfg.train
    if t.lr_schedule == "constant" or not total:
        return 1.0
    frac = min(step / max(total - 1, 1), 1.0)
    return 1.0 - (1.0 - t.lr_final_fraction) * frac


def _set_lr(opts: tuple[torch.optim.Optimizer, ...], bases: tuple[float, ...], factor: float) -> None:
    for opt, base in zip(opts, bases):
        for g in opt.param_groups:
            g["lr"] = base * factor


def _dummy_batch(cfg: Config) -> Batch:
    """One all-zero row: a dry rank's stand-in so it joins the gradient all-reduce."""
    return Batch(
        torch.zeros(1, cat_width(cfg.features), dtype=torch.long),
        torch.zeros(1, len(cfg.features.numeric)),
        torch.zeros(1),
        torch.zeros(1),
    )


def train(cfg: Config) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.train``'s window of ``curated/examples`` (see module doc)."""
    d = setup(cfg)
    try:
        return _train(cfg, d)
    finally:
        shutdown(d)


def _train(cfg: Config, d: Dist) -> TrainResult:
    t = cfg.train
    sparse, why = embedding_gradients(cfg.model, d.world_size, d.device)
    prec = precision(t, d.device)
    note(f"{why}; {prec.note}", d.is_main)
    table = cfg.lakehouse.path("examples")
    # All ranks must read the same version: rank 0 picks it, the others receive it.
    version = t.examples_version if t.examples_version is not None else (latest_version(table) if d.is_main else -1)
    if d.world_size > 1:
        box = [version]
        dist.broadcast_object_list(box, src=0)
        version = box[0]
    snapshot = resolve_snapshot(table, t.dates, version)
    curve = _delay_curve(cfg, table, version, d)

    # Seeds differ per rank (dropout, shuffling); DDP broadcasts rank 0's initial weights.
    torch.manual_seed(t.seed + d.rank)
    model = build_model(dataclasses.replace(cfg.model, sparse_embedding=sparse), cfg.features)
    model.to(d.device)
    dense_opt, emb_opt = _optimizers(model, cfg)

    key = _run_key(cfg, table, version, d.world_size)
    ckpt_path = checkpoint_dir(cfg) / key / "last.pt"
    step, epoch0, skip, samples, resumed = 0, 0, 0, 0, 0
    history = History()
    resume = t.resume and ckpt_path.exists()
    if d.world_size > 1:  # every rank must take the same decision
        box = [resume]
        dist.broadcast_object_list(box, src=0)
        resume = box[0]
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(
                f"rank {d.rank}: rank 0 resumes from {ckpt_path} but this rank "
                f"cannot see it; put train.checkpoint_dir on a shared filesystem"
            )
        state = torch.load(ckpt_path, map_location=d.device, weights_only=True)
        model.load_state_dict(state["model"])
        dense_opt.load_state_dict(state["dense_opt"])
        emb_opt.load_state_dict(state["emb_opt"])
        step, epoch0, skip = state["step"], state["epoch"], state["batches_in_epoch"]
        # Each rank resumes its own count: the shards are uneven, so rank 0's is not theirs.
        samples = state.get("rank_samples", [state["samples"]] * d.world_size)[d.rank]
        history.records = list(state.get("history", []))
        resumed = step

    total_steps = planned_steps(snapshot.rows, cfg, d.world_size)
    if t.lr_schedule != "constant" and total_steps is None:
        print(
            f"esmm train: {table} has no row counts in its Delta log; train.lr_schedule="
            f"{t.lr_schedule} falls back to a constant learning rate",
            file=sys.stderr,
        )
    lr_bases = (t.lr, t.embedding_lr)

    net: nn.Module = model
    if d.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)

    def save_checkpoint(epoch: int, batches_in_epoch: int) -> None:
        rank_samples = gather_counts(samples, d)  # every rank calls this at the same step
        if d.is_main:
            atomic_torch_save(
                {
                    "model": model.state_dict(),
                    "dense_opt": dense_opt.state_dict(),
                    "emb_opt": emb_opt.state_dict(),
                    "step": step,
                    "epoch": epoch,
                    "batches_in_epoch": batches_in_epoch,
                    "samples": samples,
                    "rank_samples": rank_samples,
                    "history": history.records,
                    "config": cfg.to_dict(),
                    "examples_version": version,
                    "run_key": key,
                },
                ckpt_path,
            )

    from tqdm import tqdm

    bar = tqdm(
        disable=not (t.progress and d.is_main),
        unit="row",
        unit_scale=True,
        desc=f"train {cfg.model.kind}",
        initial=samples,
        mininterval=1.0,
    )
    running = Running()
    t0, samples0 = time.perf_counter(), samples
    net.train()
    stop = False
    for epoch in range(epoch0, t.epochs):
        with example_batches(
            snapshot,
            cfg.features,
            t.batch_size,
            mature_only=t.mature_only,
            shuffle=True,
            seed=t.seed + 1000 * epoch + d.rank,
            shuffle_buffer=t.shuffle_buffer,
            cur_shard=d.rank,
            shard_count=d.world_size,
            workers=t.reader_workers,
            survival=curve.survival if curve is not None else None,
        ) as batches:
            it = iter(batches)
            done_in_epoch = 0
            while True:
                batch: Optional[Batch] = next(it, None)
                if not any_has_batch(batch is not None, d):
                    break
                if epoch == epoch0 and done_in_epoch < skip:  # resume: batches already trained
                    done_in_epoch += 1
                    continue
                dry = batch is None
                b = (_dummy_batch(cfg) if dry else batch).to(d.device)
                with prec.autocast(d.device):
                    out = net(b.cat, b.num)
                fb = Feedback(t.delayed_feedback, b.survival) if b.survival is not None else None
                loss = compute_loss(prec.fp32(out), b.click, b.conversion, cfg.model, fb)
                dense_opt.zero_grad(set_to_none=True)
                emb_opt.zero_grad(set_to_none=True)
                (loss.total * 0.0 if dry else loss.total).backward()
                _set_lr((dense_opt, emb_opt), lr_bases, lr_factor(step, total_steps, cfg))
                dense_opt.step()
                emb_opt.step()
                step += 1
                done_in_epoch += 1
                samples += 0 if dry else len(b)
                bar.update(0 if dry else len(b))
                if d.is_main and not dry:
                    history.add(loss, epoch)
                if d.is_main and not dry and (step % t.log_every == 0 or step == 1):
                    history.record(step, samples)
                    running.update(loss.parts)
                    secs = time.perf_counter() - t0
                    bar.set_postfix(
                        {
                            "rows/s": f"{(samples - samples0) / max(secs, 1e-9):,.0f}",
                            **{k: f"{v:.4f}" for k, v in running.values.items()},
                        },
                        refresh=False,
                    )
                if step % t.checkpoint_every == 0:
                    save_checkpoint(epoch, done_in_epoch)
                if t.fail_after_steps and step >= t.fail_after_steps:
                    raise RuntimeError(
                        f"train.fail_after_steps={t.fail_after_steps}: simulated crash " f"at step {step}"
                    )
                if t.max_steps and step >= t.max_steps:
                    # Every rank counts the same steps, so all stop here together.
                    stop = True
                    break
        history.record(step, samples)  # each epoch's curve ends at its last step
        save_checkpoint(epoch + 1, 0)
        if stop:
            break
    seconds = time.perf_counter() - t0
    bar.close()
    total = samples
    if d.world_size > 1:
        box = torch.tensor([samples], dtype=torch.long, device=d.device)
        dist.all_reduce(box)
        total = int(box.item())
    result = TrainResult(
        rank=d.rank,
        world_size=d.world_size,
        model_id=None,
        artifact_dir=None,
        examples_version=version,
        steps=step,
        samples=samples,
        seconds=seconds,
        samples_per_s=(samples - samples0) / max(seconds, 1e-9),
        resumed_from_step=resumed,
        losses=dict(running.values),
        checkpoint=str(ckpt_path),
        total_samples=total,
        history=history.records,
        param_digest=_digest(model),
    )
    if d.is_main:
        finish(cfg, model, snapshot, result, key, d, curve)
    return result


def _delay_curve(cfg: Config, table: str, version: int, d: Dist) -> Optional[DelayCurve]:
    """The delay curve of ``dfm`` / ``esdfm`` (None for the other methods). Every rank fits
    the same curve from the same Delta version: no broadcast needed."""
    t = cfg.train
    if t.delayed_feedback not in DELAY_METHODS:
        return None
    curve = fit_from_examples(table, version, t.train_end, t.delay_fit_days)
    q = curve.summary()
    note(
        f"delayed feedback {t.delayed_feedback}: delay curve from {q['conversions']:,} mature conversions "
        f"on {q['dates'][0]} (median {q['median_s'] / 3600:.1f} h, p90 {q['p90_s'] / 3600:.1f} h)",
        d.is_main,
    )
    return curve


def _digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
