"""Launch cost of an image: native exec vs .app with FUSE vs .app extracted, at 1, 8 and
64 simultaneous launches. Run by hand (not a test):

    python3 bench/launch.py [--repeat 7]

Every configuration is measured in the same run, interleaved (one repetition of each in
turn), and reported as the median of the repetitions and as a difference or ratio to
native. Targets (issue: the runtime): FUSE launch <= native + 10 ms; warm-extract launch
<= native + 3 ms; 64 simultaneous launches <= 3 x the wall time of one.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Spack in this process, with user config and cache of the benchmarks' own.
_SCRATCH = os.path.join(tempfile.gettempdir(), "spack-appimage-bench-spack")
os.environ.setdefault("SPACK_USER_CONFIG_PATH", os.path.join(_SCRATCH, "config"))
os.environ.setdefault("SPACK_USER_CACHE_PATH", os.path.join(_SCRATCH, "cache"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.realpath(shutil.which("spack") or sys.exit("spack is not on PATH")))), "lib", "spack"))
import spack.extensions  # noqa: E402
import spack.main  # noqa: E402,F401

spack.extensions.ensure_extension_loaded("appimage", path=os.path.join(ROOT, "spack-appimage"))
from spack.extensions.appimage import assemble, runtime, squashfs  # noqa: E402

import scratch  # noqa: E402


def trivial_image(work, name):
    """A native `true` and an image running it; ``name`` makes the image's content (and
    so its ID and its shared mount) its own."""
    appdir = os.path.join(work, name)
    os.makedirs(appdir)
    with open(os.path.join(appdir, "name"), "w") as f:
        f.write(name)
    src = os.path.join(work, "true.c")
    with open(src, "w") as f:
        f.write("int main(void) { return 0; }\n")
    native = os.path.join(work, "native")
    subprocess.run(["gcc", "-O2", "-o", native, src], check=True)
    shutil.copy(native, os.path.join(appdir, "AppRun"))
    return native, image_of(appdir, os.path.join(work, f"{name}.app"))


def image_of(appdir, image):
    """``image`` made of ``appdir`` with the project's runtime, as the pipeline's last
    stages make it."""
    rt = runtime.build()
    with assemble.output_file(image, force=True) as partial:
        squashfs.make(squashfs.find_mksquashfs([]), appdir, partial,
                      offset=os.path.getsize(rt), compression="zstd", jobs=None, progress=False)
        assemble.write_runtime(rt, partial)
        assemble.stamp_image_id(partial, rt, runtime.ID_SECTION, 1 << 20)
    return image


def wall(command, env, n):
    """Seconds until n simultaneous runs of command have all exited."""
    start = time.perf_counter()
    procs = [subprocess.Popen(command, env=env) for _ in range(n)]
    codes = [p.wait() for p in procs]
    elapsed = time.perf_counter() - start
    assert codes == [0] * n, codes
    return elapsed


def paired_summary(without, with_):
    """(median ms without, median ms with, median of the pairs' ratios with/without) of
    two lists of seconds measured in pairs: pairing keeps the ratio meaningful while the
    machine's load drifts."""
    return (statistics.median(without) * 1000, statistics.median(with_) * 1000,
            statistics.median(w / wo for w, wo in zip(with_, without)))


def measure(repeat):
    """{configuration: {simultaneous launches: median ms}}, all measured interleaved."""
    with scratch.directory("bench-launch-") as work:
        native, image = trivial_image(work, "joined")
        _, fresh = trivial_image(work, "fresh")
        base = dict(os.environ)
        configs = {
            "native": ([native], base),
            "fuse, new mount": ([fresh], dict(base, APPIMAGE_IDLE_MS="0")),
            "fuse, joined mount": ([image], base),
            "extract, warm cache": ([image], dict(base, APPIMAGE_EXTRACT_AND_RUN="1",
                                                 NO_CLEANUP="1")),
        }
        wall(*configs["extract, warm cache"], 1)  # builds the extraction cache
        # The first launch starts a server that a long idle time keeps for the others.
        subprocess.run([image], env=dict(base, APPIMAGE_IDLE_MS="600000"), check=True)
        results = {(name, n): [] for name in configs for n in (1, 8, 64)}
        for _ in range(repeat):
            for n in (1, 8, 64):
                for name, (command, env) in configs.items():
                    if name == "fuse, new mount":
                        time.sleep(0.1)  # let the previous mount go
                    results[(name, n)].append(wall(command, env, n))
        return {name: {n: statistics.median(results[(name, n)]) * 1000 for n in (1, 8, 64)}
                for name in configs}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    results = measure(parser.parse_args().repeat)
    print(f"{'configuration':22} {'n':>3} {'median ms':>10} {'- native ms':>12} "
          f"{'x native':>9} {'x one':>7}")
    for name, by_n in results.items():
        for n, ms in by_n.items():
            native_ms = results["native"][n]
            print(f"{name:22} {n:>3} {ms:>10.2f} {ms - native_ms:>12.2f} "
                  f"{ms / native_ms:>9.2f} {ms / by_n[1]:>7.2f}")


if __name__ == "__main__":
    main()
