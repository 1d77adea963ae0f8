"""Named pause points inside bank writes, for crash tests.

A test sets ``MSA_BANK_PAUSE_AT=<point>`` (optionally ``<point>:<seconds>``) in a child process's
environment; when the writer reaches that point it touches ``MSA_BANK_PAUSE_FILE`` (if set) and sleeps,
so the parent can SIGKILL it exactly there. Points: ``segment.partial`` (half of a segment written, not
synced), ``segment.renamed`` (segment in place, catalog not yet committed), ``commit.begin`` (inside the
catalog transaction, before COMMIT), ``commit.done`` (after COMMIT), ``compact.committed`` (compaction
committed, old files not yet removed). Unset, a point costs one environment lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV_POINT = "MSA_BANK_PAUSE_AT"
ENV_FILE = "MSA_BANK_PAUSE_FILE"


def pause_point(name: str) -> None:
    spec = os.environ.get(ENV_POINT)
    if not spec:
        return
    point, _, seconds = spec.partition(":")
    if point != name:
        return
    marker = os.environ.get(ENV_FILE)
    if marker:
        Path(marker).write_text(name)
    time.sleep(float(seconds) if seconds else 3600.0)
