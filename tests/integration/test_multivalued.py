"""Multi-valued categorical fields: hashing into arrays, padding for the loader, EmbeddingBag pooling."""

import numpy as np
import pyarrow as pa
import pytest
import torch
from pyspark.sql import types as T
from torch import nn

from esmm.config.schema import CategoricalField, FeatureSpec, ModelConfig, NumericField
from esmm.data.examples import PAD, cat_width, pack_categorical, pad_lists
from esmm.model.network import build_model
from pipelines.features.job import encode_features

# a: single (rows 0..4), b: multi sum (rows 5..11), c: multi mean (rows 12..15) of one shared table.
SPEC = FeatureSpec(
    categorical=[
        CategoricalField("a", buckets=5),
        CategoricalField("b", buckets=7, multi=True, pooling="sum", max_len=3),
        CategoricalField("c", buckets=4, multi=True, pooling="mean", max_len=2),
    ],
    numeric=[NumericField("x")],
)


def _model(kind="esmm"):
    torch.manual_seed(0)
    return build_model(ModelConfig(kind=kind, embedding_dim=3, tower=[4], dropout=0.0), SPEC)


@pytest.mark.parametrize("kind", ["esmm", "escm2-dr"])
def test_pooling_matches_a_hand_computed_forward_pass(kind):
    m = _model(kind).eval()
    W = m.embedding.table.weight.detach()
    assert cat_width(SPEC) == 1 + 3 + 2
    # row 0: a=2, b={1, 3}, c={2}; row 1: a=0, b={} (no id), c={1, 3}; row 2: b={6, 6, 4}, c={0}
    cat = torch.tensor([[2, 1, 3, PAD, 2, PAD], [0, PAD, PAD, PAD, 1, 3], [4, 6, 6, 4, 0, PAD]])
    num = torch.tensor([[0.5], [-1.0], [2.0]])
    a = [W[2], W[0], W[4]]
    b_sum = [W[5 + 1] + W[5 + 3], torch.zeros(3), 2 * W[5 + 6] + W[5 + 4]]
    c_mean = [W[12 + 2], (W[12 + 1] + W[12 + 3]) / 2, W[12 + 0]]
    x = torch.stack([torch.cat([a[i], b_sum[i], c_mean[i], num[i]]) for i in range(3)])
    assert torch.allclose(m.embedding(cat, num), x, atol=1e-6)
    # The same pooled vectors from a stand-alone nn.EmbeddingBag over the same weights.
    bag_sum = nn.EmbeddingBag.from_pretrained(W[5:12], mode="sum", padding_idx=None)
    assert torch.allclose(
        bag_sum(torch.tensor([1, 3, 6, 6, 4]), torch.tensor([0, 2, 2])), torch.stack(b_sum), atol=1e-6
    )
    # Towers on the hand-built input give the model's outputs.
    out = m(cat, num)
    ctr, cvr = m.ctr_tower(x), m.cvr_tower(x)
    assert torch.allclose(out["ctr_logit"], ctr, atol=1e-6) and torch.allclose(out["cvr_logit"], cvr, atol=1e-6)
    assert torch.allclose(out["pctcvr"], torch.sigmoid(ctr) * torch.sigmoid(cvr), atol=1e-6)


def test_multi_field_gradient_is_sparse_and_touches_only_its_rows():
    m = _model()
    out = m(torch.tensor([[1, 2, 5, PAD, 3, PAD]]), torch.zeros(1, 1))
    out["pctr"].sum().backward()
    g = m.embedding.table.weight.grad
    assert g.is_sparse
    assert sorted(set(g.coalesce().indices()[0].tolist())) == [1, 5 + 2, 5 + 5, 12 + 3]


def test_without_multi_fields_the_single_path_is_unchanged():
    spec = FeatureSpec(categorical=[CategoricalField("a", buckets=5), CategoricalField("b", buckets=3)], numeric=[])
    m = build_model(ModelConfig(embedding_dim=2, tower=[4], dropout=0.0), spec)
    assert not m.embedding.multi and cat_width(spec) == 2
    W = m.embedding.table.weight.detach()
    assert torch.allclose(m.embedding(torch.tensor([[1, 2]]), torch.zeros(1, 0)), torch.cat([W[1], W[5 + 2]])[None])


def test_pad_lists_and_pack_categorical_truncate_to_max_len():
    got = pad_lists(np.array([2, 0, 4]), np.array([7, 8, 1, 2, 3, 4]), 3)
    assert got.tolist() == [[7, 8, PAD], [PAD, PAD, PAD], [1, 2, 3]]
    cols = {
        "a": pa.array([1, 0], pa.int32()),
        "b": pa.chunked_array([pa.array([[4, 5, 6, 1]], pa.list_(pa.int32())), pa.array([[2]], pa.list_(pa.int32()))]),
        "c": pa.array([[0], [3, 2]], pa.list_(pa.int32())),
    }
    assert pack_categorical(cols, SPEC).tolist() == [[1, 4, 5, 6, 0, PAD], [0, 2, PAD, PAD, 3, 2]]
    with pytest.raises(ValueError, match="'b' holds 1 NULL"):
        pack_categorical({**cols, "b": pa.array([[1], None], pa.list_(pa.int32()))}, SPEC)


def test_encode_features_hashes_every_value_like_a_single_field(spark):
    schema = T.StructType(
        [
            T.StructField("id", T.StringType()),
            T.StructField("a", T.StringType()),
            T.StructField("b", T.ArrayType(T.StringType())),
            T.StructField("c", T.ArrayType(T.StringType())),
            T.StructField("x", T.DoubleType()),
        ]
    )
    rows = [
        ("r1", "u", ["p", "q", "p", "s", "t"], ["z"], 1.0),
        ("r2", None, [], None, 0.0),
        ("r3", "v", ["q", None, ""], ["z", "y"], 0.0),
    ]
    out = {r.id: r for r in encode_features(spark.createDataFrame(rows, schema), SPEC).collect()}
    # Same hash as a single-valued field of the same name and buckets.
    single = FeatureSpec(categorical=[CategoricalField("b", buckets=7)], numeric=[])
    one = spark.createDataFrame([(v,) for v in "pqst"], "b string")
    h = {r["b_raw"]: r["b"] for r in encode_features(one.withColumn("b_raw", one["b"]), single).collect()}
    assert out["r1"].b == [h["p"], h["q"], h["p"], h["s"], h["t"]]  # every value, in order, beyond max_len
    assert out["r2"].b == [0] and out["r2"].c == [0] and out["r2"].a == 0  # empty / NULL -> the NULL row
    assert out["r3"].b == [h["q"], 0, 0]
    assert all(1 <= v < 4 for v in out["r3"].c)
