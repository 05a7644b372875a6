"""The sweep plots are written as valid, non-empty PNG files from plain dicts."""

from __future__ import annotations

import pytest

from loadtest.plots import (
    plot_achieved_vs_offered,
    plot_all,
    plot_latency_vs_offered,
    plot_throughput_over_time,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

STEPS = [
    {
        "offered_per_s": 1000.0,
        "achieved_per_s": 999.0,
        "p50_ms": 0.5,
        "p99_ms": 2.0,
        "p999_ms": 4.0,
        "per_second": [1000, 999, 998],
        "passed": True,
    },
    {
        "offered_per_s": 2000.0,
        "achieved_per_s": 1990.0,
        "p50_ms": 0.7,
        "p99_ms": 5.0,
        "p999_ms": 9.0,
        "per_second": [2000, 1990, 1980],
        "passed": True,
    },
    {
        "offered_per_s": 4000.0,
        "achieved_per_s": 2500.0,
        "p50_ms": 90.0,
        "p99_ms": 800.0,
        "p999_ms": 0.0,
        "per_second": [2500, 2400, 2600, 300],
        "passed": False,
    },
]


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_each_plot_is_a_png(tmp_path):
    assert_png(plot_achieved_vs_offered(STEPS, tmp_path / "a.png"))
    assert_png(plot_latency_vs_offered(STEPS, tmp_path / "l.png", p99_ms_max=25.0))
    assert_png(plot_throughput_over_time(STEPS, tmp_path / "nested" / "t.png"))


def test_plot_all_writes_three_files(tmp_path):
    paths = plot_all(STEPS, tmp_path, prefix="sweep", p99_ms_max=25.0)
    assert [path.name for path in paths] == ["sweep_achieved.png", "sweep_latency.png", "sweep_throughput.png"]
    for path in paths:
        assert_png(path)


def test_no_steps_is_an_error(tmp_path):
    with pytest.raises(ValueError):
        plot_achieved_vs_offered([], tmp_path / "x.png")
