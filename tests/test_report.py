"""`python -m evaluator report`: the static HTML report of a store, from a real store in a real process, its pages
read as HTML and opened in headless Chromium; and the per-GPU load an evaluation keeps for it."""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import webbrowser
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from html.parser import HTMLParser
from pathlib import Path

import pytest
from small_problem import SMALL_OPTIONS

from evaluator.cli import main
from evaluator.commands.workload import default_trace_for
from evaluator.eplb.problem import Problem
from evaluator.evaluation.result import Result
from evaluator.exitcodes import ExitCode
from evaluator.paths import PROJECT_ROOT, SEED_PROGRAM
from evaluator.report import gather, write_report
from evaluator.report.data import pareto_front
from evaluator.report.pages import MARKER
from evaluator.store import CandidateStore, StoredCandidate, sha256_text

SEED_PATCH = PROJECT_ROOT / "patches" / "vectorized_packing_and_replication.diff"
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian's package: "
                                                             "apt-get install chromium; .ci/run installs it)")
DEFAULT = {"source": "default", "digest": "e07893681b147c0b", "windows": 12, "steps_per_window": 100,
           "problem": asdict(Problem())}
HOLDOUT = {**DEFAULT, "source": "holdout", "digest": "1234abcd5678ef90"}
DEFAULT_FOR_SMALL = {**DEFAULT, "source": "synthetic(seed=0)", "digest": "0123456789abcdef",
                     "problem": asdict(Problem(num_layers=4, num_experts=16, num_replicas=24, num_groups=4, num_nodes=2,
                                               num_gpus=4))}
TRACE_FILE = {**DEFAULT, "source": "traces/mine.json", "digest": "feedfacecafebeef", "windows": 5}
HOSTILE = "<script>alert(1)</script></svg></pre><img src=x onerror=alert(2)>\"quoted\" 'single' &amp; \x1b[2J"
LOAD = {"planned_on": 0, "window": 1, "per_gpu": [1000.0 + gpu for gpu in range(32)], "layer_max": [60.0] * 58,
        "layer_mean": [48.0] * 58}
INJECTED = {"script", "img", "iframe", "object", "embed", "foreignobject"}


def ok(balancedness: float, speedup: float, workload: dict = DEFAULT, gpu_load: dict | None = LOAD) -> dict:
    speed = min(1.0, max(0.0, math.log10(speedup) / 4))
    return Result("ok", balancedness_score=balancedness, speed_score=speed, combined_score=(balancedness + speed) / 2,
                  speedup=speedup, speedup_interval=[speedup * 0.9, speedup * 1.1], time_ms=600 / speedup,
                  seed_time_ms=600.0, slot_balancedness=0.3, seed_balancedness=0.68, reference_balancedness=0.88,
                  device="cpu", card="a test CPU", workload=workload, gpu_load=gpu_load).to_json()


def failed(status: str, workload: dict = DEFAULT, **texts: object) -> dict:
    return Result(status, error=f"{status}: made up", device="cpu", card="a test CPU", workload=workload,
                  **texts).to_json()


def add(store: CandidateStore, name: str, parent: StoredCandidate | None, minute: int, *results: dict,
        description: str = "") -> StoredCandidate:
    parent_program = parent.program() if parent else SEED_PROGRAM.read_text(encoding="utf-8")
    ref = ({"kind": "candidate", "id": parent.id} if parent else {"kind": "seed", "path": "seeds/eplb.py"})
    program = parent_program + f"\n# {name}\n"
    stored, _ = store.add(program, None, {"name": name, "description": description,
                                          "parent": {**ref, "sha256": sha256_text(parent_program)},
                                          "created_at": f"2026-12-01T10:{minute:02d}:00+00:00"})
    for result in results:
        stored.add_result(result)
    return stored


