"""Metrics shared by the workers of ``workers N`` (gmta.metrics.shared): two registries
in one test process stand for two workers, each with its own file in one directory."""

from __future__ import annotations

import struct
import subprocess

import pytest

from gmta.metrics import shared
from gmta.metrics.registry import Registry
from tests.exposition import parse, value


def worker(tmp_path, index: int, count: int = 2) -> tuple[Registry, shared.WorkerFile, dict]:
    """A registry like gmta's (a counter, a shared gauge, a per-process gauge, a
    gauge function) sharing worker *index*'s file."""
    r = Registry(dropped_metric="t_dropped_total", failed_metric="t_failed_total")
    families = {
        "sent": r.counter("t_sent_total", "Sent", ("endpoint",)),
        "active": r.gauge("t_active", "Open sessions", ("endpoint",)),
        "start": r.gauge("t_start_time_seconds", "Start", shared=False),
        "queue": r.gauge_function("t_queue_entries", "Entries", ("queue",)),
    }
    file = shared.WorkerFile(shared.worker_path(str(tmp_path), index))
    r.share(file, [shared.worker_path(str(tmp_path), i) for i in range(count)])
    return r, file, families


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_every_worker_renders_the_sum_of_all_workers(tmp_path):
    r0, _, f0 = worker(tmp_path, 0)
    r1, _, f1 = worker(tmp_path, 1)
    f0["sent"].labels("smtp").inc(3)
    f1["sent"].labels("smtp").inc(4)
    f1["sent"].labels("lmtp").inc()
    f0["active"].labels("smtp").inc(2)
    f1["active"].labels("smtp").inc()
    f0["start"].set(100)
    f1["start"].set(200)
    # The queue gauges read the shared spool: each worker shows its own reading, once.
    f0["queue"].track(("q",), lambda: 7)
    f1["queue"].track(("q",), lambda: 7)
    for r, start in ((r0, 100), (r1, 200)):
        for openmetrics in (False, True):
            samples = parse(r.render(openmetrics), openmetrics)
            assert value(samples, "t_sent_total", endpoint="smtp") == 7
            assert value(samples, "t_sent_total", endpoint="lmtp") == 1
            assert value(samples, "t_active", endpoint="smtp") == 3
            assert value(samples, "t_start_time_seconds") == start
            assert value(samples, "t_queue_entries", queue="q") == 7
    # The process's own view of a label set is still its own.
    assert f0["sent"].value("smtp") == 3


def test_a_restarted_worker_counts_on_from_its_predecessor(tmp_path):
    r0, _, f0 = worker(tmp_path, 0, count=1)
    f0["sent"].labels("smtp").inc(5)
    f0["active"].labels("smtp").inc(2)
    # Killed: nothing is closed or flushed. Its successor counts before it shares too.
    r = Registry()
    sent = r.counter("t_sent_total", "Sent", ("endpoint",))
    active = r.gauge("t_active", "Open sessions", ("endpoint",))
    sent.labels("smtp").inc()
    active.labels("smtp").inc()
    successor = shared.WorkerFile(shared.worker_path(str(tmp_path), 0))
    assert successor.discarded is None
    r.share(successor, [successor.path])
    sent.labels("smtp").inc()
    samples = parse(r.render())
    assert value(samples, "t_sent_total", endpoint="smtp") == 7  # 5 + 1 + 1
    # The predecessor's open sessions ended with it; the successor's own one counts.
    assert value(samples, "t_active", endpoint="smtp") == 1
    with pytest.raises(RuntimeError):
        r.share(successor, [])


def test_the_gauges_of_a_dead_worker_are_left_out_and_its_counters_kept(tmp_path):
    r0, _, f0 = worker(tmp_path, 0)
    _, file1, f1 = worker(tmp_path, 1)
    f1["sent"].labels("smtp").inc(4)
    f1["active"].labels("smtp").inc(3)
    f0["active"].labels("smtp").inc()
    struct.pack_into("=I", file1.map, 12, dead_pid())
    samples = parse(r0.render())
    assert value(samples, "t_sent_total", endpoint="smtp") == 4
    assert value(samples, "t_active", endpoint="smtp") == 1


def test_a_malformed_file_is_discarded_by_its_worker_and_skipped_by_readers(tmp_path):
    path = tmp_path / "worker-1.metrics"
    path.write_bytes(b"not a metrics file, but long enough for a header")
    r0, _, f0 = worker(tmp_path, 0)
    f0["sent"].labels("smtp").inc()
    samples = parse(r0.render())
    assert value(samples, "t_sent_total", endpoint="smtp") == 1
    assert value(samples, "t_failed_total", metric="worker_file") == 1
    file1 = shared.WorkerFile(str(path))
    assert file1.discarded == "not a gmta metrics file"
    assert file1.used == shared.HEADER_SIZE
    # A worker whose file does not exist yet is not a failure.
    path.unlink()
    file1.close()
    assert value(parse(r0.render()), "t_failed_total", metric="worker_file") == 1


def test_the_file_grows_and_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(shared, "MAX_FILE_SIZE", 2 * shared.INITIAL_FILE_SIZE)
    r0, file0, f0 = worker(tmp_path, 0, count=1)
    long_name = "x" * 1000
    for i in range(200):
        f0["sent"].labels(f"{long_name}{i}").inc(i)
    assert len(file0.map) == shared.MAX_FILE_SIZE
    samples = parse(r0.render())
    kept = [k for k in samples if k[0] == "t_sent_total"]
    assert 64 < len(kept) < 200
    assert value(samples, "t_dropped_total", metric="t_sent_total") == 200 - len(kept)
    assert value(samples, "t_sent_total", endpoint=f"{long_name}5") == 5
    # A key too long for the format is dropped, not written.
    f0["sent"].labels("y" * shared.MAX_KEY_LENGTH).inc()
    assert value(parse(r0.render()), "t_dropped_total", metric="t_sent_total") == \
        200 - len(kept) + 1


def test_clear_removes_only_worker_files(tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "worker-0.metrics").write_bytes(b"old")
    (metrics_dir / "other").write_bytes(b"kept")
    shared.clear(str(metrics_dir))
    assert [p.name for p in metrics_dir.iterdir()] == ["other"]
    shared.clear(str(tmp_path / "new"))
    assert (tmp_path / "new").is_dir()
