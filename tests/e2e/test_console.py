"""The console in a real browser (Debian's Chromium, headless, driven by Playwright): sign in with
a key, see the deployed apps, run the digits app from its playground and see the image appear,
open the request and find its input, output and logs, see the runner in the live fleet view;
another tenant's app and request pages are not found, as in the API. The playground renders an
enum as a select and sends the choice, shows a waiting request's queue position and ETA; a
running request's page streams its log lines before the result; an audio output plays on the
request's page; the fleet view lists each worker with its GPUs and what holds them, and its
charts take each new sample while the page is open. Screenshots go to ``test-output/console/``
(``KLIEG_TEST_OUTPUT`` moves it)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.platform import (
    APPS,
    REPO,
    TEST_APPS,
    Platform,
    platform_process,
    running_platform,
    wait_for_status,
)

pytestmark = pytest.mark.timeout(300)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("KLIEG_TEST_OUTPUT", REPO / "test-output")) / "console"
WAIT_MS = 240_000
SAMPLE_S = 3.0
"""The fleet's sample period on the GPU fleet of these tests (10 s unless set)."""

if not Path(CHROMIUM).exists():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium as root "
        "(apt-get); the console's API is tested without a browser in test_app_openapi.py, "
        "test_history.py and test_fleet.py",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def digits(platform: Platform) -> Platform:
    platform.deploy(APPS / "digits" / "app.py")
    return platform


def signed_in(browser: Any, platform: Platform, key: str) -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(f"{platform.url}/console")
    page.fill("[data-key]", key)
    page.click("[data-sign-in]")
    page.wait_for_selector("main[data-page=apps]")
    return page


def test_the_console_is_served_by_the_gateway(platform: Platform) -> None:
    shell = httpx.get(f"{platform.url}/console", timeout=30)
    assert shell.status_code == 200 and "text/html" in shell.headers["content-type"]
    assert "/console/assets/console.js" in shell.text and "http" not in shell.text.split("<body")[1]
    assert "script-src 'self'" in shell.headers["content-security-policy"]
    script = httpx.get(f"{platform.url}/console/assets/console.js", timeout=30)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "cdn" not in script.text.lower()
    missing = httpx.get(f"{platform.url}/console/assets/nope.js", timeout=30)
    assert (missing.status_code, missing.json()["error_type"]) == (404, "NotFoundError")


def test_a_bad_key_is_refused_at_sign_in(browser: Any, platform: Platform) -> None:
    page = browser.new_page()
    page.goto(f"{platform.url}/console")
    page.fill("[data-key]", "k_nope:wrong")
    page.click("[data-sign-in]")
    box = page.wait_for_selector(".error-box")
    assert "invalid, revoked or expired API key" in box.inner_text()
    page.close()


