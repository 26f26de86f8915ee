"""A real browser on a real run: Netron draws the exported graph, TensorBoard draws the run's scalars.

Headless Chromium (Debian's ``chromium`` package) is driven by Playwright; every request that leaves the loopback
interface is blocked, so the pages work exactly as they do offline. Screenshots go to the test's tmp folder, and
also to ``$ZEROTUNE_SCREENSHOT_DIR`` (as ``netron.png`` and ``tensorboard.png``) when that is set; the guides'
images are made with ``ZEROTUNE_SCREENSHOT_DIR=docs python -m pytest tests/test_e2e_browser.py``, which also trains
longer so the curves have a shape.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]
SCREENSHOT_DIR = os.environ.get("ZEROTUNE_SCREENSHOT_DIR")
MAX_PNG_BYTES = 300_000
SCALAR_TAGS = ["train/loss", "val/loss", "val/acc", "onnx/max_abs_diff"]

if not Path(CHROMIUM).exists():
    pytest.skip(
        f"{CHROMIUM} not found: install Debian's chromium package (apt-get install chromium fonts-wqy-microhei)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished digits_cnn run: the session's tiny run, or a few full epochs for the screenshots in docs."""
    if not SCREENSHOT_DIR:
        from test_dashboards import shared_tiny_run

        return shared_tiny_run(tmp_path_factory.getbasetemp())[0]
    from experiments.run import main

    runs = tmp_path_factory.mktemp("screenshots") / "runs"
    budget = ["--trainer.max_epochs", "6", "--trainer.log_every_n_steps", "2"]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(["digits_cnn", "--runs_dir", str(runs), *budget])
    assert code == 0, out.getvalue()[-2000:]
    return runs / "digits_cnn" / "version_0"


