"""What the studio tests of every folder share: quick timings, and waiting for something to happen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# Short leases and polls, so that crashes, cancels, progress and watchers resolve within a second or two.
QUICK_TIMINGS = {
    "lease_seconds": 2.0,
    "poll_seconds": 0.01,
    "progress_seconds": 0.1,
    "settle_seconds": 0.2,
    "watch_seconds": 0.1,
}


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    """Poll until ``condition()`` is truthy and return its value; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        time.sleep(interval)
