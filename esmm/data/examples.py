"""Data path of the trainer: one Delta snapshot of ``curated/examples`` -> Petastorm -> tensors.

No JVM: the snapshot's file list comes from the ``deltalake`` package, so torchrun
ranks and TorchDistributor tasks read Delta without Spark.

Exactly the files of one Delta version are read (never the folder): Parquet
files of overwritten or vacuum-pending versions stay in the folder until VACUUM,
and a folder read would mix them in.

Input table ``curated/examples`` (written by :mod:`pipelines.features.job`), partitioned by ``dt``::

    impression_id STRING, dt STRING, click INT, conversion INT, label_mature BOOLEAN,
    click_elapsed_s DOUBLE (seconds from the first click to the labels' as-of; null without a click),
    conversion_delay_s DOUBLE (seconds from the first click to the conversion; null without one),
    <categorical feature name> INT (one per spec.categorical, in [0, buckets)),
    <numeric feature name> FLOAT (one per spec.numeric), feature_mapping_id STRING

A multi-valued field (``multi``) is ARRAY<INT> in the table; in ``cat`` it takes
``max_len`` columns: its first ``max_len`` ids, padded with :data:`PAD` (-1, the
mask: not an embedding row). ``W`` = :func:`cat_width` (``F`` without multi fields).

A :class:`Batch` holds ``cat`` [B, W] long, ``num`` [B, N] float, ``click`` [B]
float and ``conversion`` [B] float, column order = spec order, and with a delay curve
``survival`` [B] float: for a clicked, unconverted row whose label is not mature,
S(click_elapsed_s), the probability that its conversion is still to come; 0 elsewhere.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from esmm.config.schema import FeatureSpec

LABEL_COLUMNS = ("click", "conversion", "label_mature")
# Read only by the delayed-feedback methods (an examples table of an older release lacks them).
DELAY_COLUMNS = ("click_elapsed_s", "conversion_delay_s")
PAD = -1  # padding of a multi-valued field's ids in ``cat``


def cat_width(spec: FeatureSpec) -> int:
    """W: columns of ``cat`` (1 per single-valued field, ``max_len`` per multi-valued one)."""
    return sum(f.width for f in spec.categorical)


def pad_lists(lengths: np.ndarray, values: np.ndarray, max_len: int) -> np.ndarray:
    """Ragged rows (``lengths`` [n], their ``values`` concatenated) -> [n, max_len] int64,
    each row's first ``max_len`` values, the rest :data:`PAD`."""
    lengths = np.asarray(lengths, dtype=np.int64)
    out = np.full((len(lengths), max_len), PAD, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    row = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(int(lengths.sum())) - np.repeat(starts, lengths)
    keep = pos < max_len
    out[row[keep], pos[keep]] = np.asarray(values, dtype=np.int64)[keep]
    return out


def _pad_arrow(col, max_len: int) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    return pad_lists(lengths, arr.flatten().to_numpy(zero_copy_only=False), max_len)


def pack_categorical(columns, spec: FeatureSpec) -> np.ndarray:
    """Encoded columns (name -> pyarrow array: INT, or list<INT> for multi fields) -> cat [n, W] int64.

    Raises ValueError naming a column that holds NULLs (the feature mapping never writes one).
    """
    blocks = []
    for f in spec.categorical:
        col = columns[f.name]
        if col.null_count:
            raise ValueError(f"encoded feature column {f.name!r} holds {col.null_count} NULL(s)")
        if f.multi:
            blocks.append(_pad_arrow(col, f.max_len))
        else:
            blocks.append(np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)[:, None])
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((0, 0), np.int64)


def _pad_transform(spec: FeatureSpec):
    """Petastorm TransformSpec padding multi-valued columns to [max_len] (its reader stacks
    list columns only when every row has the same length)."""
    from petastorm.transform import TransformSpec

    multi = [f for f in spec.categorical if f.multi]
    if not multi:
        return None

    def pad(pdf):
        for f in multi:
            cells = pdf[f.name].values
            lengths = np.fromiter((len(c) for c in cells), dtype=np.int64, count=len(cells))
            values = np.concatenate(list(cells)) if len(cells) else np.zeros(0, np.int64)
            pdf[f.name] = list(pad_lists(lengths, values, f.max_len))
        return pdf

    return TransformSpec(pad, edit_fields=[(f.name, np.int64, (f.max_len,), False) for f in multi])


@dataclass(frozen=True)
class Snapshot:
    """The files of one Delta version of a table restricted to some ``dt`` partitions."""

    table_path: str
    version: int
    dates: tuple[str, ...]
    files: tuple[str, ...]  # absolute URLs (file:///... locally)
    rows: Optional[int] = None  # numRecords summed from the Delta log (None when a file has no stats)


def _url(path: str) -> str:
    return path if "://" in path else "file://" + path


