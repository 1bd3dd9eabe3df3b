"""Synthetic click logs that carry the problem ESMM solves and the mess real logs have.

The world (all randomness is a hash of ``(seed, tag, key)``, so every row is
deterministic for a seed and configuration, whatever the partitioning, and the
cost is linear in rows):

* ``n_users`` users and ``n_items`` items drawn with Zipf-like (1/rank)
  popularity. Users have gender, age bucket, city (Zipf over 1,500) and an
  activity level; items a category (Zipf over 300), brand (3,000), shop
  (12,000), a log-normal price that depends on the category, and a rating.
* Three unit-variance signals built the same way from independent draws: S
  (shared by click and conversion), C (click only), V (conversion only). Each
  is a weighted sum of N(0,1) effects of field values (:data:`SIGNAL_SHARES`,
  share of variance): category 0.30, brand 0.20, shop 0.10, item 0.15,
  category x age 0.10, category x gender 0.05, user x item latent factors
  (k=4) 0.10. With rho = ``selection_bias`` and lam = sqrt(|rho|)::

      logit CTR = a + 1.2 (lam S + sqrt(1-lam^2) C) - 0.5 ln(position)
      logit CVR = b + 1.2 (sign(rho) lam S + sqrt(1-lam^2) V) - 0.3 price_z + 0.2 (rating - 3.5)

  so the click and conversion signals correlate with rho: 0 = no selection
  bias (clicked impressions convert like all, in expectation over worlds),
  0.5 the default, 0.9 strong, negative = what is clicked converts less.
  Measured mean true CVR clicked / all on 100k-impression worlds (seed 42):
  rho -0.5: 0.49, 0: 1.06, 0.5: 1.67, 0.9: 2.48.

  ``a`` and ``b`` are solved on a sample so that mean(true_ctr) = ``ctr`` and
  E[true_ctr * true_cvr] / E[true_ctr] = ``cvr`` (conversion sparsity).

  Why these numbers: the signal sits mostly in fields a model sees often enough
  to learn from a few hundred thousand rows (300 categories, a few thousand
  brands, the popular items and shops, category x age/gender); the per-user
  latent factors over 100k users, which such data cannot learn, carry a tenth.
  An earlier world with most of its signal in user and item latent factors had
  oracle CTR AUC 0.79 but trained models reached 0.58-0.60 (a fifth of the
  lift). This one, at the defaults: oracle CTR AUC 0.83, CVR AUC on clicks
  0.76-0.78, entire-space CVR AUC 0.80, CTCVR AUC 0.91 (100k-impression days),
  and ESMM trained 1 epoch on 5 days x 100k reached CTR AUC 0.788 and CTCVR
  AUC 0.826 on day 6: 86% and 79% of the oracle's lift over 0.5 (see
  docs/model.md for the multi-seed bench). The weights were set once from
  this reasoning, not tuned to make any model win.
* Every impression also gets a potential conversion outcome ``potential_conversion``:
  U_convert < true_cvr with the same uniform that decides the observed
  conversion, so for clicked impressions it equals the observed conversion
  (before logging mess) and for unclicked ones it is what would have happened.
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

Output tables: the three raw tables of :mod:`pipelines.io.contract`,
``sim/truth`` (``impression_id`` STRING, ``true_ctr`` DOUBLE, ``true_cvr``
DOUBLE: the click probability, and the conversion probability *if clicked*,
``potential_conversion`` INT, for every impression; ``dt`` STRING = date of the
impression's ``ts``) and ``sim/oracle`` (:func:`pipelines.sim.oracle.world_oracle`:
the oracle AUCs of the true probabilities, one row per ``dt`` plus ``dt`` = 'all').
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from esmm.config.schema import Config, GenerateConfig
from esmm.util.timeutil import DAY_S, US, parse_duration
from pipelines.labels.rules import date_of_us

K = 4  # latent dimensions per factor
_TWO53 = float(2**53)
DEVICES = ["ios", "android", "pc", "mweb"]
# Raw feature columns of every generated impression (the default feature spec's sources).
FEATURE_COLUMNS = (
    "user_id",
    "item_id",
    "user_gender",
    "user_age",
    "user_city",
    "item_category",
    "item_brand",
    "item_shop",
    "position",
    "device",
    "hour",
    "price",
    "item_rating",
    "user_activity",
)


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


# Share of variance of each unit-variance signal (S shared, C click-only, V
# conversion-only), by the field that carries it. Most of it sits in fields with
# moderate cardinality that a model sees often (category, brand, shop, the popular
# items, category x age/gender); the per-user latent factors over 100k users, which a
# million rows cannot learn, carry a tenth.
SIGNAL_SHARES = {
    "category": 0.30,  # 300 categories, Zipf
    "brand": 0.20,  # 3,000 brands, Zipf
    "shop": 0.10,  # 12,000 shops, Zipf
    "item": 0.15,  # 50,000 items, Zipf
    "category_age": 0.10,  # affinity of an age bucket for a category
    "category_gender": 0.05,
    "user_latent": 0.10,  # k=4 user x item latent factors
}
SIGMA_CTR = 1.2  # scale of the click signal in logit CTR
SIGMA_CVR = 1.2  # scale of the conversion signal in logit CVR
POSITION_WEIGHT = 0.5
PRICE_WEIGHT = 0.3
RATING_WEIGHT = 0.2


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
        cols += [
            normal(s, f"su{k}", u).alias(f"su{k}"),
            normal(s, f"cu{k}", u).alias(f"cu{k}"),
            normal(s, f"vu{k}", u).alias(f"vu{k}"),
        ]
    return spark.range(cfg.n_users).select(*cols)


def items(spark: SparkSession, cfg: GenerateConfig) -> DataFrame:
    """One row per item: iidx, item_id, attributes, price_z, latent si*, ci*, vi*."""
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
    ]
    for k in range(K):
        cols += [
            normal(s, f"si{k}", i).alias(f"si{k}"),
            normal(s, f"ci{k}", i).alias(f"ci{k}"),
            normal(s, f"vi{k}", i).alias(f"vi{k}"),
        ]
    return spark.range(cfg.n_items).select(*cols)


def signal(seed: int, tag: str) -> Column:
    """One unit-variance signal over the joined impression row: a sum of independent
    N(0,1) effects per field value (hashed, so the same value always has the same
    effect), weighted by ``sqrt(SIGNAL_SHARES)``. ``tag`` s, c or v names the signal
    and its latent columns (``{tag}u*`` of the user, ``{tag}i*`` of the item)."""
    cat, age, gender = F.col("item_category"), F.col("user_age"), F.col("user_gender")
    effects = {
        "category": normal(seed, f"{tag}:cat", cat),
        "brand": normal(seed, f"{tag}:brand", F.col("item_brand")),
        "shop": normal(seed, f"{tag}:shop", F.col("item_shop")),
        "item": normal(seed, f"{tag}:item", F.col("iidx")),
        "category_age": normal(seed, f"{tag}:cat_age", cat, age),
        "category_gender": normal(seed, f"{tag}:cat_gender", cat, gender),
        "user_latent": _dot(f"{tag}u", f"{tag}i"),
    }
    out = F.lit(0.0)
    for name, share in SIGNAL_SHARES.items():
        out = out + math.sqrt(share) * effects[name]
    return out


def logit_offsets(seed: int, selection_bias: float) -> tuple[Column, Column]:
    """(zc0, zv0): logit CTR and logit CVR without their intercepts.

    With rho = ``selection_bias`` and lam = sqrt(|rho|)::

        zc0 = SIGMA_CTR (lam S + sqrt(1-lam^2) C) - POSITION_WEIGHT ln(position)
        zv0 = SIGMA_CVR (sign(rho) lam S + sqrt(1-lam^2) V)
              - PRICE_WEIGHT price_z + RATING_WEIGHT (rating - 3.5)

    so the click and conversion signals have correlation rho (position, price and
    rating aside): rho = 0 leaves clicked impressions an unbiased sample of CVR,
    rho < 0 makes them convert less than average.
    """
    lam = math.sqrt(abs(selection_bias))
    own = math.sqrt(1.0 - lam * lam)
    sign = 1.0 if selection_bias >= 0 else -1.0
    shared = signal(seed, "s")
    zc0 = SIGMA_CTR * (lam * shared + own * signal(seed, "c")) - POSITION_WEIGHT * F.log(
        F.col("position").cast("double")
    )
    zv0 = (
        SIGMA_CVR * (sign * lam * shared + own * signal(seed, "v"))
        - PRICE_WEIGHT * F.col("price_z")
        + RATING_WEIGHT * (F.col("item_rating") - 3.5)
    )
    return zc0, zv0


def _day_start_epoch(cfg: GenerateConfig) -> int:
    d0 = dt.date.fromisoformat(cfg.start_date)
    return int(dt.datetime(d0.year, d0.month, d0.day, tzinfo=dt.timezone.utc).timestamp())


def _date_of(epoch_s: Column) -> Column:
    """UTC date string of epoch seconds, independent of the session time zone."""
    return date_of_us(epoch_s * F.lit(US))


def _ts(epoch_s: Column) -> Column:
    return F.timestamp_seconds(epoch_s)


def _arrival_dt(epoch_s: Column, late: Column) -> Column:
    """Arrival partition: the UTC date of the event, or the next date for late events."""
    return F.when(late, _date_of(epoch_s + DAY_S)).otherwise(_date_of(epoch_s))


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
    zc0, zv0 = logit_offsets(s, cfg.selection_bias)
    return x.select(
        "rid",
        "day",
        "uidx",
        "iidx",
        F.concat(F.lit("imp-"), F.lpad(F.col("rid").cast("string"), 12, "0")).alias("impression_id"),
        (F.lit(start) + F.col("day") * 86400 + F.col("sec")).alias("epoch"),
        "user_id",
        "item_id",
        "user_gender",
        "user_age",
        "user_city",
        "item_category",
        "item_brand",
        "item_shop",
        "position",
        F.element_at(F.array(*[F.lit(d) for d in DEVICES]), F.col("dev") + 1).alias("device"),
        F.floor(F.col("sec") / 3600).cast("long").alias("hour"),
        "price",
        "item_rating",
        "user_activity",
        zc0.alias("zc0"),
        zv0.alias("zv0"),
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
    # Every impression before any logging mess: impression_id, FEATURE_COLUMNS, true_ctr,
    # true_cvr, click INT, potential_conversion INT, dt (date of its ts).
    outcomes: DataFrame


def generate_logs(spark: SparkSession, cfg: GenerateConfig, intercepts: Intercepts | None = None) -> GeneratedLogs:
    """Build the four output DataFrames (lazy; the caller writes them).

    Schemas follow :mod:`pipelines.io.contract`; see the module docstring for the
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
    # One uniform per impression decides the click, another the conversion; the
    # conversion's is drawn for every impression, so unclicked ones have a potential
    # outcome too and clicked ones' potential outcome is their observed conversion.
    base = base.select(
        "*",
        (uniform(s, "click", rid) < F.col("true_ctr")).cast("int").alias("click"),
        (uniform(s, "convert", rid) < F.col("true_cvr")).cast("int").alias("potential_conversion"),
    ).persist()

    truth = base.select(
        "impression_id", "true_ctr", "true_cvr", "potential_conversion", _date_of(F.col("epoch")).alias("dt")
    )
    outcomes = base.select(
        "impression_id",
        *FEATURE_COLUMNS,
        "true_ctr",
        "true_cvr",
        "click",
        "potential_conversion",
        _date_of(F.col("epoch")).alias("dt"),
    )

    # ---- impressions
    bad = _malformed_kind(s, "bad_imp", rid, cfg.malformed_rate, 4)
    years = F.lit(3 * 365 * 86400)
    imp = base.select(
        F.when(bad == 1, F.lit(None).cast("string")).otherwise(F.col("impression_id")).alias("impression_id"),
        _ts(F.when(bad == 2, F.col("epoch") - years).otherwise(F.col("epoch"))).alias("ts"),
        F.when(bad == 3, F.lit("")).otherwise(F.col("user_id")).alias("user_id"),
        F.when(bad == 4, F.lit(None).cast("string")).otherwise(F.col("item_id")).alias("item_id"),
        "user_gender",
        "user_age",
        "user_city",
        "item_category",
        "item_brand",
        "item_shop",
        "position",
        "device",
        "hour",
        F.col("price").cast("double").alias("price"),
        F.col("item_rating").cast("double").alias("item_rating"),
        F.col("user_activity").cast("double").alias("user_activity"),
        _arrival_dt(F.col("epoch"), uniform(s, "late_imp", rid) < cfg.late_rate).alias("dt"),
    )
    imp = _with_duplicates(imp, s, "dup_imp", "impression_id", cfg.duplicate_rate)

    # ---- clicks: one or two per clicked impression
    clicked = base.where(F.col("click") == 1).select(
        "*", F.when(uniform(s, "multi", rid) < cfg.multi_click_rate, 2).otherwise(1).alias("n_clicks")
    )
    # Log-normal delays: median 20 s for the first click; a repeat click minutes later.
    d1 = F.ceil(F.exp(math.log(20.0) + 1.2 * normal(s, "cdelay1", rid)))
    d2 = F.ceil(F.exp(math.log(180.0) + 1.0 * normal(s, "cdelay2", rid)))
    clicks_x = clicked.select("*", F.explode(F.sequence(F.lit(0), F.col("n_clicks") - 1)).alias("j")).select(
        "*",
        (F.col("epoch") + d1 + F.when(F.col("j") == 1, d2).otherwise(0)).alias("cepoch"),
        F.concat(F.lit("clk-"), F.lpad(rid.cast("string"), 12, "0"), F.lit("-"), F.col("j").cast("string")).alias(
            "click_id"
        ),
    )
    ckey = F.col("click_id")
    cbad = _malformed_kind(s, "bad_clk", ckey, cfg.malformed_rate, 3)
    clicks = clicks_x.select(
        F.when(cbad == 1, F.lit(None).cast("string")).otherwise(ckey).alias("click_id"),
        F.when(cbad == 2, F.concat(F.lit("imp-unknown-"), ckey))
        .otherwise(F.col("impression_id"))
        .alias("impression_id"),
        _ts(F.when(cbad == 3, F.col("cepoch") + years).otherwise(F.col("cepoch"))).alias("ts"),
        _arrival_dt(F.col("cepoch"), uniform(s, "late_clk", ckey) < cfg.late_rate).alias("dt"),
    )
    clicks = _with_duplicates(clicks, s, "dup_clk", "click_id", cfg.duplicate_rate)

    # ---- conversions: after the last click of a converting clicked impression
    median = parse_duration(cfg.conversion_delay_median, "conversion_delay_median")
    conv_x = (
        clicks_x.where(F.col("j") == F.col("n_clicks") - 1)
        .where(F.col("potential_conversion") == 1)
        .select(
            "*",
            (F.col("cepoch") + F.ceil(F.exp(math.log(max(median, 1)) + 2.0 * normal(s, "vdelay", rid)))).alias(
                "vepoch"
            ),
            F.concat(F.lit("cnv-"), F.lpad(rid.cast("string"), 12, "0")).alias("conversion_id"),
        )
    )
    vkey = F.col("conversion_id")
    vbad = _malformed_kind(s, "bad_cnv", vkey, cfg.malformed_rate, 3)
    no_click_id = uniform(s, "noclickid", vkey) < cfg.no_click_id_rate
    conversions = conv_x.select(
        F.when(vbad == 1, F.lit("")).otherwise(vkey).alias("conversion_id"),
        F.when(vbad == 2, F.concat(F.lit("clk-unknown-"), vkey))
        .when(no_click_id, F.lit(None).cast("string"))
        .otherwise(F.col("click_id"))
        .alias("click_id"),
        "user_id",
        "item_id",
        _ts(F.when(vbad == 3, F.col("vepoch") - years).otherwise(F.col("vepoch"))).alias("ts"),
        F.when(uniform(s, "value_null", vkey) < 0.05, F.lit(None).cast("double"))
        .otherwise(F.round(F.col("price") * (1 + F.floor(uniform(s, "qty", vkey) * 3)), 2))
        .alias("value"),
        _arrival_dt(F.col("vepoch"), uniform(s, "late_cnv", vkey) < cfg.late_rate).alias("dt"),
    )
    conversions = _with_duplicates(conversions, s, "dup_cnv", "conversion_id", cfg.duplicate_rate)
    return GeneratedLogs(imp, clicks, conversions, truth, ic, outcomes)


