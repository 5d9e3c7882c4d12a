"""A new user's first build: how long, and the longest stretch with no line printed.

    python3 bench/first_build.py [--work DIR]

A shared site's every new user starts with an empty Spack user cache: Spack's indexes of
the package repository, and the extension's compiled runtime and AppRun, are not there
yet. This runs ``spack -e ENV appimage --entry ai-hello=ai-hello`` on the test packages (installed
once into a store of the benchmark's own, as bench/run.py does) with a fresh user cache,
then again with the cache the first run filled, side by side, and prints for each the
wall time and the longest silence: the gap between two lines of output (or between the
start and the first line, or the last line and the exit). Target: no silence over 2 s.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import Site  # noqa: E402


def timed_lines(command, env):
    """(seconds since the start, line) for each line the command prints, and its end."""
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=dict(env, PYTHONUNBUFFERED="1"), text=True)
    lines = [(time.monotonic() - start, line.rstrip("\n")) for line in process.stdout]
    if process.wait() != 0:
        sys.exit(f"{' '.join(command)} failed:\n" + "\n".join(text for _, text in lines))
    return lines, time.monotonic() - start


def longest_silence(lines, end):
    """(seconds, the line after which nothing was printed for that long)."""
    marks = [(0.0, "(start)")] + lines
    gaps = [(later - t, text) for (t, text), later in
            zip(marks, [t for t, _ in lines] + [end])]
    return max(gaps)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="keep the store here (reused)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="first-build-")
    site = Site(work)
    cache = tempfile.mkdtemp(prefix="user-cache-", dir=work)
    env = dict(site.vars, SPACK_USER_CACHE_PATH=cache)
    results = []
    for label in ("fresh user cache", "same cache again"):
        output = os.path.join(work, "first.app")
        command = ["spack", "-e", site.env_dir, "appimage", "--entry", "ai-hello=ai-hello", "-o",
                   output, "-f"]
        lines, end = timed_lines(command, env)
        gap, after = longest_silence(lines, end)
        results.append((label, end, gap, after))
    print(f"{'run':<18} {'wall s':>7} {'longest silence s':>18}  after the line")
    for label, end, gap, after in results:
        print(f"{label:<18} {end:7.1f} {gap:18.1f}  {after[:70]}")
    print(f"fresh / warm wall time: {results[0][1] / results[1][1]:.2f} x")


if __name__ == "__main__":
    main()
