"""`clipkit serve` in a real browser: Playwright drives Debian's chromium against the app
running on 127.0.0.1 (a free port), with the shipped models. Skips, saying why, where
playwright or chromium is missing (`apt-get install chromium`; Playwright's own browser
download is not reachable here)."""
from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="clipkit[serve] is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="clipkit[serve] is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("chromium is not installed (apt-get install chromium): browser tests skipped",
                allow_module_level=True)

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 120_000  # model loading and generation on a busy 2-core machine


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app over a small index, served by uvicorn in a thread on a free port of 127.0.0.1."""
    from clipkit.data.synth import colour_shape_eval_set
    from clipkit.index import Index
    from clipkit.serve.app import create_app

    base = tmp_path_factory.mktemp("browser")
    root = base / "photos"
    root.mkdir()
    es = colour_shape_eval_set(n=81, split="all", image_size=64)
    for j in range(0, 81, 5):
        es.images[j].save(root / f"{es.classnames[es.labels[j]].replace(' ', '_')}_{j}.png")
    index = Index.build(root, base / "idx").index
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the port is ours from here on: no race with another process
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(index), log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    ready = threading.Event()
    deadline = time.monotonic() + 60
    while not srv.started:  # readiness, polled; no fixed sleep
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the server did not start")
        ready.wait(0.02)
    yield {"url": f"http://127.0.0.1:{port}/", "base": base, "index": index}
    srv.should_exit = True
    thread.join(timeout=30)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(server["url"])
    yield pg
    context.close()


def test_classify_an_uploaded_image(page, server, tmp_path):
    from clipkit.data.synth import colour_shape_eval_set

    es = colour_shape_eval_set(n=81, split="all", seed=3, image_size=64)  # fresh scenes, not indexed
    red_circle = tmp_path / "red_circle.png"
    es.images[0].save(red_circle)  # pair 0 is (red, circle)
    assert es.classnames[es.labels[0]] == "red circle"
    page.set_input_files("#classify-files", str(red_circle))
    page.fill("#classify-labels", "red circle, blue square\ngreen triangle")
    page.click("#classify-run")
    page.wait_for_selector("#classify-results .result .bar")
    bars = page.query_selector_all("#classify-results .result .bar")
    labels = [b.get_attribute("data-label") for b in bars]
    probs = [float(b.get_attribute("data-prob")) for b in bars]
    assert sorted(labels) == ["blue square", "green triangle", "red circle"]
    assert labels[0] == "red circle" and probs == sorted(probs, reverse=True) and probs[0] > 0.5
    assert page.inner_text("#classify-results .result h3") == "red_circle.png"
    assert "red circle" in page.inner_text("#classify-results .result .bar .text")
    shot = tmp_path / "classify.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000


def test_a_dropped_image_is_classified(page):
    import base64
    import io

    from clipkit.data.synth import colour_shape_eval_set

    es = colour_shape_eval_set(n=81, split="all", seed=6, image_size=64)
    j = es.classnames.index("blue square")
    j = es.labels.index(j)
    buf = io.BytesIO()
    es.images[j].save(buf, format="PNG")
    page.evaluate("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
        document.getElementById("drop").dispatchEvent(
            new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", base64.b64encode(buf.getvalue()).decode())
    assert page.inner_text("#classify-chosen") == "dropped.png"
    page.fill("#classify-labels", "red circle, blue square")
    page.click("#classify-run")
    page.wait_for_selector("#classify-results .result .bar")
    assert page.inner_text("#classify-results .result h3") == "dropped.png"
    assert page.get_attribute("#classify-results .result .bar", "data-label") == "blue square"


def test_a_shipped_class_set_gives_five_bars(page, tmp_path):
    from clipkit.data.synth import colour_shape_eval_set

    img = tmp_path / "x.png"
    colour_shape_eval_set(n=81, split="all", seed=4, image_size=64).images[10].save(img)
    page.set_input_files("#classify-files", str(img))
    page.select_option("#classify-set", "colour-shape")
    page.click("#classify-run")
    page.wait_for_selector("#classify-results .bar")
    assert len(page.query_selector_all("#classify-results .bar")) == 5


def test_a_non_image_shows_an_error_on_the_page(page, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is text")
    page.set_input_files("#classify-files", str(bad))
    page.fill("#classify-labels", "cat, dog")
    page.click("#classify-run")
    page.wait_for_selector("#error:not([hidden])")
    text = page.inner_text("#error")
    assert "notes.png is not an image" in text and "Traceback" not in text


def test_generate_shows_n_images_sorted_by_score(page, tmp_path):
    page.click("#tab-generate")
    page.fill("#generate-caption", "a green pentagon")
    page.fill("#generate-n", "4")
    page.click("#generate-run")
    page.wait_for_selector("#generate-results .cell img")
    cells = page.query_selector_all("#generate-results .cell")
    assert len(cells) == 4
    scores = [float(c.get_attribute("data-score")) for c in cells]
    assert scores == sorted(scores, reverse=True)
    # every image decoded in the browser
    assert page.eval_on_selector_all("#generate-results img", "els => els.every(e => e.complete && e.naturalWidth > 0)")
    page.screenshot(path=str(tmp_path / "generate.png"), full_page=True)


def test_search_shows_thumbnails_of_the_hits(page, server, tmp_path):
    page.click("#tab-search")
    page.wait_for_function("document.getElementById('search-status').textContent.includes('images indexed')")
    page.fill("#search-text", "a red circle")
    page.fill("#search-k", "5")
    page.click("#search-run")
    page.wait_for_selector("#search-results .hit img")
    hits = page.query_selector_all("#search-results .hit")
    paths = [h.get_attribute("data-path") for h in hits]
    assert paths == [h.path for h in server["index"].search("a red circle", k=5)]
    page.wait_for_function(
        "[...document.querySelectorAll('#search-results img')].every(e => e.complete && e.naturalWidth > 0)")
    shot = tmp_path / "search.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000