def build_store(root: Path) -> dict[str, StoredCandidate]:
    """A chain a > b > c, a's child e (also measured on the default trace of a small shape), a hostile candidate,
    one measured on a trace file only (its data read through two paths), and one accepted whose results/ is gone (a
    clone keeps only accepted.json). On the default trace the front is a, b, h and g."""
    store = CandidateStore(root)
    a = add(store, "a", None, 1, ok(0.70, 50), ok(0.69, 40, HOLDOUT))
    b = add(store, "b", a, 2, ok(0.80, 10))
    c = add(store, "c", b, 3, failed("invalid_output", violations=[{"invariant": HOSTILE, "index": 3,
                                                                     "message": HOSTILE}], stdout=HOSTILE))
    e = add(store, "e", a, 4, failed("exception"), ok(0.62, 20), failed("exception", HOLDOUT),
            failed("infra_error"), ok(0.5, 3, DEFAULT_FOR_SMALL))
    h = add(store, HOSTILE, None, 5, ok(0.90, 2, gpu_load=None) | {"stdout": HOSTILE, "stderr": HOSTILE},
            description=HOSTILE)
    d = add(store, "d", None, 6, ok(0.74, 4, TRACE_FILE),
            ok(0.75, 5, {**TRACE_FILE, "source": "./traces/mine.json"}))
    g = add(store, "g", None, 7)
    store.accept(g, ok(0.60, 100))
    return {"a": a, "b": b, "c": c, "e": e, "h": h, "d": d, "g": g}


