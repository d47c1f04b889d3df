"""``klieg demo``: start the platform, deploy every app under ``apps/``, call each, print results.

Uses ``$KLIEG_HOME`` (default ``~/.klieg``). On a fresh home it bootstraps the first tenant and
keeps its key in ``$KLIEG_HOME/demo-key`` so later demos reuse it. Each app's calls come from
``apps/<name>/examples.json``: ``[{"path": "/", "input": {...}, "queue": false}, ...]``. Then
every workflow ``apps/workflows/<name>.yaml`` is stored and run through the queue with the input
in ``<name>.input.json``, its per-node events printed as they arrive.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from klieg.admin import AdminClient, load_app
from klieg.client import Client
from klieg.exceptions import KliegError
from klieg_platform.config import Settings
from klieg_platform.local import launched


def _say(text: str) -> None:
    print(text, flush=True)


def _key(settings: Settings, url: str) -> str:
    stored = settings.home / "demo-key"
    if stored.exists():
        return stored.read_text().strip()
    with AdminClient(url, key="") as anonymous:
        key = str(anonymous.create_key()["key"])
    stored.write_text(key)
    stored.chmod(0o600)
    return key


def _call(client: Client, owner: str, app: str, example: dict[str, Any]) -> Any:
    app_id = f"{owner}/{app}{example.get('path', '/')}".rstrip("/")
    if example.get("queue"):
        handle = client.submit(app_id, example.get("input", {}))
        _say(f"  queued {handle.request_id}; polling {handle.status_url}")
        return client.wait(handle, timeout=300)
    return client.run(app_id, example.get("input", {}))


def _short(value: Any) -> Any:
    """``value`` for printing: long strings (data: URIs, URLs) cut to their start."""
    if isinstance(value, str) and len(value) > 80:
        return f"{value[:60]}...({len(value)} chars)"
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_short(v) for v in value]
    return value


def _media(value: Any) -> list[dict[str, Any]]:
    """Every file object (``url`` + ``content_type``) inside a result."""
    if isinstance(value, dict):
        if isinstance(value.get("url"), str) and "content_type" in value:
            return [value]
        return [m for v in value.values() for m in _media(v)]
    if isinstance(value, list):
        return [m for v in value for m in _media(v)]
    return []


def _save_media(out: Any, folder: Path) -> None:
    """Download the files a result refers to (their URLs end with the platform)."""
    for item in _media(out):
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / str(item.get("file_name") or "file")
        path.write_bytes(httpx.get(item["url"], timeout=60).content)
        _say(f"  saved {path}")


def _show(call: Callable[[], Any], media_dir: Path) -> bool:
    """Run one demo call: print its result and time (or its error) and save the media it
    returns to ``media_dir``; False when it failed."""
    started = time.perf_counter()
    try:
        out = call()
    except KliegError as exc:
        _say(f"  FAILED {exc.error_type}: {exc.detail}")
        return False
    elapsed_ms = (time.perf_counter() - started) * 1000
    _say(f"  ({elapsed_ms:.0f} ms) {json.dumps(_short(out))}")
    _save_media(out, media_dir)
    return True


def _watched(admin: AdminClient, app_id: str, body: Any) -> Any:
    """Submit to the queue, print the request's log lines (node events) as they come, and
    return its result."""
    handle = admin.submit(app_id, body)
    seen = 0
    while True:
        status = admin.status(handle.app_id, handle.request_id, with_logs=True)
        for line in (status.get("logs") or [])[seen:]:
            _say(f"  {line.get('message')}")
        seen = len(status.get("logs") or [])
        if status["status"] == "COMPLETED":
            return admin.result(handle.app_id, handle.request_id)
        time.sleep(0.2)


def _run_workflows(admin: AdminClient, folder: Path, output: Path) -> int:
    """Store and run each workflow of ``folder``; the number that failed."""
    failures = 0
    for doc in sorted(folder.glob("*.yaml")):
        name = doc.stem
        stored = admin.put_workflow(name, doc)
        _say(f"\n== workflow {stored['owner']}/{name} revision {stored['revision']} ==")
        input_file = doc.with_name(f"{name}.input.json")
        body = json.loads(input_file.read_text()) if input_file.exists() else {}
        app_id = f"workflows/{stored['owner']}/{name}"
        call = functools.partial(_watched, admin, app_id, body)
        if not _show(call, output / f"workflow-{name}"):
            failures += 1
    return failures


def run_demo(settings: Settings, url: str, apps_dir: Path) -> int:
    key = _key(settings, url)
    failures = 0
    with AdminClient(url, key) as admin:
        for app_file in sorted(apps_dir.glob("*/app.py")):
            app, folder, entry = load_app(app_file)
            _say(f"\n== deploying {app_file} ==")
            done = admin.deploy(app, folder, entry, progress=lambda m: _say(f"  {m}"))
            env = "built" if done["env_built"] else "reused"
            _say(f"  -> {done['owner']}/{done['app']} revision {done['revision']} (env {env})")
            examples_file = folder / "examples.json"
            examples = json.loads(examples_file.read_text()) if examples_file.exists() else []
            for example in examples:
                path = example.get("path", "/")
                _say(
                    f"== POST /{done['owner']}/{app.name}{path.rstrip('/')} "
                    f"{json.dumps(_short(example.get('input', {})))}"
                )
                call = functools.partial(_call, admin, str(done["owner"]), app.name, example)
                if not _show(call, settings.home / "demo-output" / app.name):
                    failures += 1
        failures += _run_workflows(admin, apps_dir / "workflows", settings.home / "demo-output")
    _say(
        f"\nDemo finished with {failures} failure(s). To use the platform yourself:\n"
        f"  klieg up --port {url.rsplit(':', 1)[1]}   # then, in another shell:\n"
        f"  export KLIEG_URL={url} KLIEG_KEY={key}\n"
        f'  klieg call local/echo --json \'{{"text": "hi"}}\''
    )
    return 1 if failures else 0


def main(*, port: int, apps_dir: Path) -> int:
    settings = Settings.from_env().with_(port=port)
    _say(f"starting Klieg on port {port} (home {settings.home}) ...")
    with launched(settings.home, port) as url:
        return run_demo(settings, url, apps_dir)
