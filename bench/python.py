"""An interpreted stack: building an image of a Spack-built CPython, and an import-heavy
start from it against the same start from the store. Run by hand (not a test):

    python3 bench/python.py [--repeat 7] [--site DIR]

Uses the offline site the tests build (tests/conftest.py, ``offline_site``: CPython
3.11.2 with py-six, py-markupsafe and py-wheel); run the tests once first.

Build: wall time of each pipeline stage (``spack -v``), everything but mksquashfs as a
ratio to mksquashfs, and the peak RSS of the ``spack appimage`` process. Start: one, and
16 simultaneous, runs of a script importing a few dozen modules (standard library, C
modules, the extensions), from the store and from the image (FUSE, with the mount kept
warm by a long ``APPIMAGE_IDLE_MS``), interleaved in one run, medians and ratios.
Targets (issue: interpreted stacks): image <= 25 MB; build without mksquashfs <= 0.5 x
mksquashfs, peak RSS <= 200 MB; one warm start <= 1.3 x native, 16 <= 2 x native.
"""

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time

import scratch

CACHE = os.environ.get("SPACK_APPIMAGE_TEST_CACHE") or os.path.expanduser(
    "~/.cache/spack-appimage-tests")

IMPORTS = ("import argparse, asyncio, base64, csv, dataclasses, datetime, decimal, "
           "email.parser, fractions, gzip, hashlib, http.client, json, logging, lzma, "
           "pathlib, pickle, random, shutil, socket, statistics, subprocess, tarfile, "
           "textwrap, typing, unittest, urllib.request, uuid, xml.dom.minidom, zipfile, "
           "six, markupsafe")


def spack(site, *args):
    env = dict(os.environ, SPACK_USER_CONFIG_PATH=os.path.join(site, "config"),
               SPACK_USER_CACHE_PATH=os.path.join(site, "cache"))
    return subprocess.run(["spack", "-v", "-e", os.path.join(site, "envs", "py"), *args],
                          env=env, capture_output=True, text=True, check=True)


def build(site, output):
    """(stage seconds, wall seconds, peak RSS in MiB) of one image build."""
    start = time.perf_counter()
    run = spack(site, "appimage", "--entry", "python3", "-o", output, "-f")
    wall = time.perf_counter() - start
    line = re.search(r"seconds per stage: (.*)", run.stdout + run.stderr).group(1)
    stages = {name: float(s) for name, s in (item.split() for item in line.split(", "))}
    return stages, wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def store_python(site):
    """The store's python3 and the PYTHONPATH that `spack load` gives its extensions."""
    def prefix(name):
        return spack(site, "location", "-i", name).stdout.strip()

    path = [os.path.join(prefix(name), "lib", "python3.11", "site-packages")
            for name in ("py-six", "py-markupsafe")]
    return os.path.join(prefix("python"), "bin", "python3"), os.pathsep.join(path)


def wall(command, env, n):
    start = time.perf_counter()
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL) for _ in range(n)]
    codes = [p.wait() for p in procs]
    assert codes == [0] * n, codes
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--site", default=os.path.join(CACHE, "offline-site"))
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(args.site, "envs", "py")):
        sys.exit(f"no offline site at {args.site}: run `python3 -m pytest "
                 "tests/test_interpreters.py` once to build it")
    with scratch.directory("bench-python-") as work:
        image = os.path.join(work, "py.app")
        builds = [build(args.site, image) for _ in range(3)]
        stages = {k: statistics.median(b[0][k] for b in builds) for k in builds[0][0]}
        squash = stages.pop("squashfs")
        rest = sum(stages.values())
        print(f"image: {os.path.getsize(image) / 1e6:.1f} MB (zstd)")
        print("build, median of 3: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
              + f"; mksquashfs {squash:.2f} s")
        print(f"  everything but mksquashfs: {rest:.2f} s = {rest / squash:.2f} x mksquashfs;"
              f" wall {statistics.median(b[1] for b in builds):.2f} s; peak RSS "
              f"{max(b[2] for b in builds):.0f} MiB")

        base = dict(os.environ, TMPDIR=work)
        python, pythonpath = store_python(args.site)
        configs = {
            "store": ([python, "-c", IMPORTS], dict(base, PYTHONPATH=pythonpath)),
            "image, FUSE, warm": ([image, "-c", IMPORTS], dict(base, APPIMAGE_IDLE_MS="600000")),
        }
        for command, env in configs.values():  # warm the page cache and the mount
            wall(command, env, 1)
        results = {(name, n): [] for name in configs for n in (1, 16)}
        for _ in range(args.repeat):
            for n in (1, 16):
                for name, (command, env) in configs.items():
                    results[(name, n)].append(wall(command, env, n))
        print(f"{'import-heavy start':22} {'n':>3} {'median ms':>10} {'x store':>8}")
        for n in (1, 16):
            native = statistics.median(results[("store", n)])
            for name in configs:
                ms = statistics.median(results[(name, n)])
                print(f"{name:22} {n:>3} {ms * 1000:>10.1f} {ms / native:>8.2f}")

if __name__ == "__main__":
    main()
