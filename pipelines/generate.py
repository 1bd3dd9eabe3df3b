"""Synthetic click logs that carry the problem ESMM solves and the mess real logs have.

The world (all randomness is a hash of ``(seed, tag, key)``, so every row is
deterministic for a seed and configuration, whatever the partitioning, and the
cost is linear in rows):

* ``n_users`` users and ``n_items`` items drawn with Zipf-like (1/rank)
  popularity. Users have gender, age bucket, city (Zipf over 1,500) and an
  activity level; items a category (Zipf over 300), brand (3,000), shop
  (12,000), a log-normal price that depends on the category, and a rating.
* Latent factors, k=4 each: *shared* ``s_u . s_i`` drives both click and
  conversion; *click-only* ``c_u . c_i`` and *conversion-only* ``v_u . v_i``;
  an item "clickbait" score raises clicks and lowers conversions; category x
  age and category x gender affinities; position bias on clicks only.

      logit CTR = a + 0.9 S + 0.6 C + 0.4 A_ctr + 0.5 bait - 0.35 ln(position)
      logit CVR = b + 0.9 S + 0.6 V + 0.4 A_cvr - 0.5 bait - 0.3 price_z + 0.2 (rating - 3.5)

  ``a`` and ``b`` are solved on a sample so that mean(true_ctr) = ``ctr`` and
  E[true_ctr * true_cvr] / E[true_ctr] = ``cvr``. Because S enters both, clicked
  impressions have a higher mean ``true_cvr`` than all impressions: a CVR model
  trained on clicks alone is biased over the entire space.
* Clicks: an impression is clicked with probability ``true_ctr``; a share
  ``multi_click_rate`` of clicked impressions is clicked twice. Click delays are
  log-normal, seconds to minutes.
* Conversions: a clicked impression converts with probability ``true_cvr``
  after a log-normal delay (median ``conversion_delay_median``, sigma 2: minutes
  to days, about 1% beyond 7 days). A share ``no_click_id_rate`` arrives with
  ``click_id`` NULL and must be attributed last-touch by ``user_id``/``item_id``.
* Logging mess: ``duplicate_rate`` exact duplicates (at-least-once delivery),
  ``late_rate`` events that land in the next ``dt``, and ``malformed_rate``
  corrupted records (NULL/empty ids, timestamps years off, clicks of unknown
  impressions, conversions of unknown clicks).

Conversions (and clicks) of the last days may occur after the last generated
day; they keep their own ``dt``, as events that will arrive later do. The label
job's as-of time decides what it sees.

Output tables: the three raw tables of :mod:`pipelines.contract` and
``sim/truth`` (``impression_id`` STRING, ``true_ctr`` DOUBLE, ``true_cvr``
DOUBLE: the click probability, and the conversion probability *if clicked*,
for every impression; ``dt`` STRING = date of the impression's ``ts``).
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from esmm.config import Config, GenerateConfig
from esmm.timeutil import parse_duration

K = 4  # latent dimensions per factor
_TWO53 = float(2**53)
DEVICES = ["ios", "android", "pc", "mweb"]


def uniform(seed: int, tag: str, *cols: Column) -> Column:
    """Deterministic U[0,1) from a 64-bit hash of (seed, tag, cols)."""
    h = F.xxhash64(F.lit(seed), F.lit(tag), *cols)
    return F.pmod(h, F.lit(2**53).cast("long")).cast("double") / F.lit(_TWO53)


def normal(seed: int, tag: str, *cols: Column) -> Column:
    """Deterministic N(0,1) by Box-Muller over two hashed uniforms."""
    u1 = uniform(seed, tag + ":1", *cols)
    u2 = uniform(seed, tag + ":2", *cols)
    return F.sqrt(-2.0 * F.log(1.0 - u1)) * F.cos(2.0 * math.pi * u2)


def zipf_index(u: Column, n: int) -> Column:
    """Index in [0, n) with P(k) roughly proportional to 1/(k+1) (log-uniform)."""
    return F.least(F.floor(F.exp(u * math.log(n + 1))) - 1, F.lit(n - 1)).cast("long")


def _dot(prefix_a: str, prefix_b: str) -> Column:
    terms = [F.col(f"{prefix_a}{k}") * F.col(f"{prefix_b}{k}") for k in range(K)]
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out / math.sqrt(K)


def users(spark: SparkSession, cfg: GenerateConfig) -> DataFrame:
    """One row per user: uidx, user_id, attributes, latent factors su*, cu*, vu*."""
    s, u = cfg.seed, F.col("id")
    cols = [
        F.col("id").alias("uidx"),
        F.concat(F.lit("u"), F.col("id").cast("string")).alias("user_id"),
        F.floor(uniform(s, "gender", u) * 3).cast("long").alias("user_gender"),
        (F.floor(uniform(s, "age", u) * 8) + 1).cast("long").alias("user_age"),
        F.concat(F.lit("city"), zipf_index(uniform(s, "city", u), 1500).cast("string")).alias("user_city"),
        F.round(F.exp(2.0 + 1.0 * normal(s, "activity", u)), 0).alias("user_activity"),
    ]
    for k in range(K):
        cols += [normal(s, f"su{k}", u).alias(f"su{k}"), normal(s, f"cu{k}", u).alias(f"cu{k}"),
                 normal(s, f"vu{k}", u).alias(f"vu{k}")]
    return spark.range(cfg.n_users).select(*cols)


def items(spark: SparkSession, cfg: GenerateConfig) -> DataFrame:
    """One row per item: iidx, item_id, attributes, price_z, bait, latent si*, ci*, vi*."""
    s, i = cfg.seed, F.col("id")
    cat = zipf_index(uniform(s, "category", i), 300)
    cat_price = normal(s, "catprice", cat)  # category-level price level
    price_z = 0.8 * cat_price + 0.6 * normal(s, "price", i)
    cols = [
        F.col("id").alias("iidx"),
        F.concat(F.lit("i"), F.col("id").cast("string")).alias("item_id"),
        cat.alias("item_category"),
        F.concat(F.lit("b"), zipf_index(uniform(s, "brand", i), 3000).cast("string")).alias("item_brand"),
        F.concat(F.lit("s"), zipf_index(uniform(s, "shop", i), 12000).cast("string")).alias("item_shop"),
        price_z.alias("price_z"),
        F.round(F.exp(3.5 + 1.0 * price_z), 2).alias("price"),
        F.round(F.lit(1.0) + 4.0 * F.pow(uniform(s, "rating", i), 0.4), 1).alias("item_rating"),
        normal(s, "bait", i).alias("bait"),
    ]
    for k in range(K):
        cols += [normal(s, f"si{k}", i).alias(f"si{k}"), normal(s, f"ci{k}", i).alias(f"ci{k}"),
                 normal(s, f"vi{k}", i).alias(f"vi{k}")]
    return spark.range(cfg.n_items).select(*cols)


def _day_start_epoch(cfg: GenerateConfig) -> int:
    d0 = dt.date.fromisoformat(cfg.start_date)
    return int(dt.datetime(d0.year, d0.month, d0.day, tzinfo=dt.timezone.utc).timestamp())


def _date_of(epoch_s: Column) -> Column:
    """UTC date string of epoch seconds, independent of the session time zone."""
    return F.date_add(F.lit("1970-01-01").cast("date"), F.floor(epoch_s / 86400).cast("int")).cast("string")


def _ts(epoch_s: Column) -> Column:
    return F.timestamp_seconds(epoch_s)


def _arrival_dt(epoch_s: Column, late: Column) -> Column:
    """Arrival partition: the UTC date of the event, or the next date for late events."""
    return F.when(late, _date_of(epoch_s + 86400)).otherwise(_date_of(epoch_s))


def base_impressions(spark: SparkSession, cfg: GenerateConfig, ids: DataFrame) -> DataFrame:
    """Impressions for the rows of ``ids`` (column ``id``: global row number) with
    their logit offsets ``zc0``, ``zv0`` (everything but the intercepts)."""
    s, n = cfg.seed, cfg.impressions_per_day
    r = F.col("id")
    imp = ids.select(
        r.alias("rid"),
        (r / n).cast("long").alias("day"),
        zipf_index(uniform(s, "user", r), cfg.n_users).alias("uidx"),
        zipf_index(uniform(s, "item", r), cfg.n_items).alias("iidx"),
        # Top slots are shown more often: position 1..10, skewed to the top.
        (F.floor(F.pow(uniform(s, "position", r), 1.6) * 10) + 1).cast("long").alias("position"),
        F.floor(uniform(s, "device", r) * len(DEVICES)).cast("int").alias("dev"),
        F.floor(uniform(s, "second", r) * 86400).cast("long").alias("sec"),
    )
    u_df, i_df = users(spark, cfg), items(spark, cfg)
    if cfg.n_users <= 2_000_000:
        u_df = F.broadcast(u_df)
    if cfg.n_items <= 2_000_000:
        i_df = F.broadcast(i_df)
    x = imp.join(u_df, "uidx").join(i_df, "iidx")
    start = _day_start_epoch(cfg)
    a_ctr = normal(s, "aff_ctr", F.col("item_category"), F.col("user_age"))
    a_cvr = normal(s, "aff_cvr", F.col("item_category"), F.col("user_gender"))
    zc0 = (0.9 * _dot("su", "si") + 0.6 * _dot("cu", "ci") + 0.4 * a_ctr + 0.5 * F.col("bait")
           - 0.35 * F.log(F.col("position").cast("double")))
    zv0 = (0.9 * _dot("su", "si") + 0.6 * _dot("vu", "vi") + 0.4 * a_cvr - 0.5 * F.col("bait")
           - 0.3 * F.col("price_z") + 0.2 * (F.col("item_rating") - 3.5))
    return x.select(
        "rid", "day", "uidx", "iidx",
        F.concat(F.lit("imp-"), F.lpad(F.col("rid").cast("string"), 12, "0")).alias("impression_id"),
        (F.lit(start) + F.col("day") * 86400 + F.col("sec")).alias("epoch"),
        "user_id", "item_id", "user_gender", "user_age", "user_city",
        "item_category", "item_brand", "item_shop", "position",
        F.element_at(F.array(*[F.lit(d) for d in DEVICES]), F.col("dev") + 1).alias("device"),
        F.floor(F.col("sec") / 3600).cast("long").alias("hour"),
        "price", "item_rating", "user_activity",
        zc0.alias("zc0"), zv0.alias("zv0"),
    )


@dataclass(frozen=True)
class Intercepts:
    ctr: float
    cvr: float


def _bisect(f, lo: float = -20.0, hi: float = 20.0, iters: int = 80) -> float:
    for _ in range(iters):
        mid = (lo + hi) / 2
        if f(mid) < 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def solve_intercepts(zc0: np.ndarray, zv0: np.ndarray, ctr: float, cvr: float) -> Intercepts:
    """Intercepts a, b with mean(sigmoid(a+zc0)) = ctr and the click-weighted
    mean of sigmoid(b+zv0) = cvr (conversions per clicked impression)."""
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    a = _bisect(lambda a: sig(a + zc0).mean() - ctr)
    w = sig(a + zc0)
    b = _bisect(lambda b: (w * sig(b + zv0)).sum() / w.sum() - cvr)
    return Intercepts(a, b)


def calibrate(spark: SparkSession, cfg: GenerateConfig, sample_rows: int = 100_000) -> Intercepts:
    """Solve the intercepts on a deterministic sample of the impression rows."""
    total = cfg.days * cfg.impressions_per_day
    step = max(1, total // sample_rows)
    ids = spark.range(0, total, step)
    pdf = base_impressions(spark, cfg, ids).select("zc0", "zv0").toPandas()
    return solve_intercepts(pdf["zc0"].to_numpy(), pdf["zv0"].to_numpy(), cfg.ctr, cfg.cvr)


def _malformed_kind(seed: int, tag: str, key: Column, rate: float, kinds: int) -> Column:
    """0 for a good record, else 1..kinds naming the kind of corruption."""
    u = uniform(seed, tag, key)
    return F.when(u < rate, (F.floor(u / rate * kinds) + 1).cast("int")).otherwise(F.lit(0))


def _with_duplicates(df: DataFrame, seed: int, tag: str, key: str, rate: float) -> DataFrame:
    """Append exact copies of a ``rate`` share of rows (at-least-once delivery)."""
    if rate <= 0:
        return df
    dups = df.where(uniform(seed, tag, F.col(key).cast("string")) < rate)
    return df.unionByName(dups)


@dataclass
class GeneratedLogs:
    impressions: DataFrame
    clicks: DataFrame
    conversions: DataFrame
    truth: DataFrame
    intercepts: Intercepts


def generate_logs(spark: SparkSession, cfg: GenerateConfig,
                  intercepts: Intercepts | None = None) -> GeneratedLogs:
    """Build the four output DataFrames (lazy; the caller writes them).

    Schemas follow :mod:`pipelines.contract`; see the module docstring for the
    model of the world.
    """
    s = cfg.seed
    ic = intercepts or calibrate(spark, cfg)
    total = cfg.days * cfg.impressions_per_day
    ids = spark.range(0, total, 1, numPartitions=cfg.days * cfg.partitions_per_day)
    base = base_impressions(spark, cfg, ids)
    rid = F.col("rid")
    base = base.select(
        "*",
        (1.0 / (1.0 + F.exp(-(F.lit(ic.ctr) + F.col("zc0"))))).alias("true_ctr"),
        (1.0 / (1.0 + F.exp(-(F.lit(ic.cvr) + F.col("zv0"))))).alias("true_cvr"),
    ).drop("zc0", "zv0")
    base = base.persist()

    truth = base.select("impression_id", "true_ctr", "true_cvr", _date_of(F.col("epoch")).alias("dt"))

    # ---- impressions
    bad = _malformed_kind(s, "bad_imp", rid, cfg.malformed_rate, 4)
    years = F.lit(3 * 365 * 86400)
    imp = base.select(
        F.when(bad == 1, F.lit(None).cast("string")).otherwise(F.col("impression_id")).alias("impression_id"),
        _ts(F.when(bad == 2, F.col("epoch") - years).otherwise(F.col("epoch"))).alias("ts"),
        F.when(bad == 3, F.lit("")).otherwise(F.col("user_id")).alias("user_id"),
        F.when(bad == 4, F.lit(None).cast("string")).otherwise(F.col("item_id")).alias("item_id"),
        "user_gender", "user_age", "user_city", "item_category", "item_brand", "item_shop",
        "position", "device", "hour",
        F.col("price").cast("double").alias("price"),
        F.col("item_rating").cast("double").alias("item_rating"),
        F.col("user_activity").cast("double").alias("user_activity"),
        _arrival_dt(F.col("epoch"), uniform(s, "late_imp", rid) < cfg.late_rate).alias("dt"),
    )
    imp = _with_duplicates(imp, s, "dup_imp", "impression_id", cfg.duplicate_rate)

    # ---- clicks: one or two per clicked impression
    clicked = base.where(uniform(s, "click", rid) < F.col("true_ctr")).select(
        "*", F.when(uniform(s, "multi", rid) < cfg.multi_click_rate, 2).otherwise(1).alias("n_clicks"))
    # Log-normal delays: median 20 s for the first click; a repeat click minutes later.
    d1 = F.ceil(F.exp(math.log(20.0) + 1.2 * normal(s, "cdelay1", rid)))
    d2 = F.ceil(F.exp(math.log(180.0) + 1.0 * normal(s, "cdelay2", rid)))
    clicks_x = clicked.select(
        "*", F.explode(F.sequence(F.lit(0), F.col("n_clicks") - 1)).alias("j")).select(
        "*",
        (F.col("epoch") + d1 + F.when(F.col("j") == 1, d2).otherwise(0)).alias("cepoch"),
        F.concat(F.lit("clk-"), F.lpad(rid.cast("string"), 12, "0"), F.lit("-"),
                 F.col("j").cast("string")).alias("click_id"),
    )
    ckey = F.col("click_id")
    cbad = _malformed_kind(s, "bad_clk", ckey, cfg.malformed_rate, 3)
    clicks = clicks_x.select(
        F.when(cbad == 1, F.lit(None).cast("string")).otherwise(ckey).alias("click_id"),
        F.when(cbad == 2, F.concat(F.lit("imp-unknown-"), ckey)).otherwise(F.col("impression_id"))
        .alias("impression_id"),
        _ts(F.when(cbad == 3, F.col("cepoch") + years).otherwise(F.col("cepoch"))).alias("ts"),
        _arrival_dt(F.col("cepoch"), uniform(s, "late_clk", ckey) < cfg.late_rate).alias("dt"),
    )
    clicks = _with_duplicates(clicks, s, "dup_clk", "click_id", cfg.duplicate_rate)

    # ---- conversions: after the last click of a converting clicked impression
    median = parse_duration(cfg.conversion_delay_median, "conversion_delay_median")
    conv_x = clicks_x.where(F.col("j") == F.col("n_clicks") - 1).where(
        uniform(s, "convert", rid) < F.col("true_cvr")).select(
        "*",
        (F.col("cepoch") + F.ceil(F.exp(math.log(max(median, 1)) + 2.0 * normal(s, "vdelay", rid))))
        .alias("vepoch"),
        F.concat(F.lit("cnv-"), F.lpad(rid.cast("string"), 12, "0")).alias("conversion_id"),
    )
    vkey = F.col("conversion_id")
    vbad = _malformed_kind(s, "bad_cnv", vkey, cfg.malformed_rate, 3)
    no_click_id = uniform(s, "noclickid", vkey) < cfg.no_click_id_rate
    conversions = conv_x.select(
        F.when(vbad == 1, F.lit("")).otherwise(vkey).alias("conversion_id"),
        F.when(vbad == 2, F.concat(F.lit("clk-unknown-"), vkey))
        .when(no_click_id, F.lit(None).cast("string")).otherwise(F.col("click_id")).alias("click_id"),
        "user_id", "item_id",
        _ts(F.when(vbad == 3, F.col("vepoch") - years).otherwise(F.col("vepoch"))).alias("ts"),
        F.when(uniform(s, "value_null", vkey) < 0.05, F.lit(None).cast("double"))
        .otherwise(F.round(F.col("price") * (1 + F.floor(uniform(s, "qty", vkey) * 3)), 2)).alias("value"),
        _arrival_dt(F.col("vepoch"), uniform(s, "late_cnv", vkey) < cfg.late_rate).alias("dt"),
    )
    conversions = _with_duplicates(conversions, s, "dup_cnv", "conversion_id", cfg.duplicate_rate)
    return GeneratedLogs(imp, clicks, conversions, truth, ic)


def run(spark: SparkSession, cfg: Config) -> dict[str, int]:
    """Write raw/impressions, raw/clicks, raw/conversions and sim/truth (overwrite,
    one atomic Delta commit each). Returns rows written per table."""
    from pipelines.contract import check_raw
    from pipelines.delta_io import write_delta

    logs = generate_logs(spark, cfg.generate)
    check_raw(logs.impressions, "impressions", cfg.features, "generated impressions")
    counts: dict[str, int] = {}
    for name, df in (("truth", logs.truth), ("impressions", logs.impressions),
                     ("clicks", logs.clicks), ("conversions", logs.conversions)):
        path = cfg.lakehouse.path(name)
        write_delta(df, path, ["dt"])
        counts[name] = spark.read.format("delta").load(path).count()
    spark.catalog.clearCache()
    return counts