def latest_version(table_path: str) -> int:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(table_path).version()
    except TableNotFoundError as e:
        raise FileNotFoundError(
            f"no Delta table at {table_path}; run `esmm features` (the examples " f"job) first"
        ) from e


def resolve_snapshot(table_path: str, dates: list[str], version: Optional[int] = None) -> Snapshot:
    """File URLs of ``dates`` in Delta ``version`` (latest when None) of ``table_path``.

    Raises FileNotFoundError naming the table, version and dates when none match.
    """
    from deltalake import DeltaTable

    if version is None:
        version = latest_version(table_path)
    try:
        table = DeltaTable(table_path, version=version)
    except Exception as e:  # deltalake raises several types for a missing version
        raise FileNotFoundError(f"{table_path}: cannot open Delta version {version}: {e}") from e
    files = table.file_uris(partition_filters=[("dt", "in", list(dates))])
    if not files:
        raise FileNotFoundError(
            f"{table_path} version {version} has no files for dt in "
            f"{dates[0]}..{dates[-1]}; build the examples for these dates first"
        )
    return Snapshot(
        table_path, version, tuple(dates), tuple(sorted(_url(f) for f in files)), _logged_rows(table, dates)
    )


def _logged_rows(table, dates: list[str]) -> Optional[int]:
    """Rows of ``dates`` from the Delta log's per-file ``numRecords`` (no data file is
    opened: the trainer sizes its learning-rate schedule from it)."""
    try:
        adds = table.get_add_actions(flatten=True).to_pandas()
    except Exception:  # noqa: BLE001 - an old log without stats: the caller falls back
        return None
    col = "partition.dt" if "partition.dt" in adds.columns else None
    if col is None or "num_records" not in adds.columns:
        return None
    n = adds.loc[adds[col].isin(list(dates)), "num_records"]
    return None if n.isna().any() else int(n.sum())


@dataclass
class Batch:
    cat: Tensor  # [B, W] long
    num: Tensor  # [B, N] float
    click: Tensor  # [B] float
    conversion: Tensor  # [B] float
    survival: Optional[Tensor] = None  # [B] float, with a delay curve (module docstring)

    def __len__(self) -> int:
        return self.click.shape[0]

    def to(self, device: torch.device) -> "Batch":
        return Batch(
            *(
                None if t is None else t.to(device, non_blocking=True)
                for t in (self.cat, self.num, self.click, self.conversion, self.survival)
            )
        )


def pending_survival(cols: dict[str, Tensor], survival: Callable[[Tensor], Tensor]) -> Tensor:
    """[B] float: ``survival(click_elapsed_s)`` on clicked, unconverted rows whose label is
    not mature, 0 on every other row (their label is final)."""
    pending = (cols["click"] > 0) & (cols["conversion"] == 0) & ~cols["label_mature"].bool()
    elapsed = cols["click_elapsed_s"].double()
    if bool(torch.isnan(elapsed[pending]).any()):
        raise ValueError(
            "curated/examples: a clicked row whose label is not mature has no click_elapsed_s "
            "(labels written before the column existed); re-run `esmm labels` and `esmm features` "
            "for the training days"
        )
    s = survival(torch.nan_to_num(elapsed, nan=0.0)).float()
    return torch.where(pending, s, torch.zeros_like(s))


def to_batch(
    cols: dict[str, Tensor],
    spec: FeatureSpec,
    mature_only: bool,
    survival: Optional[Callable[[Tensor], Tensor]] = None,
) -> Batch:
    """Column tensors (names of the examples contract) -> a :class:`Batch`.

    With ``mature_only`` rows whose ``label_mature`` is false are dropped: their
    conversions may still arrive, so they would be learned as false negatives.
    With ``survival`` (a delay curve: elapsed seconds [B] -> S [B]) the batch carries
    :func:`pending_survival`.
    """
    if any(f.multi for f in spec.categorical):  # [B] or [B, max_len] blocks, in spec order
        cat = torch.cat([cols[f.name].reshape(len(cols["click"]), -1).long() for f in spec.categorical], 1)
    else:
        cat = torch.stack([cols[f.name] for f in spec.categorical], 1).long()
    if spec.numeric:
        num = torch.stack([cols[f.name] for f in spec.numeric], 1).float()
    else:
        num = torch.zeros(cat.shape[0], 0)
    click, conv = cols["click"].float(), cols["conversion"].float()
    surv = pending_survival(cols, survival) if survival is not None else None
    if mature_only:
        keep = cols["label_mature"].bool()
        if not bool(keep.all()):
            cat, num, click, conv = cat[keep], num[keep], click[keep], conv[keep]
            surv = None if surv is None else surv[keep]
    return Batch(cat, num, click, conv, surv)


