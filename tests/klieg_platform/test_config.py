"""Settings read from the environment: the history cap (``KLIEG_HISTORY_MAX``), the worker's
memory budget (``KLIEG_WORKER_MEMORY_MB``), the fleet sample period and the dev sessions' time to
live."""

from __future__ import annotations

from pathlib import Path

import pytest

from klieg_platform.config import HISTORY_MAX, MEMORY_SHARE, Settings, machine_memory_bytes


def test_the_history_cap_is_a_whole_number_setting(tmp_path: Path) -> None:
    home = {"KLIEG_HOME": str(tmp_path)}
    assert Settings.from_env(home).history_max == HISTORY_MAX
    assert Settings.from_env(home | {"KLIEG_HISTORY_MAX": "250000"}).history_max == 250_000
    assert Settings.from_env(home | {"KLIEG_HISTORY_MAX": "0"}).history_max == 0  # no count cap
    for bad in ("-1", "ten", "1.5"):
        with pytest.raises(ValueError, match="KLIEG_HISTORY_MAX must be a whole number"):
            Settings.from_env(home | {"KLIEG_HISTORY_MAX": bad})


def test_the_worker_memory_budget_defaults_to_a_share_of_the_machine(tmp_path: Path) -> None:
    home = {"KLIEG_HOME": str(tmp_path)}
    machine = machine_memory_bytes()
    assert machine > 0  # /proc/meminfo is there on Linux
    assert Settings.from_env(home).worker_memory_mb == int(machine * MEMORY_SHARE) >> 20
    assert Settings.from_env(home | {"KLIEG_WORKER_MEMORY_MB": "512"}).worker_memory_mb == 512
    assert Settings.from_env(home | {"KLIEG_WORKER_MEMORY_MB": "0"}).worker_memory_mb == 0
    with pytest.raises(ValueError, match="KLIEG_WORKER_MEMORY_MB must be a whole number"):
        Settings.from_env(home | {"KLIEG_WORKER_MEMORY_MB": "1.5G"})


def test_a_cgroup_limit_below_the_machines_memory_is_what_the_machine_has(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384000 kB\nMemFree:         1000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert machine_memory_bytes(meminfo, cgroup) == 16384000 * 1024
    (cgroup / "memory.max").write_text("max\n")  # no limit (v2)
    assert machine_memory_bytes(meminfo, cgroup) == 16384000 * 1024
    (cgroup / "memory.max").write_text(f"{4 << 30}\n")
    assert machine_memory_bytes(meminfo, cgroup) == 4 << 30
    (cgroup / "memory.max").unlink()
    (cgroup / "memory").mkdir()
    (cgroup / "memory" / "memory.limit_in_bytes").write_text(f"{1 << 62}\n")  # v1: unlimited
    assert machine_memory_bytes(meminfo, cgroup) == 16384000 * 1024
    assert machine_memory_bytes(tmp_path / "none", tmp_path / "none") == 0


def test_the_sample_period_and_the_dev_ttl_are_positive_seconds(tmp_path: Path) -> None:
    home = {"KLIEG_HOME": str(tmp_path)}
    defaults = Settings.from_env(home)
    assert (defaults.fleet_sample_s, defaults.dev_ttl_s) == (10.0, 30.0)
    set_ = Settings.from_env(home | {"KLIEG_FLEET_SAMPLE_S": "2.5", "KLIEG_DEV_TTL_S": "6"})
    assert (set_.fleet_sample_s, set_.dev_ttl_s) == (2.5, 6.0)
    for name in ("KLIEG_FLEET_SAMPLE_S", "KLIEG_DEV_TTL_S"):
        for bad in ("0", "-1", "nan", "inf", "soon"):
            with pytest.raises(ValueError, match=f"{name} must be a positive number of seconds"):
                Settings.from_env(home | {name: bad})
