"""bench/file_deleted.py at a small size: the part before the ack changes only the threads that
held the file's copies, the job the workspace's other kept messages (asserted inside `run`)."""

from __future__ import annotations

import os

from bench.file_deleted import run


def test_file_deleted_bench_runs_and_splits_the_work():
    before = os.environ.get("TEST_DATABASE_URL")
    timings = run(before, 1_200, 2)
    assert os.environ.get("TEST_DATABASE_URL") == before  # the suite's setting is left alone
    assert set(timings) == {
        "before the ack", "the job, file in 2 more messages", "the job, a file no message shows"
    }
    assert all(len(ms) == 2 and min(ms) > 0 for ms in timings.values())
