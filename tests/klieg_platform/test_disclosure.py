"""klieg_platform.disclosure: a request's logs and errors as a caller that is not the owner sees
them (error type and message; no traceback, frame line, file path or line of the app's)."""

from __future__ import annotations

import traceback

from klieg_platform.disclosure import error_view, event_view, logs_view, text_view

CODE = "/srv/klieg/code/5f1e2d/app.py"


def _traceback() -> str:
    namespace: dict[str, object] = {}
    source = "def load():\n    raise RuntimeError('cannot open /srv/klieg/code/5f1e2d/w.bin')\n"
    exec(compile(source, CODE, "exec"), namespace)
    try:
        namespace["load"]()  # type: ignore[operator]
    except RuntimeError as exc:
        return "".join(traceback.format_exception(exc))
    raise AssertionError("load() did not raise")


def test_a_traceback_is_cut_to_the_exception_line_and_paths_to_file_names() -> None:
    trace = _traceback()
    assert "Traceback" in trace and CODE in trace
    assert text_view(trace) == "RuntimeError: cannot open .../w.bin"
    assert (
        text_view("setup failed:\n" + trace) == "setup failed:\nRuntimeError: cannot open .../w.bin"
    )


def test_text_without_paths_is_kept() -> None:
    for text in (
        "ValueError: cannot handle 'x'",
        "fetch https://example.com/a/b/c.png failed",
        "s3://bucket/key/x is missing",
        "app local/echo has no endpoint at '/upper'",
        "",
    ):
        assert text_view(text) == text
    assert text_view('  File "/x/y/app.py", line 3, in f\nKeyError: 1') == "\nKeyError: 1"
    assert text_view("[Errno 2] No such file: '/home/owner/models/w.bin'") == (
        "[Errno 2] No such file: '.../w.bin'"
    )


def test_paths_after_a_colon_under_a_home_or_with_spaces_are_cut() -> None:
    assert text_view("ENOENT:/srv/a/b") == "ENOENT:.../b"
    assert text_view("open ~/x/y failed") == "open .../y failed"
    assert text_view("~/w.bin is missing") == ".../w.bin is missing"
    assert text_view("read ~bob/models/w.bin") == "read .../w.bin"
    assert text_view("no such file: '/srv/My Models/w.bin'") == "no such file: '.../w.bin'"
    assert text_view("no /home/a b/My  Models/x/w.bin") == "no .../w.bin"
    assert text_view("/srv/code/app.py and /tmp/x/y") == ".../app.py and .../y"
    for kept in ("cost ~5/10", "a~/x/y", "~", "see http://h/a b/c", "a/b/c and d/e"):
        assert text_view(kept) == kept


def test_error_view_keeps_the_type_and_walks_structured_details() -> None:
    error = {
        "detail": [{"loc": ["body", "image"], "msg": f"cannot read {CODE}", "type": "x"}],
        "error_type": "ValidationError",
    }
    assert error_view(error) == {
        "detail": [{"loc": ["body", "image"], "msg": "cannot read .../app.py", "type": "x"}],
        "error_type": "ValidationError",
    }
    assert error_view({"detail": None, "error_type": "KliegError"})["detail"] is None


def test_logs_keep_only_the_platforms_lines_and_view_their_errors() -> None:
    failed = {
        "message": "node load failed",
        "source": "workflow",
        "event": "failed",
        "error": {"detail": _traceback(), "error_type": "AppError"},
    }
    lines = [
        {"message": "reading weights", "source": "stdout"},
        {"message": "Traceback (most recent call last):", "source": "stderr"},
        {"message": "node fine started", "source": "workflow", "event": "started"},
        failed,
        {"message": "loaded", "source": "myapp.loader"},
    ]
    shown = logs_view(lines)
    assert [line["message"] for line in shown] == ["node fine started", "node load failed"]
    assert shown[1]["error"] == {
        "detail": "RuntimeError: cannot open .../w.bin",
        "error_type": "AppError",
    }
    assert failed["error"]["detail"].startswith("Traceback")  # type: ignore[index]
    assert event_view({"event": "output", "output": {"p": CODE}}) == {
        "event": "output",
        "output": {"p": CODE},
    }
