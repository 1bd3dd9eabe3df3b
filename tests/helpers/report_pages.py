"""Report-page helpers shared by the report tests: sample report data, the PNG check of a page's
images, and the headless-chromium probe."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd

from pipelines.report.page import ReportData

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def check_page_images(page: Path) -> list[str]:
    """Assert every <img> of ``page`` is a decodable PNG next to it; return the srcs."""
    from PIL import Image

    p = _Imgs()
    p.feed(page.read_text())
    for src in p.srcs:
        assert not re.match(r"^[a-z]+:|^/", src), f"{src}: images must be relative to the page"
        f = page.parent / src
        assert f.is_file(), f"{page}: <img src={src!r}> does not exist"
        assert f.read_bytes()[:8] == PNG_MAGIC, f"{f} is not a PNG"
        with Image.open(f) as im:
            im.load()  # decodes every pixel: a truncated file fails here
            assert im.width >= 200 and im.height >= 100, (f, im.size)
            assert len(set(im.convert("L").getdata())) > 5, f"{f} is blank"
    return p.srcs


def _reliability_png(path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1], "--")
    ax.plot([0.1, 0.5, 0.9], [0.12, 0.45, 0.8], "o-")
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def sample_data(tmp_path: Path, **kw) -> ReportData:
    days = ["2026-11-01", "2026-11-02", "2026-11-03"]
    data = dict(
        run_date="2026-11-03",
        volumes=pd.DataFrame(
            {"dt": days, "impressions": [3000, 3100, 2900], "clicks": [120, 130, 110], "conversions": [6, 7, 5]}
        ),
        quarantine=pd.DataFrame(
            {"dt": ["2026-11-01", "2026-11-02", "2026-11-02"], "source": ["clicks", "clicks", "score"], "n": [3, 1, 2]}
        ),
        maturity=pd.DataFrame(
            {
                "dt": days,
                "rows": [3000, 3100, 2900],
                "mature_share": [1.0, 0.4, 0.0],
                "ctr": [0.04, 0.042, 0.038],
                "cvr": [0.05, 0.04, 0.01],
            }
        ),
        scores=pd.DataFrame(
            {"dt": ["2026-11-03"] * 4, "pcvr": [0.01, 0.05, 0.2, 0.03], "pctcvr": [0.0004, 0.002, 0.01, 0.001]}
        ),
        models=pd.DataFrame(
            {
                "model_id": ["esmm-a", "esmm-b"],
                "created_at": pd.to_datetime(["2026-11-02", "2026-11-03"]),
                "status": ["retired", "champion"],
                "ctcvr_auc": [0.70, 0.72],
                "ctr_auc": [0.66, 0.67],
            }
        ),
        steps=[
            {"step": "train", "status": "succeeded", "attempt": 1, "message": "trained esmm-b"},
            {"step": "score", "status": "failed", "attempt": 1, "message": "<boom> & co"},
        ],
        plan={
            "refresh_dates": days,
            "train_dates": days[:2],
            "eval_date": days[2],
            "eval_mature": False,
            "score_dates": days[2:],
        },
        metrics={
            "candidate": {"ctcvr_auc": 0.72, "ctcvr_calibration": 1.1, "rows": 2900.0},
            "champion": {"ctcvr_auc": 0.70, "ctcvr_calibration": 0.9, "rows": 2900.0},
        },
        model_ids={"candidate": "esmm-b", "champion": "esmm-a"},
        gate={"promoted": True, "decision": "promoted: CTCVR AUC +0.0200"},
        reliability={"candidate": _reliability_png(tmp_path / "rel.png")},
        curves={"candidate": [{"step": i, "loss_ctr": 0.5 / (i + 1), "loss_ctcvr": 0.1 / (i + 1)} for i in range(10)]},
    )
    data.update(kw)
    return ReportData(**data)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

# Injected first in <head> of a copy of the page: records script errors, console.error
# calls and failed resource loads (capture phase), then lists the images the browser
# could not decode once the page has loaded.
_PROBE = """<script>
window.__errs = [];
window.addEventListener('error', function (e) {
  var t = e.target; __errs.push(t && t.src ? 'resource failed: ' + t.src : 'error: ' + e.message);
}, true);
var _ce = console.error; console.error = function () {
  __errs.push('console.error: ' + Array.prototype.join.call(arguments, ' ')); _ce.apply(console, arguments);
};
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var out = document.createElement('pre'); out.id = '__probe';
  out.textContent = JSON.stringify({errors: __errs, images: imgs.length,
    broken: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                .map(function (i) { return i.getAttribute('src'); })});
  document.body.appendChild(out);
});
</script>"""


def browser_probe(page: Path) -> dict:
    """Load a probed copy of ``page`` in headless Chromium; return the probe's findings."""
    import html as _html
    import json

    probe = page.with_name("_probe.html")
    probe.write_text(page.read_text().replace("<head>", "<head>" + _PROBE, 1))
    try:
        proc = subprocess.run(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--allow-file-access-from-files",
                "--virtual-time-budget=10000",
                "--dump-dom",
                probe.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        probe.unlink()
    m = re.search(r'<pre id="__probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"the page did not finish loading in Chromium: rc={proc.returncode} {proc.stderr[-2000:]}"
    return json.loads(_html.unescape(m.group(1)))