def report_command(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evaluator", "report", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, dict[str, StoredCandidate]]:
    """The store and the report folder `report` made of it."""
    folder = tmp_path_factory.mktemp("report")
    candidates = build_store(folder / "candidates")
    run = report_command("--store", "candidates", "--out", "site", cwd=folder)
    assert run.returncode == 0, run.stderr
    assert str(Path("site") / "index.html") in run.stdout and "7 candidates" in run.stdout
    return folder / "site", candidates


class Elements(HTMLParser):
    """Every start tag of a page with its attributes, and its text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def having(self, tag: str, **attributes: str) -> list[dict[str, str | None]]:
        """The attributes of each `tag` whose attributes hold those given (a class among its classes)."""
        return [attrs for name, attrs in self.tags if name == tag and all(
            value in (attrs.get("class") or "").split() if key == "class_" else attrs.get(key) == value
            for key, value in attributes.items())]


def pages(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


def read(path: Path) -> Elements:
    return Elements(path.read_text(encoding="utf-8"))


def _heading(path: Path) -> str:
    return re.search(r"<h1>(.*?)</h1>", path.read_text(encoding="utf-8")).group(1)


def leaderboard(path: Path) -> list[str]:
    """The candidate ids of a trace page's leaderboard, in order."""
    table = path.read_text(encoding="utf-8").split('<table class="leaderboard">')[1].split("</table>")[0]
    return re.findall(r'<td class="number">\d+</td>\s*<td><a class="id" href="candidate/([0-9a-f]{12})\.html">', table)


# --- the data -------------------------------------------------------------------------------------------------------

def test_the_pareto_front_keeps_the_trade_offs_no_other_point_beats():
    points = [("a", 0.7, 50), ("b", 0.8, 10), ("e", 0.65, 20), ("h", 0.9, 2), ("g", 0.6, 100), ("twin", 0.8, 10),
              ("beaten on one only", 0.8, 9), ("below g", 0.6, 99)]
    assert pareto_front(points) == {"a", "b", "twin", "h", "g"}
    assert pareto_front([]) == frozenset()


# --- the pages, as HTML ---------------------------------------------------------------------------------------------

def test_every_page_is_written_and_every_link_resolves_offline(made):
    site, candidates = made
    assert (site / MARKER).is_file() and (site / "style.css").is_file()
    assert {path.stem for path in (site / "candidate").glob("*.html")} == {c.id for c in candidates.values()}
    assert len(list(site.glob("trace-*.html"))) == 4
    assert not [path for path in site.parent.iterdir() if path.name.startswith(".site")]  # no staging left
    for page in pages(site):
        elements = read(page)
        [policy] = [attrs["content"] for tag, attrs in elements.tags
                    if attrs.get("http-equiv") == "Content-Security-Policy"]
        assert policy.startswith("default-src 'none';") and "script" not in policy
        for tag, attrs in elements.tags:
            for key in ("href", "src"):
                target = attrs.get(key)
                if target is None or (tag == "a" and key == "href" and target.startswith("#")):
                    continue
                assert "://" not in target and not target.startswith("//"), (page, target)
                assert (page.parent / target.split("#")[0]).is_file(), (page, target)


def test_leaderboards_are_split_by_trace_with_their_status_counts(made):
    site, c = made
    traces = {_heading(path): path for path in site.glob("trace-*.html")}
    assert sorted(traces) == ["default trace", "default trace, 4 layers x 16 experts, 24 replicas on 4 GPUs",
                              "held-out traces", "trace traces/mine.json (digest feedfacecafebeef)"]
    # best first by combined score, then failures; e's latest result there is its ok one (an infra_error is not)
    assert leaderboard(traces["default trace"]) == [c[name].id for name in ("a", "g", "b", "h", "e", "c")]
    assert leaderboard(traces["held-out traces"]) == [c["a"].id, c["e"].id]
    assert leaderboard(traces["trace traces/mine.json (digest feedfacecafebeef)"]) == [c["d"].id]
    default = traces["default trace"].read_text(encoding="utf-8")
    counts = re.findall(r'<span class="status status-(\w+)">\w+</span> (\d+)</span>', default)
    assert counts == [("ok", "5"), ("invalid_output", "1")]
    index = (site / "index.html").read_text(encoding="utf-8")
    assert all(f'href="{path.name}"' in index for path in traces.values())


def test_the_scatter_marks_every_ok_candidate_the_pareto_front_and_the_seed(made):
    site, c = made
    default = next(path for path in site.glob("trace-*.html") if _heading(path) == "default trace")
    page = read(default)
    points = page.having("circle", class_="point")
    fronts = page.having("circle", class_="front")
    assert len(points) == 5 + 6  # the scatter's ok candidates, and every candidate in creation order
    assert len(fronts) == 4
    linked = [attrs["href"] for attrs in page.having("a") if (attrs.get("href") or "").startswith("candidate/")]
    for name in ("a", "b", "h", "g"):
        assert f"candidate/{c[name].id}.html" in linked
    html = default.read_text(encoding="utf-8")
    front_titles = re.findall(r'<circle class="point front"[^>]*><title>([0-9a-f]{12}) ', html)
    assert sorted(front_titles) == sorted(c[name].id for name in ("a", "b", "h", "g"))
    assert len(page.having("polyline", class_="front-line")) == 1
    assert len(page.having("polygon", class_="seed")) == 1 and "balancedness 0.6800" in html


def test_what_a_candidate_wrote_is_only_ever_text(made):
    site, c = made
    for page in pages(site):
        html = page.read_text(encoding="utf-8")
        elements = read(page)
        assert not INJECTED & {tag for tag, _ in elements.tags}, page
        assert not [attrs for _, attrs in elements.tags if any(key.startswith("on") for key in attrs)], page
        assert "<script" not in html and "\x1b" not in html
    hostile = (site / "candidate" / f"{c['h'].id}.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;/svg&gt;&lt;/pre&gt;&lt;img src=x onerror=alert(2)&gt;" in hostile
    assert "&#34;quoted&#34; &#39;single&#39; &amp;amp; \\x1b[2J" in hostile
    shown = "".join(read(site / "candidate" / f"{c['h'].id}.html").text)
    assert HOSTILE.replace("\x1b", "\\x1b") in shown  # the text itself, as written, escapes made visible
    default = next(path for path in site.glob("trace-*.html") if _heading(path) == "default trace")
    assert f"<title>{c['h'].id} &lt;script&gt;alert(1)&lt;/script&gt;&lt;/svg&gt;" in default.read_text("utf-8")


def test_a_candidate_page_shows_its_diff_program_results_and_loads(made):
    site, c = made
    page = (site / "candidate" / f"{c['b'].id}.html").read_text(encoding="utf-8")
    assert f'<span class="file">--- candidate {c["a"].id}</span>' in page
    assert '<span class="add">+# b</span>' in page
    assert f'href="../candidate/{c["a"].id}.html"' in page and f'href="../candidate/{c["c"].id}.html"' in page
    assert page.count('class="bar"') == 32 + 58 and "0.8000" in page  # per GPU, per layer; balancedness 48/60
    hostile = (site / "candidate" / f"{c['h'].id}.html").read_text(encoding="utf-8")
    assert "stored before results kept the load of a plan" in hostile and 'class="bar"' not in hostile
    failing = (site / "candidate" / f"{c['c'].id}.html").read_text(encoding="utf-8")
    assert "<h4>Violations</h4>" in failing and "invalid_output: made up" in failing
    assert "Feedback a loop's LLM reads" in failing and "status: invalid_output" in failing
    assert "It has no ok result, whose plan would be drawn here." in failing
    accepted = (site / "candidate" / f"{c['g'].id}.html").read_text(encoding="utf-8")
    assert "its accepted baseline" in accepted and "only as its accepted baseline" in accepted
    assert accepted.count('class="bar"') == 32 + 58
    seed_child = (site / "candidate" / f"{c['d'].id}.html").read_text(encoding="utf-8")
    assert '<span class="file">--- the seed</span>' in seed_child
    index = (site / "index.html").read_text(encoding="utf-8")
    tree = index.split('<table class="tree">')[1]
    order = re.findall(r'<td class="depth-(\d+)">.*?candidate/([0-9a-f]{12})\.html', tree)
    assert [(int(depth), cid) for depth, cid in order] == [
        (1, c["a"].id), (2, c["b"].id), (3, c["c"].id), (2, c["e"].id), (1, c["h"].id), (1, c["d"].id),
        (1, c["g"].id)]


def test_a_report_replaces_an_earlier_one_and_never_a_folder_of_something_else(tmp_path):
    build_store(tmp_path / "candidates")
    first = report_command(cwd=tmp_path)  # by default in report/, beside the store
    assert first.returncode == 0, first.stderr
    (tmp_path / "report" / "candidate" / "stale.html").write_text("old")
    again = report_command(cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert not (tmp_path / "report" / "candidate" / "stale.html").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["candidates", "report"]

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    refused = report_command("--out", "mine", cwd=tmp_path)
    assert refused.returncode == ExitCode.BAD_INPUT and "not an earlier report" in refused.stderr
    assert [path.name for path in mine.iterdir()] == ["notes.txt"]
    inside = report_command("--out", "candidates/report", cwd=tmp_path)
    assert inside.returncode == ExitCode.BAD_INPUT and "in the candidate store" in inside.stderr
    assert not (tmp_path / "candidates" / "report").exists()
    missing = report_command("--store", "nowhere", cwd=tmp_path)
    assert missing.returncode == ExitCode.BAD_INPUT and "no candidate store at nowhere" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = report_command("--store", "empty", "--out", "r", cwd=tmp_path)
    assert empty.returncode == ExitCode.BAD_INPUT and "holds no candidates" in empty.stderr
    assert not (tmp_path / "r").exists()


def test_open_shows_the_index_in_the_web_browser(tmp_path, monkeypatch, capsys):
    build_store(tmp_path / "candidates")
    opened = []
    monkeypatch.setattr(webbrowser, "open", opened.append)
    assert main(["report", "--store", str(tmp_path / "candidates"), "--open"]) == ExitCode.OK
    assert opened == [(tmp_path / "report" / "index.html").as_uri()]
    assert str(tmp_path / "report" / "index.html") in capsys.readouterr().out


def test_a_store_of_300_candidates_renders(tmp_path):
    store = CandidateStore(tmp_path / "candidates")
    parents: list[StoredCandidate | None] = [None]
    for number in range(300):
        speedup = 10 ** ((number * 37 % 300) / 100)
        results = [ok(0.6 + (number * 53 % 300) / 1000, speedup), ok(0.7, speedup, HOLDOUT)]
        if number % 7 == 0:
            results = [failed("timeout")]
        parents.append(add(store, f"c{number}", parents[number * 31 % len(parents)], number % 60, *results))
    index = write_report(gather(store), tmp_path / "report")
    assert len(pages(tmp_path / "report")) == 1 + 2 + 300
    assert index.read_text(encoding="utf-8").count('class="id" href="candidate/') >= 300


# --- the pages, in a browser ----------------------------------------------------------------------------------------

def chromium(work: Path, url: str, *options: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on `url`, in a profile of its own, its console on standard error."""
    profile = tempfile.mkdtemp(dir=work)
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *options, url],
                          capture_output=True, text=True, timeout=120)


@needs_chromium
def test_every_page_loads_in_chromium_with_no_console_message_and_nothing_injected(made, tmp_path):
    site, c = made

    def open_page(page: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
        return page, chromium(tmp_path, page.as_uri(), "--dump-dom")

    with ThreadPoolExecutor(2) as pool:
        opened = list(pool.map(open_page, pages(site)))
    for page, run in opened:
        assert run.returncode == 0, (page, run.stderr[-2000:])
        assert "CONSOLE" not in run.stderr, (page, [line for line in run.stderr.splitlines() if "CONSOLE" in line])
        dom = Elements(run.stdout)
        assert dom.having("main"), page
        assert not INJECTED & {tag for tag, _ in dom.tags}, page
        assert not [attrs for _, attrs in dom.tags if any(key.startswith("on") for key in attrs)], page
    doms = {page: Elements(run.stdout) for page, run in opened}
    default = next(page for page in doms if page.name.startswith("trace-") and _heading(page) == "default trace")
    assert len(doms[default].having("circle", class_="point")) == 5 + 6
    assert len(doms[default].having("circle", class_="front")) == 4
    assert len(doms[site / "candidate" / f"{c['a'].id}.html"].having("rect", class_="bar")) == 32 + 58


@needs_chromium
def test_screenshots_are_not_blank(made, tmp_path):
    site, c = made
    default = next(page for page in site.glob("trace-*.html") if _heading(page) == "default trace")
    for page in (site / "index.html", default, site / "candidate" / f"{c['a'].id}.html"):
        shot = tmp_path / f"{page.stem}.png"
        run = chromium(tmp_path, page.as_uri(), f"--screenshot={shot}", "--window-size=640,480")
        assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
        assert colours(shot) > 8, page


def colours(png: Path) -> int:
    """How many colours an 8-bit RGB or RGBA PNG holds."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, packed = 8, b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        chunk = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and colour_type in (2, 6) and interlace == 0
        elif kind == b"IDAT":
            packed += chunk
        position += 12 + length
    raw, channels = zlib.decompress(packed), 3 if colour_type == 2 else 4
    stride, previous, seen = width * channels, bytearray(width * channels), set()
    for row in range(height):
        start = row * (stride + 1)
        method, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, up_left = previous[i], previous[i - channels] if i >= channels else 0
            if method == 1:
                line[i] = (line[i] + left) & 0xFF
            elif method == 2:
                line[i] = (line[i] + up) & 0xFF
            elif method == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif method == 4:
                guess = left + up - up_left
                nearest = min((abs(guess - left), 0, left), (abs(guess - up), 1, up),
                              (abs(guess - up_left), 2, up_left))  # Paeth: ties go left, then up
                line[i] = (line[i] + nearest[2]) & 0xFF
        seen.update(bytes(line[i:i + channels]) for i in range(0, stride, channels))
        previous = line
    return len(seen)


# --- the per-GPU load, kept by a real evaluation --------------------------------------------------------------------

def test_an_evaluation_keeps_the_load_of_its_plan_and_the_report_draws_it(tmp_path):
    run = subprocess.run([sys.executable, "-m", "evaluator", "apply", str(SEED_PATCH), "--json", "--device", "cpu",
                          *SMALL_OPTIONS], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    reply = json.loads(run.stdout)
    [stored] = (tmp_path / "candidates" / reply["candidate"]["id"] / "results").glob("*.json")
    load = json.loads(stored.read_text())["gpu_load"]
    problem = Problem(**reply["result"]["workload"]["problem"])
    assert load["planned_on"] == 0 and load["window"] == 1
    assert len(load["per_gpu"]) == problem.num_gpus
    assert len(load["layer_max"]) == len(load["layer_mean"]) == problem.num_layers
    window = default_trace_for(problem).windows[1]
    assert sum(load["per_gpu"]) == pytest.approx(float(window.sum()), rel=1e-5)  # every token lands on one GPU
    assert load["layer_mean"] == pytest.approx([float(layer.sum()) / problem.num_gpus for layer in window], rel=1e-5)
    assert all(peak >= mean for peak, mean in zip(load["layer_max"], load["layer_mean"]))

    report = report_command(cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "report" / "candidate" / f"{reply['candidate']['id']}.html").read_text(encoding="utf-8")
    assert page.count('class="bar"') == problem.num_gpus + problem.num_layers
    assert f"GPU 0: {load['per_gpu'][0]:,.0f}" in page


def test_a_held_out_evaluation_keeps_no_load(tmp_path):
    run = subprocess.run([sys.executable, "-m", "evaluator", "evaluate", str(SEED_PROGRAM), "--json", "--holdout",
                          "--device", "cpu", *SMALL_OPTIONS], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["status"] == "ok" and result["gpu_load"] is None
