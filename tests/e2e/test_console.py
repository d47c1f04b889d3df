"""The console in a real browser (Debian's Chromium, headless, driven by Playwright): sign in with
a key, see the deployed apps, run the digits app from its playground and see the image appear,
open the request and find its input, output and logs, see the runner in the live fleet view;
another tenant's app and request pages are not found, as in the API. Screenshots go to
``test-output/console/`` (``KLIEG_TEST_OUTPUT`` moves it)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.platform import APPS, REPO, Platform

pytestmark = pytest.mark.timeout(300)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("KLIEG_TEST_OUTPUT", REPO / "test-output")) / "console"
WAIT_MS = 240_000

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


def test_a_media_input_is_uploaded_from_the_playground(
    browser: Any, platform: Platform, tmp_path: Path
) -> None:
    from PIL import Image as PILImage

    platform.deploy(APPS / "imagetools" / "app.py")
    picture = tmp_path / "square.png"
    PILImage.new("RGB", (64, 48), (200, 40, 90)).save(picture)
    page = signed_in(browser, platform, platform.key)
    page.goto(f"{platform.url}/console#/playground/local/imagetools")
    page.wait_for_selector("[data-endpoint]")
    page.select_option("[data-endpoint]", label="/thumbnail")
    page.wait_for_selector("[data-upload=image]")
    page.set_input_files("[data-upload=image]", str(picture))
    page.wait_for_function(
        "() => document.querySelector('[data-field=image]').value.includes('/files/')"
    )
    page.fill("input[data-field=size]", "16")
    page.click("[data-run]")
    shown = page.wait_for_selector("[data-result] img", timeout=WAIT_MS)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=shown)
    assert shown.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [16, 12]
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
    from klieg.admin import AdminClient, load_app

    with platform.admin() as admin:
        key = str(admin.create_key(tenant="console-owner")["key"])
    folder = tmp_path / "echo"
    shutil.copytree(APPS / "echo", folder)
    revisions = []
    for version in ("one", "two"):
        source = folder / "app.py"
        source.write_text(source.read_text() + f"\n# version {version}\n")
        app, root, entry = load_app(source)
        with AdminClient(platform.url, key, timeout=120) as owner:
            revisions.append(str(owner.deploy(app, root, entry)["revision"]))
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
    with AdminClient(platform.url, key) as owner:
        aliases = {r["id"]: r["aliases"] for r in owner.revisions("echo")}
    assert aliases[first] == ["canary", "latest"] and aliases[second] == []
    page.screenshot(path=str(SHOTS / "revisions.png"), full_page=True)
    assert page.errors == []
    page.close()