@contextlib.contextmanager
def serving(command: list[str], log: Path, url_pattern: str, cwd: Path = ROOT, timeout: float = 60) -> Iterator[str]:
    """Run a server in a subprocess (output to ``log``), yield the URL it announces, stop it afterwards."""
    with open(log, "w") as sink:
        proc = subprocess.Popen(command, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(url_pattern, log.read_text())
            if match:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{command[2]} did not announce a URL:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield match.group(1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A headless Chromium context with a fresh profile that can reach 127.0.0.1 only."""
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 860},
        )
        context.route(re.compile(r"^(?!http://127\.0\.0\.1[:/]).*"), lambda route: route.abort())
        try:
            yield context
        finally:
            context.close()


def save_screenshot(page: object, name: str, tmp_path: Path) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot))
    assert 10_000 < shot.stat().st_size < MAX_PNG_BYTES, shot.stat().st_size
    if SCREENSHOT_DIR:
        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(SCREENSHOT_DIR) / name)
    return shot


def netron_release_date() -> datetime:
    """The build date Netron's page carries: after 180 days the page asks to update instead of drawing."""
    import netron

    html = (Path(netron.__file__).parent / "index.html").read_text()
    stamp = re.search(r'<meta name="date" content="([^"]+)">', html).group(1)
    return datetime.fromisoformat(stamp).replace(tzinfo=UTC)


def test_netron_draws_the_exported_graph(run_dir: Path, browser: object, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "experiments.view", str(run_dir)]
    with serving(command, tmp_path / "view.log", r"(http://127\.0\.0\.1:\d+)") as url:
        # Offline, Netron first asks for cookie consent; the cookie it sets on "Accept" skips the question.
        browser.add_cookies([{"name": "consent", "value": str(int(time.time() * 1000)), "url": url}])
        # Netron replaces window.eval (which Playwright uses to read the page) with a function that throws;
        # keep the original so the test can read the DOM.
        browser.add_init_script(
            "const e = window.eval; Object.defineProperty(window, 'eval', {get: () => e, set: () => {}});"
        )
        page = browser.new_page()
        # Pin the page's clock near the release so the test does not depend on how old the installed Netron is.
        page.clock.set_fixed_time(netron_release_date() + timedelta(days=1))
        page.goto(url)
        # The layout runs in a worker after a timer: wait for real nodes in the SVG.
        page.wait_for_selector("svg .node", timeout=60_000)
        # Each node's header holds its operator type as the first text element (the node name may follow).
        types = set(page.locator("svg .graph-node .node-item-type text:first-of-type").all_text_contents())
        assert {"Conv", "Relu", "MaxPool", "Gemm"} <= types, types
        assert "batch×1×8×8" in page.locator("svg").first.text_content()  # the dynamic batch axis on the input edge
        # Click the first Conv: the sidebar lists its attributes.
        page.set_viewport_size({"width": 1200, "height": 1000})
        page.click("#zoom-out-button")
        page.click("#zoom-out-button")
        page.locator("svg .graph-node .node-item-type", has_text="Conv").first.click()
        names = page.locator(".sidebar-item-name input")
        names.first.wait_for(timeout=30_000)
        fields = {names.nth(i).input_value() for i in range(names.count())}
        assert {"type", "kernel_shape", "strides", "pads"} <= fields, fields
        time.sleep(0.5)  # let the zoom transition settle before the picture
        save_screenshot(page, "netron.png", tmp_path)
        page.close()


def drawn_points(card: object) -> int:
    """How many points the card's chart draws: its longest line (the raw and the smoothed line share the points)."""
    paths = card.locator("path.line").evaluate_all("ps => ps.map(p => p.getAttribute('d') || '')")
    return max((d.count("L") + d.startswith("M") for d in paths), default=0)


def test_tensorboard_shows_the_run_scalars(run_dir: Path, browser: object, tmp_path: Path) -> None:
    from test_dashboards import load_events

    # A log folder relative to the runs root's parent, as a user types it (TensorBoard shows it in the sidebar).
    home = run_dir.parents[2]
    logdir = str(run_dir.relative_to(home))
    events = load_events(run_dir)
    lr_tag = next(t for t in events.Tags()["scalars"] if t.startswith("lr-"))  # LearningRateMonitor's tag
    logged = {tag: len(events.Scalars(tag)) for tag in [*SCALAR_TAGS, lr_tag]}
    assert all(logged.values()), logged
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1", "--port", "0"]
    with serving(command, tmp_path / "tensorboard.log", r"(http://127\.0\.0\.1:\d+)/", cwd=home) as url:
        page = browser.new_page()
        page.goto(url + "/#scalars")
        tag_filter = page.locator("tf-tag-filterer input")
        tag_filter.wait_for(timeout=60_000)
        # The sidebar names the log folder as typed, and its one run (the folder itself, ".") is listed and selected.
        selector = page.locator("tf-runs-selector")
        assert selector.evaluate("s => [s.dataLocation, s.runs]") == [logdir, ["."]]
        assert page.locator("tf-runs-selector tf-multi-checkbox").evaluate("m => m.outSelected") == ["."]
        # Scale each chart to all its points: with outliers ignored, a 2-point chart such as val/loss draws nothing.
        outliers = page.locator("paper-checkbox", has_text="Ignore outliers in chart scaling")
        outliers.click()
        assert outliers.evaluate("c => c.checked") is False
        tag_filter.fill("|".join(re.escape(t) for t in logged))
        cards = {}
        for tag in logged:
            heading = page.get_by_text(f"tag: {tag}", exact=True).first
            heading.wait_for(timeout=60_000)
            cards[tag] = page.locator("tf-scalar-card:visible").filter(has=heading)
        shown = set(page.locator("tf-scalar-card:visible").evaluate_all("cs => cs.map(c => c.tag)"))
        assert set(logged) <= shown, shown
        # Each chart draws one point per value the event file holds (charts load one after another: wait a little).
        drawn = {}
        deadline = time.monotonic() + 30
        while drawn != logged and time.monotonic() < deadline:
            time.sleep(0.25)
            drawn = {tag: drawn_points(card) for tag, card in cards.items()}
        assert drawn == logged
        outliers.click()  # back to TensorBoard's default for the picture: long runs' curves fill the chart
        tag_filter.fill("train/loss|val/loss|val/acc|lr-")
        time.sleep(1.0)
        save_screenshot(page, "tensorboard.png", tmp_path)
        page.close()