def test_run_digits_from_the_playground_then_see_request_and_fleet(
    browser: Any, digits: Platform
) -> None:
    page = signed_in(browser, digits, digits.key)
    page.wait_for_selector("[data-app=digits]")
    page.screenshot(path=str(SHOTS / "apps.png"), full_page=True)

    page.click("[data-app=digits] a")
    page.wait_for_selector("[data-field=digits]")
    page.fill("[data-field=digits]", "42")
    page.fill("input[data-field=steps]", "8")
    assert "curl -X POST" in page.inner_text("[data-snippet]")
    page.click(".tabs button:has-text('Python')")
    python = page.inner_text("[data-snippet]")
    assert 'client.run("local/digits", {' in python and '"digits": "42"' in python
    page.click("[data-run]")
    image = page.wait_for_selector("[data-result] img[data-media=image]", timeout=WAIT_MS)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image)
    assert image.evaluate("img => img.naturalWidth") > 0
    assert len(page.query_selector_all("[data-result] img")) == 3  # the strip and two digits
    assert "sampling" in page.inner_text("[data-logs]")
    page.screenshot(path=str(SHOTS / "playground.png"), full_page=True)

    page.click("[data-request-link]")
    page.wait_for_selector("main[data-page=requests] [data-output] img[data-media=image]")
    assert '"digits": "42"' in page.inner_text("[data-input]")
    assert "sampling 1 request(s) with 8 denoising steps" in page.inner_text("[data-logs]")
    request_id = page.url.rsplit("/", 1)[1]
    page.screenshot(path=str(SHOTS / "request.png"), full_page=True)

    page.click("a.nav[href='#/requests']")
    page.wait_for_selector(f"[data-request='{request_id}']")
    with digits.http() as http:  # the first digits request waited for its batch's new runner
        first = http.get("/requests", params={"app": "digits", "limit": "1000"}).json()
    assert first["requests"][-1]["cold_start_s"] > 0, first["requests"][-1]

    page.click("a.nav[href='#/fleet']")
    page.wait_for_selector("[data-runner='local/digits']", timeout=30_000)
    page.wait_for_selector("[data-pools] table")
    page.screenshot(path=str(SHOTS / "fleet.png"), full_page=True)

    page.goto(f"{digits.url}/console#/apps/digits")
    page.wait_for_selector("[data-revisions] [data-revision]")
    assert "CPU" in page.inner_text("[data-revisions]") or "H100" in page.inner_text(
        "[data-revisions]"
    )
    assert page.errors == []
    page.close()

    with digits.admin() as admin:
        stranger = str(admin.create_key(tenant="console-stranger")["key"])
    other = signed_in(browser, digits, stranger)
    assert "digits" not in other.inner_text("main")
    for hash_ in (f"#/requests/{request_id}", "#/playground/local/digits", "#/apps/digits"):
        other.goto(f"{digits.url}/console{hash_}")
        other.reload()
        heading = other.wait_for_selector("main h1")
        assert heading.inner_text() == "Not found", hash_
        shown = other.inner_text("main")
        assert '"digits"' not in shown and "sampling" not in shown and "revision" not in shown
    other.goto(f"{digits.url}/console#/fleet")
    other.wait_for_selector("[data-runners] .empty")
    assert "local/digits" not in other.inner_text("main")
    other.close()


def imagetools_with_a_picture(
    browser: Any, platform: Platform, tmp_path: Path, endpoint: str
) -> Any:
    """The imagetools playground on ``endpoint`` with a 64x48 PNG uploaded as its image."""
    from PIL import Image as PILImage

    platform.deploy(APPS / "imagetools" / "app.py")
    picture = tmp_path / "picture.png"
    PILImage.new("RGB", (64, 48), (200, 40, 90)).save(picture)
    page = signed_in(browser, platform, platform.key)
    page.goto(f"{platform.url}/console#/playground/local/imagetools")
    page.wait_for_selector("[data-endpoint]")
    page.select_option("[data-endpoint]", label=endpoint)
    page.wait_for_selector("[data-upload=image]")
    page.set_input_files("[data-upload=image]", str(picture))
    page.wait_for_function(
        "() => document.querySelector('[data-field=image]').value.includes('/files/')"
    )
    return page


def run_for_image_size(page: Any) -> list[int]:
    """Press Run; the size of the image the result shows, once it has loaded."""
    page.click("[data-run]")
    shown = page.wait_for_selector("[data-result] img", timeout=WAIT_MS)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=shown)
    return list(shown.evaluate("img => [img.naturalWidth, img.naturalHeight]"))


def test_a_media_input_is_uploaded_from_the_playground(
    browser: Any, platform: Platform, tmp_path: Path
) -> None:
    page = imagetools_with_a_picture(browser, platform, tmp_path, "/thumbnail")
    page.fill("input[data-field=size]", "16")
    assert run_for_image_size(page) == [16, 12]
    page.screenshot(path=str(SHOTS / "upload.png"), full_page=True)
    assert page.errors == []
    page.close()


FLOW = """
name: console-shout
input:
  type: object
  properties:
    text: {type: string, description: what to shout}
  required: [text]
nodes:
  first:
    app: local/echo
    input: {text: $input.text}
  loud:
    app: local/echo/upper
    input: {text: $first.text}
output:
  text: $loud.text
"""


