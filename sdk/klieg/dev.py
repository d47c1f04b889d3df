"""``klieg run app.py``: the dev loop, as ``fal run`` and ``modal serve``.

The app's folder is deployed as the dev revision of a session (no alias of the app moves) and
served at ``{url}/{owner}/{app}@{session}``; the console's playground for it is printed too.
While it runs:

- every save of a file the archive holds (the app's folder, as ``klieg deploy`` packs it) is
  seen within ``POLL_S`` and deploys the code again: the env is reused while the requirements
  are unchanged (the gateway does not resolve them again), so the next request is served by
  the new code from a runner forked from the env's zygote; a changed requirement builds the
  env, its progress shown; a file that does not import is reported and the last good revision
  keeps serving;
- the log lines of every request to the session's revisions are printed as they come,
  prefixed by the request id;
- the session is renewed at once and then every third of the time the platform keeps it
  unrenewed (the renewal's ``ttl_s``; a session nobody renews expires by itself: the
  platform removes it);
- Ctrl-C (SIGINT) or SIGTERM ends the session: its alias and revision go, and the app too
  when the session made it.

Example::

    with AdminClient() as admin:
        DevSession(admin, Path("apps/echo/app.py")).run()
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from klieg import archive
from klieg.admin import AdminClient, load_app
from klieg.exceptions import KliegError, NotFoundError

POLL_S = 0.1
"""How often the folder is looked at for saved files."""
SETTLE_S = 0.05
"""A save is deployed once the folder has not changed for this long (editors write twice)."""
RENEW_S = 10.0
"""How often the session is renewed when the platform's reply does not say its ``ttl_s``."""
LOGS_POLL_S = 0.25
"""How often the session's requests and their new log lines are read."""

Snapshot = dict[Path, tuple[int, int]]


def snapshot(folder: Path) -> Snapshot:
    """Each file the archive of ``folder`` would hold, with its mtime and size."""
    out: Snapshot = {}
    for path in archive.files(folder):
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            out[path] = (st.st_mtime_ns, st.st_size)
    return out


def _forget_modules(folder: Path) -> None:
    """Drop the modules imported from ``folder``, so the next import reads them again."""
    root = str(folder.resolve())
    for name, module in list(sys.modules.items()):
        where = getattr(module, "__file__", None)
        if where and str(Path(where).resolve()).startswith(root + "/"):
            del sys.modules[name]


class DevSession:
    def __init__(
        self,
        admin: AdminClient,
        path: Path,
        app_name: str | None = None,
        *,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.admin = admin
        self.path = path.resolve()
        self.folder = self.path.parent
        self.app_name = app_name
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.session: str | None = None
        self.owner = ""
        self.app = ""
        self.revisions: set[str] = set()
        """Every dev revision this session served (requests to old ones still log)."""
        self.started = time.time()
        self._stopping = threading.Event()
        self._expired = threading.Event()

    @property
    def url(self) -> str:
        return f"{self.admin.url}/{self.owner}/{self.app}@{self.session}"

    def deploy(self) -> dict[str, Any]:
        """(Re)deploy the folder as the session's revision; the ``done`` event."""
        _forget_modules(self.folder)
        app, folder, entry = load_app(self.path, self.app_name)
        done = self.admin.dev_deploy(
            app, folder, entry, session=self.session, progress=lambda m: self.say(f"  {m}")
        )
        self.session, self.owner, self.app = done["alias"], done["owner"], done["app"]
        self.revisions.add(done["revision"])
        for warning in done.get("warnings") or ():
            self.say(f"warning: {warning}")
        return done

    def run(self) -> None:
        """Serve until Ctrl-C or SIGTERM, then remove what the session made."""
        self.deploy()
        self.say(f"serving {self.owner}/{self.app} at {self.url}")
        self.say(f"playground: {self.admin.url}/console#/playground/{self.owner}/{self.app}"
                 f"@{self.session}")  # fmt: skip
        self.say("watching for changes; Ctrl-C stops and removes this session")
        # SIGINT explicitly too: a process started where SIGINT is ignored (a background job of
        # a script, nohup) inherits that, and Python then never raises KeyboardInterrupt for it
        previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
        threads = [
            threading.Thread(target=self._renew, name="klieg-renew", daemon=True),
            threading.Thread(target=self._follow_logs, name="klieg-logs", daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            self._watch()
        except KeyboardInterrupt:
            pass
        finally:
            self._stopping.set()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.end()

    def end(self) -> None:
        if self.session is None:
            return
        try:
            out = self.admin.dev_end(self.app, self.session)
            self.say(f"stopped: session {self.session} removed ({len(out['retired'])} revision)")
        except KliegError as exc:
            self.say(f"stopped; the session could not be removed now ({exc.detail}): it "
                     "expires by itself within a minute")  # fmt: skip

    def _watch(self) -> None:
        seen = snapshot(self.folder)
        while True:
            time.sleep(POLL_S)
            now = snapshot(self.folder)
            if now == seen and not self._expired.is_set():
                continue
            while True:  # wait for the save to settle
                time.sleep(SETTLE_S)
                settled = snapshot(self.folder)
                if settled == now:
                    break
                now = settled
            seen = now
            self._expired.clear()
            self._reload()

    def _reload(self) -> None:
        asked = time.monotonic()
        try:
            done = self.deploy()
        except KliegError as exc:
            self.say(f"reload failed, the last revision keeps serving: {exc.error_type}: "
                     f"{exc.detail}")  # fmt: skip
            return
        took = time.monotonic() - asked
        self.say(f"reloaded in {took:.2f}s: revision {done['revision']}")

    def _renew(self) -> None:
        every_s = 0.0  # the first renewal, at once, says how long the platform keeps it
        while not self._stopping.wait(every_s):
            every_s = RENEW_S
            try:
                renewed = self.admin.dev_renew(self.app, str(self.session))
                every_s = float(renewed.get("ttl_s") or 3 * RENEW_S) / 3
            except NotFoundError:
                self.say("the session expired (was this machine asleep?): deploying it again")
                self._expired.set()
            except Exception as exc:  # the gateway is away for a moment: renew next time
                self.say(f"could not renew the session: {exc}")

    def _follow_logs(self) -> None:
        printed: dict[str, int] = {}
        finished: set[str] = set()
        while not self._stopping.wait(LOGS_POLL_S):
            with contextlib.suppress(Exception):  # a missed round is read at the next one
                page = self.admin.requests(f"{self.owner}/{self.app}", since=self.started - 1)
                for row in page["requests"]:
                    rid = row["request_id"]
                    if row["revision"] in self.revisions and rid not in finished:
                        printed.setdefault(rid, 0)
                for rid in list(printed):
                    self._print_new_lines(rid, printed, finished)

    def _print_new_lines(self, rid: str, printed: dict[str, int], finished: set[str]) -> None:
        status = self.admin.request_status(rid, with_logs=True)
        lines = status.get("logs") or []
        for line in lines[printed[rid] :]:
            self.say(f"[{rid[:8]}] {line.get('level', ''):7} {line.get('message', '')}")
        printed[rid] = len(lines)
        if status["status"] == "COMPLETED":
            error = status.get("error_type") or (status.get("error") or {}).get("error_type")
            self.say(f"[{rid[:8]}] done{f': {error}' if error else ''}")
            finished.add(rid)
            del printed[rid]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
