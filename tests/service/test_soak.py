"""``reenact soak`` end to end, briefly: a real server in a child process, one client streaming a
real clip, the server sampled from /proc.  The 5-minute runs are measurements, not tests
(docs/benchmarks.md); this checks that the script produces what they rely on."""

from __future__ import annotations

import json
from pathlib import Path

from service.benchmarks import soak
from tests.conftest import data_path


def test_soak_records_the_server_and_the_sessions(tmp_path: Path) -> None:
    summary = soak.run([1], 8.0, 256, tmp_path, driving=data_path("driving"), window_s=2.0)

    written = json.loads((tmp_path / "soak.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert (tmp_path / "soak.png").stat().st_size > 10_000
    assert written["complete"] and written["probes"] == []
    (run,) = written["runs"]
    assert run["clients"] == 1 and run["clips"] == ["lp_d0.mp4"]
    assert run["sessions_ended_early"] == 0
    # Avatar frames came back, with their server-side latency matched by pts.
    assert run["fps_per_session"][0] > 0
    assert run["server_ms"]["p95"] is not None and run["server_ms"]["p95"] > 0
    # The server process was sampled about once a second for the whole run.
    samples = run["samples"]
    assert len(samples) >= 7
    assert all(s["rss_mib"] > 50 and s["fds"] > 3 and s["threads"] >= 1 for s in samples)
    assert samples[-1]["t"] - samples[0]["t"] >= 7
    # Windows of 2 s: per-session fps, and the server saw the session live.
    assert len(run["windows"]) >= 3
    assert any(w["fps"][0] > 0 for w in run["windows"])
    assert any(w["sessions"] == 1 for w in run["windows"])
    for key in ("rss_mib", "fds", "threads"):
        assert run["growth"][key]["slope_per_min"] is not None
    assert isinstance(run["growth"]["flat"], bool)
    assert run["idle_after"]["t"] > samples[-1]["t"]
    assert len(written["load_average_start"]) == 3


def test_churn_reads_the_server_after_every_session(tmp_path: Path) -> None:
    summary = soak.churn(3, 1.5, 256, tmp_path, driving=data_path("driving"))

    written = json.loads((tmp_path / "churn.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert (tmp_path / "churn.png").stat().st_size > 10_000
    samples = written["samples"]
    assert [s["session"] for s in samples] == [0, 1, 2, 3]  # before, then after each session
    assert all(s["rss_mib"] > 50 and s["fds"] > 3 for s in samples)
    # Each session really ran in that server: it grew past its idle size.
    assert max(s["rss_mib"] for s in samples[1:]) > samples[0]["rss_mib"]
    assert set(written["growth_per_session"]) == {"rss_mib", "fds", "threads"}
    assert written["growth_per_session"]["rss_mib"] is not None
