"""Settings read from the environment: the history cap (``KLIEG_HISTORY_MAX``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from klieg_platform.config import HISTORY_MAX, Settings


def test_the_history_cap_is_a_whole_number_setting(tmp_path: Path) -> None:
    home = {"KLIEG_HOME": str(tmp_path)}
    assert Settings.from_env(home).history_max == HISTORY_MAX
    assert Settings.from_env(home | {"KLIEG_HISTORY_MAX": "250000"}).history_max == 250_000
    assert Settings.from_env(home | {"KLIEG_HISTORY_MAX": "0"}).history_max == 0  # no count cap
    for bad in ("-1", "ten", "1.5"):
        with pytest.raises(ValueError, match="KLIEG_HISTORY_MAX must be a whole number"):
            Settings.from_env(home | {"KLIEG_HISTORY_MAX": bad})
