"""An output file that appears under its final name only when it is complete.

``process`` writes beside the output (``.NAME.partial.EXT``, same filesystem, so the rename is
atomic) and renames on success. SIGINT and SIGTERM stop the work and remove the partial file;
after SIGKILL only the hidden partial file can remain, never a truncated file at the final path.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like SIGINT so that the same clean-up runs."""


def partial_path(output: Path) -> Path:
    """``dir/.name.partial.ext``: hidden, and it keeps the extension (writers pick the format by it)."""
    return output.with_name(f".{output.stem}.partial{output.suffix}")


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def atomic_output(output: Path) -> Iterator[Path]:
    """Yield the path to write to; rename it to ``output`` when the block succeeds, remove it
    when the block raises (including SIGINT/SIGTERM)."""
    tmp = partial_path(output)
    try:
        with _sigterm_as_interrupt():
            yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, output)
