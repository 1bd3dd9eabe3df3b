"""The one metric order and text table, as the CLI, the bench and the report print them."""

from __future__ import annotations

from esmm.evaluation.table import format_table, format_value, ordered
from pipelines.report.page import metric_table, text_table


def test_ordered_puts_known_metrics_first_then_the_rest_alphabetically():
    assert ordered(["zeta", "ctcvr_auc", "rows", "alpha", "ctr_auc"]) == [
        "rows",
        "ctr_auc",
        "ctcvr_auc",
        "alpha",
        "zeta",
    ]


def test_format_value():
    assert [format_value(v) for v in (0.71234, 12345.6, float("nan"), None, 3, "x")] == [
        "0.7123",
        "12,346",
        "n/a",
        "",
        "3",
        "x",
    ]


def test_format_table_rows_by_name_columns_in_metric_order():
    out = format_table({"esmm": {"ctcvr_auc": 0.8, "rows": 10}, "naive": {"ctcvr_auc": 0.75}})
    assert out.splitlines() == [
        "model  rows  ctcvr_auc",
        " esmm    10     0.8000",
        "naive           0.7500",
    ]


def test_the_report_uses_the_same_order_and_cells():
    metrics = {"candidate": {"ctr_auc": 0.7, "rows": 2000.0, "extra": 1.0}, "champion": {"ctr_auc": 0.6}}
    assert text_table(metrics).splitlines() == [
        " metric  candidate  champion",
        "   rows      2,000       n/a",
        "ctr_auc     0.7000    0.6000",
        "  extra     1.0000       n/a",
    ]
    html = metric_table(metrics)
    assert html.index("<th>rows</th>") < html.index("<th>ctr_auc</th>") < html.index("<th>extra</th>")
    assert "<td>2,000</td>" in html
    assert text_table({}) == "(no evaluation)"