def run(spark: SparkSession, cfg: Config, log=print) -> dict[str, int]:
    """Write raw/impressions, raw/clicks, raw/conversions and sim/truth (overwrite,
    one atomic Delta commit each), then the world's oracle metrics to sim/oracle
    (:func:`pipelines.sim.oracle.world_oracle`: one row per dt and one with dt 'all';
    unpartitioned, overwritten) and log the overall line. Returns rows written per table."""
    from pipelines.io.contract import check_raw
    from pipelines.io.delta import write_delta
    from pipelines.sim.oracle import format_oracle, world_oracle

    logs = generate_logs(spark, cfg.generate)
    check_raw(logs.impressions, "impressions", cfg.features, "generated impressions")
    counts: dict[str, int] = {}
    for name, df in (
        ("truth", logs.truth),
        ("impressions", logs.impressions),
        ("clicks", logs.clicks),
        ("conversions", logs.conversions),
    ):
        path = cfg.lakehouse.path(name)
        write_delta(df, path, ["dt"])
        counts[name] = spark.read.format("delta").load(path).count()
    oracle_path = cfg.lakehouse.path("oracle")
    write_delta(world_oracle(logs.outcomes).coalesce(1), oracle_path)
    overall = spark.read.format("delta").load(oracle_path).where("dt = 'all'").first()
    log(
        f"generate: world seed {cfg.generate.seed}, selection_bias {cfg.generate.selection_bias}: "
        + format_oracle(overall.asDict())
    )
    spark.catalog.clearCache()
    return counts
