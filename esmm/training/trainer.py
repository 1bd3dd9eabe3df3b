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
import datetime as dt
import hashlib
import inspect
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

# Imported here, before any process group exists, on purpose (issue 24). This module binds
# ``group=group.WORLD`` as the default argument of ten functions when it is first imported,
# and DDP's constructor imports it. Imported after init_process_group it captures the
# default group in those defaults, so destroy_process_group cannot free it: gloo's threads
# (gloo_tcp_loop, pt_gloo_runloop) then outlive train() into interpreter finalisation, where
# a rank intermittently aborted with "terminate called without an active exception"
# (SIGABRT) after a successful run. Imported first, the defaults hold None (= the default
# group at call time). :func:`_release_group_defaults` covers a caller that imported it late.
import torch.distributed.nn.functional as _dist_nn_functional
from torch import nn

from esmm.config.schema import Config
from esmm.data.examples import Batch, Snapshot, cat_width, example_batches, latest_version, resolve_snapshot
from esmm.model.losses import DELAY_METHODS, Feedback, compute_loss
from esmm.model.network import EntireSpaceModel, build_model
from esmm.model.parallel import embedding_gradients, note, precision
from esmm.training.delay import DelayCurve, fit_from_examples
from esmm.training.result import TrainResult
from esmm.util.files import atomic_torch_save
from esmm.util.timeutil import utc_now

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


@dataclass
class _Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup(cfg: Config) -> _Dist:
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but torch sees no GPU; use train.device=cpu or auto")
    use_cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    if world > 1 and not dist.is_initialized():
        _init_group("nccl" if use_cuda else "gloo", rank, world, dt.timedelta(minutes=30))
    return _Dist(rank, world, local, device)


def _init_group(backend: str, rank: int, world: int, timeout: dt.timedelta) -> None:
    """The default process group; under torchrun, keyed by the restart round.

    Why: torchrun's agent keeps one store across ``--max-restarts`` rounds, so the keys a
    killed round left (its rank 0's address) are still there when the restarted ranks
    meet; a rank that read the old address first failed with "Gloo connectFullMesh
    failed ... Connection refused" (about every other restart here). A prefix per round
    makes each round see only its own keys.
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or "MASTER_ADDR" not in os.environ:
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
        return
    hosts_store = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=hosts_store, timeout=timeout
    )
    dist.init_process_group(
        backend, store=dist.PrefixStore(f"esmm/restart_{restart}", store), rank=rank, world_size=world, timeout=timeout
    )


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


def _any_has_batch(have: bool, d: _Dist) -> bool:
    if d.world_size == 1:
        return have
    flag = torch.tensor([1 if have else 0], dtype=torch.int32, device=d.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _gather_counts(n: int, d: _Dist) -> list[int]:
    """``n`` of every rank, in rank order (a collective: all ranks call it together)."""
    if d.world_size == 1:
        return [n]
    got = [torch.zeros(1, dtype=torch.long, device=d.device) for _ in range(d.world_size)]
    dist.all_gather(got, torch.tensor([n], dtype=torch.long, device=d.device))
    return [int(x.item()) for x in got]


def _dummy_batch(cfg: Config) -> Batch:
    """One all-zero row: a dry rank's stand-in so it joins the gradient all-reduce."""
    return Batch(
        torch.zeros(1, cat_width(cfg.features), dtype=torch.long),
        torch.zeros(1, len(cfg.features.numeric)),
        torch.zeros(1),
        torch.zeros(1),
    )


class _Running:
    """Exponential moving averages of the loss parts (for the progress bar)."""

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha, self.values = alpha, {}

    def update(self, parts: dict[str, torch.Tensor]) -> None:
        for k, v in parts.items():
            x = float(v)
            self.values[k] = x if k not in self.values else (1 - self.alpha) * self.values[k] + self.alpha * x


class _History:
    """Per-step loss records: parts are summed as tensors (no device sync per step) and
    averaged into one record every ``log_every`` steps."""

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []
        self._sums: dict[str, torch.Tensor] = {}
        self._n, self._epoch = 0, 0

    def add(self, loss, epoch: int) -> None:
        for k, v in {"total": loss.total.detach(), **loss.parts}.items():
            self._sums[k] = self._sums[k] + v if k in self._sums else v.clone()
        self._n, self._epoch = self._n + 1, epoch

    def record(self, step: int, samples: int) -> None:
        if self._n:
            self.records.append(
                {
                    "step": step,
                    "epoch": self._epoch,
                    "samples": samples,
                    "time": time.time(),
                    **{k: float(v) / self._n for k, v in self._sums.items()},
                }
            )
            self._sums, self._n = {}, 0


