"""A scratch directory for a benchmark, with every FUSE mount below it undone after."""

import contextlib
import shutil
import subprocess
import tempfile
from typing import Iterator


@contextlib.contextmanager
def directory(prefix: str) -> Iterator[str]:
    """A new directory; on exit, the images mounted below it (a kept-warm mount's server
    would otherwise outlive the benchmark) are unmounted and the directory removed."""
    work = tempfile.mkdtemp(prefix=prefix)
    try:
        yield work
    finally:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f if work in line]
        for point in points:
            subprocess.run(["fusermount3", "-u", point], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