def test_a_workflow_is_drawn_and_its_nodes_light_up_as_they_run(
    browser: Any, platform: Platform, tmp_path: Path
) -> None:
    from klieg.workflow import load_workflow

    platform.deploy(APPS / "echo" / "app.py")
    path = tmp_path / "console-shout.yaml"
    path.write_text(FLOW)
    with platform.admin() as admin:
        admin.put_workflow("console-shout", load_workflow(path))
    page = signed_in(browser, platform, platform.key)
    page.click("a.nav[href='#/workflows']")
    page.click("[data-workflow=console-shout]")
    for node in ("input", "first", "loud", "output"):
        page.wait_for_selector(f"svg.dag [data-node={node}]")
    assert "local/echo/upper" in page.text_content("svg.dag [data-node=loud]")
    page.fill("[data-field=text]", "quiet words")
    page.click("[data-run]")
    page.wait_for_selector("[data-result-json]", timeout=WAIT_MS)
    assert '"text": "QUIET WORDS"' in page.inner_text("[data-result-json]")
    for node in ("first", "loud", "output"):
        assert page.get_attribute(f"svg.dag [data-node={node}]", "class") == "node ok", node
    assert "node loud completed" in page.inner_text("[data-logs]")
    page.screenshot(path=str(SHOTS / "workflow.png"), full_page=True)
    assert page.errors == []
    page.close()


SHOWS = "([sel, text]) => (document.querySelector(sel)?.innerText || '').includes(text)"


def test_alias_moves_and_rollback_take_a_confirmation(
    browser: Any, platform: Platform, tmp_path: Path
) -> None:
    with platform.admin() as admin:
        key = str(admin.create_key(tenant="console-owner")["key"])
    folder = tmp_path / "echo"
    shutil.copytree(APPS / "echo", folder)
    revisions = []
    for version in ("one", "two"):
        source = folder / "app.py"
        source.write_text(source.read_text() + f"\n# version {version}\n")
        revisions.append(str(platform.deploy(source, key=key)["revision"]))
    first, second = revisions
    page = signed_in(browser, platform, key)
    answers: list[str] = []

    def answer(dialog: Any) -> None:
        answers.append(dialog.type)
        if dialog.type == "prompt":
            dialog.accept("canary")
        else:
            dialog.accept()

    page.on("dialog", answer)
    page.click("[data-app=echo]")
    row = f"[data-revision='{first}']"
    page.wait_for_selector(row)
    assert "latest" in page.inner_text(f"[data-revision='{second}']")
    page.click(f"{row} button")
    page.wait_for_function(SHOWS, arg=[row, "canary"])
    page.click("[data-rollback]")
    page.wait_for_function(SHOWS, arg=[row, "latest"])
    assert answers == ["prompt", "confirm", "confirm"]
    with platform.admin(key) as owner:
        aliases = {r["id"]: r["aliases"] for r in owner.revisions("echo")}
    assert aliases[first] == ["canary", "latest"] and aliases[second] == []
    page.screenshot(path=str(SHOTS / "revisions.png"), full_page=True)
    assert page.errors == []
    page.close()


def test_an_enum_is_a_select_and_the_choice_is_sent(
    browser: Any, platform: Platform, tmp_path: Path
) -> None:
    page = imagetools_with_a_picture(browser, platform, tmp_path, "/resize")
    mode = page.wait_for_selector("select[data-field=mode]")
    options = mode.eval_on_selector_all("option", "os => os.map(o => o.textContent)")
    assert options == ["fit", "fill", "stretch"]
    assert mode.evaluate("s => s.selectedOptions[0].text") == "fit"  # the default
    page.fill("input[data-field=width]", "20")
    page.fill("input[data-field=height]", "10")
    page.select_option("select[data-field=mode]", label="stretch")
    assert '"mode":"stretch"' in page.inner_text("[data-snippet]")  # the curl call's body
    # "fit" would keep 64x48's aspect (13x10); "stretch" fills the box
    assert run_for_image_size(page) == [20, 10]
    page.screenshot(path=str(SHOTS / "enum.png"), full_page=True)
    assert page.errors == []
    page.close()


def short_id(page: Any) -> str:
    """The request id the playground links to, as it shows it."""
    return str(page.inner_text("[data-request-link]"))


@pytest.fixture(scope="module")
def waiting_room(platform: Platform) -> str:
    """A tenant of its own with the slow test app, at most one of its requests running."""
    with platform.admin() as admin:
        key = str(admin.create_key(tenant="console-queue")["key"])
    platform.deploy(TEST_APPS / "slow" / "app.py", key=key)
    with platform.admin(key) as owner:
        owner.limit_app("slow", 1)
    return key