def train(cfg: Config) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.train``'s window of ``curated/examples`` (see module doc)."""
    d = _setup(cfg)
    try:
        return _train(cfg, d)
    finally:
        if d.world_size > 1 and dist.is_initialized():
            group = dist.group.WORLD
            dist.destroy_process_group()
            _release_group_defaults(group)


def _release_group_defaults(group: Any) -> int:
    """Drop references to the destroyed ``group`` that ``torch.distributed.nn.functional``'s
    default arguments hold (see the import at the top), so the group and its threads are
    freed now rather than during interpreter finalisation. ``None`` is what those defaults
    hold when the module is imported before a group exists. Returns how many were dropped."""
    dropped = 0
    for fn in vars(_dist_nn_functional).values():
        defaults = getattr(fn, "__defaults__", None)
        if inspect.isfunction(fn) and defaults and any(v is group for v in defaults):
            fn.__defaults__ = tuple(None if v is group else v for v in defaults)
            dropped += 1
    return dropped


def _train(cfg: Config, d: _Dist) -> TrainResult:
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
    history = _History()
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
        rank_samples = _gather_counts(samples, d)  # every rank calls this at the same step
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
    running = _Running()
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
                if not _any_has_batch(batch is not None, d):
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
        _finish(cfg, model, snapshot, result, key, d, curve)
    return result


def _delay_curve(cfg: Config, table: str, version: int, d: _Dist) -> Optional[DelayCurve]:
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


def _finish(
    cfg: Config,
    model: EntireSpaceModel,
    snapshot: Snapshot,
    result: TrainResult,
    key: str,
    d: _Dist,
    curve: Optional[DelayCurve] = None,
) -> None:
    """Rank 0: evaluate on ``eval_dates``, save the artifact, log it to MLflow, register it."""
    from esmm.evaluation.metrics import eval_maturity, evaluate
    from esmm.registry import artifacts as registry
    from esmm.registry import tracking

    t = cfg.train
    now = utc_now()
    model_id = f"{cfg.model.kind}-{now.strftime('%Y%m%dT%H%M%S')}-{key[:8]}"
    artifact_dir = Path(cfg.lakehouse.path("models")) / model_id
    metrics: dict[str, float] = {}
    if t.eval_dates:
        eval_snap = resolve_snapshot(snapshot.table_path, list(t.eval_dates), snapshot.version)
        share = eval_maturity(eval_snap, log=lambda m: note(m, True))
        metrics = evaluate(
            model,
            eval_snap,
            cfg.features,
            truth_path=cfg.lakehouse.path("truth"),
            mature_only=share > 0,
            batch_size=t.eval_batch_size,
            out_dir=artifact_dir,
            device=d.device,
        )
    from esmm.calibration.fit import after_training

    cal_metrics, calibration = after_training(cfg, model, model_id, snapshot, artifact_dir, d.device)
    metrics.update(cal_metrics)
    if t.eval_dates:
        metrics["eval_label_mature_share"] = share
    meta = {
        "model_id": model_id,
        "kind": cfg.model.kind,
        "created_at": now.isoformat(),
        "model": dataclasses.asdict(cfg.model),
        "features": dataclasses.asdict(cfg.features),
        "feature_mapping_id": cfg.features.mapping_id,
        "examples": {"path": snapshot.table_path, "version": snapshot.version, "dates": list(snapshot.dates)},
        "window": {"train_start": t.train_start, "train_end": t.train_end, "eval_dates": list(t.eval_dates)},
        "train": dataclasses.asdict(t),
        "delay_curve": curve.summary() if curve is not None else None,
        "training": {
            "steps": result.steps,
            "samples": result.samples,
            "seconds": result.seconds,
            "samples_per_s": result.samples_per_s,
            "world_size": d.world_size,
            "embedding_gradients": "sparse" if model.embedding.table.sparse else "dense",
            "losses": result.losses,
            "resumed_from_step": result.resumed_from_step,
        },
        "metrics": metrics,
        "calibration": calibration,
        "code_version": registry.code_version(),
    }
    tracker = tracking.start_run(
        cfg,
        model_id,
        tracking.training_tags(
            cfg,
            model_id,
            snapshot.table_path,
            snapshot.version,
            list(snapshot.dates),
            d.world_size,
            meta["code_version"],
        ),
    )
    meta["mlflow_run_id"] = tracker.run_id
    with tracker:
        registry.save_artifact(artifact_dir, model, meta, losses=result.history)
        tracker.log_training(cfg, meta, result.history, artifact_dir)
    if t.register:
        registry.register(cfg.lakehouse.path("registry"), artifact_dir)
    result.model_id, result.artifact_dir, result.metrics = model_id, str(artifact_dir), metrics
    result.mlflow_run_id = meta["mlflow_run_id"]
