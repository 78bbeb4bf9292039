"""The files bench (bench/files_bench.py) at a small size: follow-ups download nothing, send the
same image blocks and read them from cache, at a fraction of the uncached cost."""

from __future__ import annotations

from bench.files_bench import run


def test_follow_ups_on_a_thread_of_screenshots_download_nothing_and_read_from_cache():
    cached = run("auto", 3, 120.0, 3)
    plain = run("off", 3, 120.0, 3)
    assert cached.downloads[0] >= 10 and cached.downloads[1:] == [0, 0, 0]
    assert cached.image_blocks == [10, 10, 10, 10]
    assert cached.share(1) > 0.95
    assert plain.share(1) == 0.0
    assert cached.total(1) < 0.2 * plain.total(1)
