"""The leaderboard page as a browser renders it: headless Chromium's DOM of index.html, and a screenshot.

Needs Debian's `chromium` (`.ci/run` installs it); skipped with the reason where it is missing. The page is
built from synthetic comparison rows (two students with intervals, one without results, one control pair).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.test_leaderboard import NASTY, write_board

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars")


def chromium(*args: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium; .ci/run does it)")
    return subprocess.run([CHROMIUM, *_FLAGS, *args], capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    write_board(out)
    return out


@pytest.fixture(scope="module")
def dom(site) -> str:
    return chromium("--dump-dom", (site / "index.html").as_uri()).stdout


def entry_bodies(dom: str) -> dict[str, str]:
    """Rank -> the DOM of that entry's <tbody> (its row and drill-down, which holds tables of its own)."""
    board = dom[dom.index('<table class="board">') : dom.index("Controls (not ranked)")]
    pieces = board.split('<tbody class="entry" id="entry-')[1:]
    return {piece[: piece.index('"')]: piece for piece in pieces}


def test_every_entry_is_a_row_in_rank_order(dom):
    bodies = entry_bodies(dom)
    assert list(bodies) == ["1", "2", "3"]
    assert "<td>kd</td>" in bodies["1"] and "<td>tiny</td>" in bodies["3"]
    # The name is text in the rendered page: escaped, not a <b> element.
    assert "<td>&lt;b&gt;lab|el&lt;/b&gt; &amp; $co$ --&gt;</td>" in bodies["2"] and "<b>lab" not in dom
    assert NASTY not in dom


def test_rows_show_the_intervals(dom):
    first = entry_bodies(dom)["1"]
    assert "<td>101.2 [96.0, 106.5]</td>" in first  # quality kept: mean of task retentions and of their bounds
    assert "<td>2.10 [1.85, 2.38]</td>" in first and "<td>0.48 [0.42, 0.54]</td>" in first
    assert "≥ 1.85x cheaper" in first


def test_each_entry_has_a_drill_down_with_its_task_evidence(dom):
    bodies = entry_bodies(dom)
    assert '<details id="drill-1" open="">' in bodies["1"]  # the leader's evidence is open on arrival
    assert '<details id="drill-2">' in bodies["2"] and '<details id="drill-3">' in bodies["3"]
    drill = bodies["1"].split('<details id="drill-1" open="">')[1]
    for cell in ("toy_add", "0.800", "0.780", "-0.020 [-0.050, +0.010]", "newcombe", "14", "2", "0.0042"):
        assert f"<td>{cell}</td>" in drill
    assert "capacity under the SLO x: 2.20 [1.90, 2.50]" in drill and "over 5 block(s)" in drill


def test_the_plot_draws_both_intervals_as_error_bars(dom):
    svg = dom[dom.index("<svg") : dom.index("</svg>")]
    for rank in (1, 2):
        for bar in (f"errorbar-cost-{rank}", f"errorbar-quality-{rank}"):
            group = re.search(rf'<g id="{bar}">(.*?)</g>', svg, flags=re.DOTALL)
            assert group and "<path" in group.group(1), bar  # the bar is drawn, not an empty group
        assert f'id="point-{rank}"' in svg
    assert 'id="point-3"' not in svg


def test_controls_are_a_section_of_their_own(dom):
    controls = dom[dom.index("Controls (not ranked)") :]
    assert "<td>label / kd</td>" in controls and "<td>1.03 [0.91, 1.17]</td>" in controls
    assert "<td>yes</td>" in controls


def test_a_screenshot_is_written_next_to_the_page(site):
    screenshot = site / "index.png"
    chromium(f"--screenshot={screenshot}", "--window-size=1400,1600", (site / "index.html").as_uri())
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
