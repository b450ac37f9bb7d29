from mailrider.proc.scheduler import next_attempt


def test_retry_times_are_anchored_on_creation_time() -> None:
    # PROTOCOLS.md 7.5: ctime + base * n^2, smallest n >= retry in the future
    assert next_attempt(1000, 1, 400, 1000) == 1400
    assert next_attempt(1000, 2, 400, 1000) == 2600
    # a late attempt skips to the next slot that still lies ahead
    assert next_attempt(1000, 1, 400, 5000) == 1000 + 400 * 16
    assert next_attempt(0, 0, 10, 0) == 10
