"""The run report: every <img> of the page is a real PNG, and a browser loads it cleanly.

The page is rendered from hand-written ReportData (no Spark), so this file runs in seconds;
tests/test_nightly_e2e.py checks the report a real nightly run writes the same way.
"""

from __future__ import annotations

import os
import subprocess

import pandas as pd
import pytest
from helpers.report_pages import CHROMIUM, browser_probe, check_page_images, sample_data

from pipelines.report.page import metric_table, render


def test_every_image_is_a_png_and_every_section_is_there(tmp_path):
    page = render(sample_data(tmp_path), tmp_path / "reports" / "2026-11-03")
    srcs = check_page_images(page)
    assert sorted(srcs) == ["curves.png", "maturity.png", "reliability_candidate.png", "scores.png", "volumes.png"]
    text = page.read_text()
    assert "&lt;boom&gt; &amp; co" in text  # messages are escaped
    assert "NOT mature" in text  # an immature evaluation day is called out
    assert "promoted: CTCVR AUC +0.0200" in text
    # Re-rendering replaces the report atomically and leaves no temporary folders.
    render(sample_data(tmp_path), tmp_path / "reports" / "2026-11-03")
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["2026-11-03"]


def test_empty_sections_say_so_instead_of_drawing(tmp_path):
    empty = pd.DataFrame()
    d = sample_data(
        tmp_path,
        volumes=pd.DataFrame(columns=["dt"]),
        quarantine=pd.DataFrame(columns=["dt"]),
        maturity=empty,
        scores=empty,
        models=empty,
        curves={},
        reliability={},
        metrics={},
        gate={},
        steps=[],
        plan={},
        model_ids={},
    )
    page = render(d, tmp_path / "r")
    assert check_page_images(page) == []
    assert "Nothing scored yet." in page.read_text() and "No evaluation this run." in page.read_text()


def test_metric_table_rows_and_delta():
    t = metric_table({"candidate": {"ctcvr_auc": 0.75, "x_extra": 1.0}, "champion": {"ctcvr_auc": 0.70}})
    assert "<tr><th>ctcvr_auc</th><td>0.7500</td><td>0.7000</td><td>0.0500</td></tr>" in t
    assert "<tr><th>x_extra</th><td>1.0000</td><td></td><td></td></tr>" in t


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("ESMM_REQUIRE_BROWSER"),
    reason="no chromium on PATH (apt-get install -y chromium); " "the always-on HTML/PNG check above still ran",
)
def test_page_loads_in_headless_chromium_without_errors(tmp_path):
    # CI (.ci/run) sets ESMM_REQUIRE_BROWSER: there a missing browser fails instead of skipping.
    assert CHROMIUM, "ESMM_REQUIRE_BROWSER is set but no chromium is on PATH"
    from PIL import Image

    page = render(sample_data(tmp_path), tmp_path / "report")
    found = browser_probe(page)
    assert found == {"errors": [], "images": 5, "broken": []}
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,2600",
            f"--screenshot={shot}",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    with Image.open(shot) as im:
        assert im.size == (1200, 2600) and len(set(im.convert("L").getdata())) > 20
    # The probe can fail: a missing image and a corrupt one are both reported.
    (page.parent / "scores.png").unlink()
    (page.parent / "volumes.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    found = browser_probe(page)
    assert sorted(found["broken"]) == ["scores.png", "volumes.png"]
    assert any("scores.png" in e for e in found["errors"]), found