def _columns(spec: FeatureSpec, delay: bool = False) -> list[str]:
    return [
        *LABEL_COLUMNS,
        *(DELAY_COLUMNS if delay else ()),
        *(f.name for f in spec.categorical),
        *(f.name for f in spec.numeric),
    ]


@contextlib.contextmanager
def example_batches(
    snapshot: Snapshot,
    spec: FeatureSpec,
    batch_size: int,
    *,
    mature_only: bool = True,
    shuffle: bool = True,
    seed: int = 0,
    shuffle_buffer: int = 50_000,
    cur_shard: int = 0,
    shard_count: int = 1,
    workers: int = 2,
    survival: Optional[Callable[[Tensor], Tensor]] = None,
) -> Iterator[Iterator[Batch]]:
    """One pass over this rank's shard of ``snapshot`` as :class:`Batch` es.

    Petastorm's ``make_batch_reader`` reads the snapshot's files (row groups in
    a seeded random order when ``shuffle``; row group k goes to shard
    k mod ``shard_count``; with fewer row groups than shards, whole files
    round-robin), ``BatchedDataLoader`` turns column batches into
    tensors through a shuffle buffer of ``shuffle_buffer`` rows. A shard with no
    file yields nothing (the trainer's stop flag ends the epoch for all ranks). Batches may be
    smaller than ``batch_size`` after the ``mature_only`` filter. With ``survival`` (a delay
    curve) the delay columns are read too and each batch carries its ``survival``.

    Use as ``with example_batches(...) as batches: for b in batches: ...``.
    """
    from petastorm import make_batch_reader
    from petastorm.pytorch import BatchedDataLoader

    # petastorm 0.12 uses pyarrow's legacy dataset API (pinned pyarrow < 15): silence its
    # per-call deprecation noise, which would bury the training log.
    for cat in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=cat, module=r"petastorm(\..*)?$")
    files = list(snapshot.files)
    if shard_count > 1 and _row_group_count(files) < shard_count:
        # petastorm refuses to shard fewer row groups than shards (on every rank):
        # give whole files round-robin instead; a rank left without one reads nothing.
        files, cur_shard, shard_count = files[cur_shard::shard_count], None, None
        if not files:
            yield iter(())
            return
    try:
        reader = make_batch_reader(
            files,
            schema_fields=_columns(spec, survival is not None),
            num_epochs=1,
            shuffle_row_groups=shuffle,
            seed=seed,
            cur_shard=cur_shard,
            shard_count=shard_count,
            workers_count=workers,
            transform_spec=_pad_transform(spec),
        )
    except Exception as e:
        raise ValueError(
            f"{snapshot.table_path} v{snapshot.version}: cannot read examples "
            f"(columns {_columns(spec, survival is not None)}): {e}"
        ) from e
    with reader:
        loader = BatchedDataLoader(
            reader, batch_size=batch_size, shuffling_queue_capacity=shuffle_buffer if shuffle else 0
        )
        yield (b for b in (to_batch(cols, spec, mature_only, survival) for cols in loader) if len(b))


def _row_group_count(files: list[str]) -> int:
    """Total Parquet row groups of ``files`` (footers only)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    total = 0
    for url in files:
        fs, path = pafs.FileSystem.from_uri(url)
        with fs.open_input_file(path) as f:
            total += pq.ParquetFile(f).metadata.num_row_groups
    return total


def _local_paths(snapshot: Snapshot) -> list[str]:
    return [f[len("file://") :] if f.startswith("file://") else f for f in snapshot.files]


def _mature(batch) -> np.ndarray:
    return np.asarray(batch.column("label_mature").to_numpy(zero_copy_only=False), dtype=bool)


def read_arrow(snapshot: Snapshot, columns: list[str], filter_mature: bool = False):
    """The snapshot's rows as one pyarrow Table (scalar columns of one or a few days)."""
    import pyarrow.dataset as ds

    table = ds.dataset(_local_paths(snapshot), format="parquet").to_table(columns=columns)
    return table.filter(_mature(table)) if filter_mature else table


def mature_share(snapshot: Snapshot) -> float:
    """The share of the snapshot's rows whose labels are mature (1.0 for no row)."""
    m = _mature(read_arrow(snapshot, ["label_mature"]))
    return float(m.mean()) if len(m) else 1.0


def arrow_batches(snapshot: Snapshot, columns: list[str], batch_size: int, filter_mature: bool = False) -> Iterator:
    """The snapshot's rows as pyarrow RecordBatches of at most ``batch_size`` rows (none empty).

    Evaluation streams a day through these, so a multi-valued field is packed into
    its padded [B, max_len] block one batch at a time, never for the whole day.
    """
    import pyarrow.dataset as ds

    for rb in ds.dataset(_local_paths(snapshot), format="parquet").to_batches(columns=columns, batch_size=batch_size):
        if filter_mature:
            rb = rb.filter(_mature(rb))
        if rb.num_rows:
            yield rb