def _submit(platform: Platform, key: str, seconds: float) -> dict[str, Any]:
    with platform.http(key) as http:
        answer = http.post("/queue/console-queue/slow", json={"seconds": seconds})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_a_waiting_request_shows_its_queue_position_and_eta(
    browser: Any, platform: Platform, waiting_room: str
) -> None:
    blocker = _submit(platform, waiting_room, 6)
    with platform.http(waiting_room) as http:
        wait_for_status(http, blocker["status_url"], "IN_PROGRESS", timeout=60)
    page = signed_in(browser, platform, waiting_room)
    page.goto(f"{platform.url}/console#/playground/console-queue/slow")
    page.wait_for_selector("[data-endpoint]")
    page.select_option("[data-endpoint]", label="/")
    page.fill("input[data-field=seconds]", "0.1")
    page.click("[data-run]")
    note = page.wait_for_selector("[data-state] [data-queue]", timeout=30_000)
    assert note.inner_text().startswith("next in line")  # the only one waiting
    eta = float(page.get_attribute("[data-state] [data-queue-eta]", "data-queue-eta") or "-1")
    assert eta >= 0 and "starts in" in note.inner_text()
    with platform.http(waiting_room) as http:
        assert http.get(blocker["status_url"]).json()["status"] == "IN_PROGRESS"
    page.screenshot(path=str(SHOTS / "queued.png"), full_page=True)
    page.wait_for_selector("[data-result-json]", timeout=WAIT_MS)
    assert '"slept": 0.1' in page.inner_text("[data-result-json]")
    assert page.query_selector("[data-state] [data-queue]") is None  # gone once it ran
    assert page.inner_text("[data-state]").split() == [short_id(page), "COMPLETED"]
    assert page.errors == []
    page.close()


def test_a_running_request_streams_its_logs_on_its_page(
    browser: Any, platform: Platform, waiting_room: str
) -> None:
    sub = _submit(platform, waiting_room, 6)
    page = signed_in(browser, platform, waiting_room)
    page.goto(f"{platform.url}/console#/requests/{sub['request_id']}")
    page.wait_for_selector("[data-output] .notice")  # waiting for the result
    page.wait_for_function(SHOWS, arg=["[data-logs]", "sleeping 6"], timeout=60_000)
    with platform.http(waiting_room) as http:  # the line came while it ran
        assert http.get(sub["status_url"]).json()["status"] == "IN_PROGRESS"
    assert page.query_selector("[data-output] .notice") is not None
    assert page.inner_text("[data-state]").split() == ["IN_PROGRESS"]
    page.screenshot(path=str(SHOTS / "request-running.png"), full_page=True)
    page.wait_for_selector("[data-output] pre.json", timeout=WAIT_MS)
    assert '"slept": 6' in page.inner_text("[data-output]")
    assert page.inner_text("[data-logs]").count("sleeping 6") == 1  # each line once
    assert page.errors == []
    page.close()


def test_an_audio_output_plays_on_the_request_page(browser: Any, platform: Platform) -> None:
    platform.deploy(APPS / "echo" / "app.py")
    page = signed_in(browser, platform, platform.key)
    page.goto(f"{platform.url}/console#/playground/local/echo")
    page.wait_for_selector("[data-endpoint]")
    page.select_option("[data-endpoint]", label="/morse")
    page.fill("[data-field=text]", "sos")
    page.click("[data-run]")
    page.wait_for_selector("[data-result] audio[data-media=audio]", timeout=WAIT_MS)
    out = json.loads(page.inner_text("[data-result-json]"))
    assert out["code"] == "... --- ..." and out["audio"]["content_type"] == "audio/wav"
    page.click("[data-request-link]")
    audio = page.wait_for_selector("main[data-page=requests] [data-output] audio[data-media=audio]")
    page.wait_for_function("a => a.readyState >= 1 && a.duration > 0", arg=audio)
    assert audio.evaluate("a => a.duration") == pytest.approx(out["seconds"], abs=0.01)
    assert audio.evaluate("a => a.error") is None
    page.screenshot(path=str(SHOTS / "audio.png"), full_page=True)
    assert page.errors == []
    page.close()


