"""A test hook: stop a training run at a named point so that a test can SIGKILL it exactly there.

    SAEKIT_TEST_PAUSE_AT=checkpoint-swap saekit train CONFIG          # pause at the first match
    SAEKIT_TEST_PAUSE_AT=step:33,checkpoint-pointer:40 saekit train CONFIG

Points (`name` or `name:step`):

    checkpoint-written   the new checkpoint is complete under its temporary name
    checkpoint-swap      the new checkpoint has its final name; latest.json still names the old one
    checkpoint-pointer   latest.json names the new checkpoint; the old one is not deleted yet
    step                 a training step is done (its log line and checkpoint, if any, are written)

At a matching point the process writes a line `SAEKIT_TEST_PAUSE_AT: paused at NAME:STEP (pid P)` to
stderr and sleeps (SAEKIT_TEST_PAUSE_SECONDS, default 600), then goes on. Unset, this is a no-op.
"""

from __future__ import annotations

import os
import sys
import time

ENV = "SAEKIT_TEST_PAUSE_AT"
SECONDS_ENV = "SAEKIT_TEST_PAUSE_SECONDS"


def pause_point(name: str, step: int) -> None:
    """Pause here when SAEKIT_TEST_PAUSE_AT names this point (and step, when it gives one)."""
    spec = os.environ.get(ENV, "")
    if not spec:
        return
    for item in spec.split(","):
        point, _, at = item.strip().partition(":")
        if point == name and (not at or int(at) == step):
            print(f"\n{ENV}: paused at {name}:{step} (pid {os.getpid()})", file=sys.stderr, flush=True)
            time.sleep(float(os.environ.get(SECONDS_ENV, 600)))
            return
