"""`anbench report --format html`: the page's content (parsed), and the page in a real headless
Chromium (DOM after its script ran, and a screenshot that is not blank)."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anbench.api import load
from anbench.reporting.html_cells import cell_anchor
from tests.suite_fixtures import REPO, synthetic_suite

HOSTILE = '<script>alert("x")</script>'


class Page(HTMLParser):
    """Every element with its attributes, text per element id, and resource references."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.sources: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attributes))
        for name in ("src", "href"):
            if name in attributes:
                self.sources.append(attributes[name])

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def having(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag and all(
            value in a.get(key.rstrip("_"), "").split() or a.get(key.rstrip("_")) == value
            for key, value in attrs.items())]


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("html") / "suite"
    synthetic_suite(root, {"base": ["cat", HOSTILE, "owl"], "new": ["fox", "eel"]})
    return load(root).report(formats=["html"])


def test_one_self_contained_page(report: Path):
    assert report.name == "index.html"
    page = parse(report)
    # nothing is fetched: every image is inline, every link is a fragment of this page
    assert page.sources and all(s.startswith(("#", "data:image/png;base64,"))
                                for s in page.sources)
    assert not page.having("link") and not [a for t, a in page.elements
                                            if t == "script" and "src" in a]
    images = [a["src"] for a in page.having("img")]
    assert images, "the report figures are missing"
    for src in images:
        png = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert png.format == "PNG" and png.width > 100


def test_tables_heatmap_and_cell_pages(report: Path):
    page = parse(report)
    suite = load(report.parents[1])
    cells = suite.all_cells()
    sections = page.having("section", class_="cell-page")
    assert sorted(s["id"] for s in sections) == sorted(cell_anchor(c) for c in cells)
    links = {a["href"] for a in page.having("a")}
    assert {f"#{cell_anchor(c)}" for c in cells} <= links  # every cell page is linked
    assert len(page.having("table", class_="sortable")) >= 5
    heatmaps = page.having("table", class_="heatmap")
    assert {h["data-metric"] for h in heatmaps} == {"as", "lpr", "ts"}
    text = "".join(page.text)
    for sentence in ("a photo of a cat.", "a of a cat.", "photo of a fox."):
        assert sentence in text  # clean and noisy sentences of both draws' first
    assert "Per-class accuracy (%), base" in text and "Training curves" in text


def test_hostile_text_is_escaped(report: Path):
    raw = report.read_text(encoding="utf-8")
    assert HOSTILE not in raw
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in raw
    assert HOSTILE in "".join(parse(report).text)  # shown as text


def test_per_class_accuracy_matches_the_stored_logits(report: Path):
    cell = load(report.parents[1]).cell(method="coop")
    arrays = cell.arrays
    labels, clean = arrays["base/labels"], arrays["base/logits/clean"]
    noisy = arrays["base/logits/drop@0.3"]
    table = cell.per_class_accuracy("base")
    for index in range(3):
        mine = labels == index
        got = table[(table.class_index == index) & (table.condition == "clean")].accuracy.item()
        assert got == pytest.approx(100 * np.mean(clean[mine].argmax(1) == index))
        want = np.mean([100 * np.mean(d[mine].argmax(1) == index) for d in noisy])
        got = table[(table.class_index == index) & (table.condition == "drop@0.3")]
        assert got.accuracy.item() == pytest.approx(want)
    # the page shows the same numbers, formatted to one decimal
    raw = report.read_text(encoding="utf-8")
    value = table[(table.class_index == 0) & (table.condition == "clean")].accuracy.item()
    assert f">{value:.1f}<" in raw


def test_cli_report_html(tmp_path: Path):
    store = synthetic_suite(tmp_path / "runs" / "mine")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "anbench.cli", "report", "--suite", "mine",
                           "--out", str(tmp_path / "runs"), "--format", "md,html"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"report written: {store.root / 'report' / 'index.html'}" in proc.stdout
    assert (store.root / "report" / "index.md").is_file()


# ------------------------------------------------------------------ headless Chromium
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; "
                             ".ci/run installs it)")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@needs_chromium
def test_page_in_headless_chromium(report: Path, tmp_path: Path):
    url = report.resolve().as_uri()
    dom = chromium(tmp_path, "--dump-dom", url).stdout
    page = Page()
    page.feed(dom)
    # the script ran: it marks the document and makes every header of a sortable table a
    # keyboard-focusable sort control
    assert page.having("html")[0].get("data-sortable") == "ready"
    headers = [a for t, a in page.elements if t == "th" and "aria-sort" in a]
    assert len(headers) > 20 and all(h["tabindex"] == "0" for h in headers)
    cells = load(report.parents[1]).all_cells()
    assert len(page.having("section", class_="cell-page")) == len(cells)
    assert len(page.having("table", class_="heatmap")) == 3

    shots = {}
    for name, fragment in (("overview", ""), ("cell", "#" + cell_anchor(cells[0]))):
        path = tmp_path / f"{name}.png"
        chromium(tmp_path, f"--screenshot={path}", "--window-size=1200,900", url + fragment)
        image = np.asarray(Image.open(path).convert("RGB"))
        assert image.shape == (900, 1200, 3)
        ink = (image.astype(int).sum(axis=2) < 600).mean()  # darker than near-white
        assert ink > 0.01, f"{name}: an empty render ({ink:.4f} of pixels have ink)"
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20
        shots[name] = image
    # the styled header bar of the overview, and the cell page replaces the overview
    assert shots["overview"][10, 10].tolist() == [0x1D, 0x24, 0x30]
    assert np.abs(shots["overview"].astype(int) - shots["cell"].astype(int)).mean() > 1.0


def test_a_cell_that_cannot_be_shown_gets_a_page_saying_why(tmp_path: Path):
    from anbench.store import CellKey

    store = synthetic_suite(tmp_path / "s")
    rows = store.read_rows(store.inspect(CellKey("tiny-clip", "shapes", "coop", "none", 4, 1)))
    rows["method"] = "zeroshot"
    key = CellKey("tiny-clip", "shapes", "zeroshot", "none", 4, 1)
    # intact files (the marker's hashes match) whose content does not fit together
    store.write_cell(key, "fp", rows, {"other/labels": np.zeros(2, dtype=np.int64)}, None,
                     {"history": [], "classes": {"base": ["cat"]}, "sentences": {}},
                     weights_hash="w0")
    store.write_results()
    page = load(store.root).report(formats="html")
    raw = page.read_text(encoding="utf-8")
    assert 'id="cell-tiny-clip-shapes-zeroshot-none-shots4-seed1"' in raw
    assert "cannot show this cell" in raw and "no split" in raw
    assert raw.count('class="page cell-page"') == 3