@pytest.fixture(scope="module")
def gpu_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A platform of its own: its worker serves the CPU pool, a second one ``GPU-H100`` with two
    logical GPUs; the gpus test app deployed."""
    home = tmp_path_factory.mktemp("console-gpus")
    env = {"KLIEG_WORKER_POOLS": "CPU", "KLIEG_FLEET_SAMPLE_S": str(SAMPLE_S)}
    with running_platform(home, extra_env=env) as p:
        p.bootstrap()
        p.deploy(TEST_APPS / "gpus" / "app.py")
        args = ["klieg_platform.worker", "--pool", "GPU-H100", "--gpus", "2", "--no-workflows"]
        with platform_process(home, args, "gpu-worker.log"):
            yield p


def test_the_fleet_lists_workers_with_their_gpus_and_its_charts_move(
    browser: Any, gpu_fleet: Platform
) -> None:
    page = signed_in(browser, gpu_fleet, gpu_fleet.key)
    page.goto(f"{gpu_fleet.url}/console#/fleet")
    gpu_row = "[data-workers] tr[data-worker]:has([data-gpu])"
    page.wait_for_selector(gpu_row, timeout=60_000)
    first_points = int(page.get_attribute("[data-chart=latency]", "data-points") or "0")
    with gpu_fleet.http() as http:
        sub = http.post("/queue/local/gpus/one", json={"seconds": 6, "tag": "held"}).json()
    held = f"{gpu_row} [data-gpu].busy"
    page.wait_for_selector(held, timeout=60_000)
    chip = page.inner_text(held)
    assert "local/gpus · one" in chip and chip.startswith("GPU ")
    assert page.query_selector_all(f"{gpu_row} [data-gpu].free"), "the other GPU is free"
    assert page.get_attribute(f"{gpu_row} [data-slots]", "data-slots") in ("1/0/1",)
    cpu_row = page.inner_text("[data-workers] tr[data-worker]:not(:has([data-gpu]))")
    assert "CPU only" in cpu_row and "serving" in cpu_row
    seen = [
        float(x)
        for x in page.eval_on_selector_all("[data-seen]", "es => es.map(e => e.dataset.seen)")
    ]
    assert len(seen) == 2 and all(0 <= s < 15 for s in seen)
    page.screenshot(path=str(SHOTS / "fleet-workers.png"), full_page=True)
    with gpu_fleet.http() as http:
        wait_for_status(http, sub["status_url"], "COMPLETED", timeout=60)
    # the sample after the completion (one every SAMPLE_S) reaches the open page: a new point
    # and the run's time as the mean run time
    page.wait_for_function(
        "([n]) => Number(document.querySelector('[data-chart=latency]').dataset.points) > n"
        " && /^[0-9.]+ s$/.test(document.querySelector('[data-stat-latency] .v').textContent)",
        arg=[first_points],
        timeout=40_000,
    )
    mean = page.inner_text("[data-stat-latency] .v")
    assert 5.9 <= float(mean.split()[0]) < 8, mean
    page.wait_for_selector(f"{gpu_row} [data-gpu].idle")  # the runner stays warm, holding it
    page.screenshot(path=str(SHOTS / "fleet-live.png"), full_page=True)
    assert page.errors == []
    page.close()


def test_the_fleet_stream_sends_each_new_sample(gpu_fleet: Platform) -> None:
    events: list[dict[str, Any]] = []
    with gpu_fleet.http() as http, http.stream("GET", "/fleet/stream?for_s=25") as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
            if sum("sample" in e for e in events) >= 2:
                break
    assert "history" in events[0] and "sample" not in events[0]
    samples = [e["sample"] for e in events if "sample" in e]
    apart = samples[1]["at"] - samples[0]["at"]
    assert len(samples) == 2 and SAMPLE_S - 0.5 <= apart <= SAMPLE_S + 2, apart
    assert events[0]["every_s"] == SAMPLE_S
    if events[0]["history"]:
        assert samples[0]["at"] > events[0]["history"][-1]["at"]
    assert all(e["workers"] and e["pools"] is not None for e in events)
    gpu = next(w for w in events[-1]["workers"] if w["gpu_ids"])
    assert [g["id"] for g in gpu["gpus"]] == gpu["gpu_ids"] == [0, 1]
