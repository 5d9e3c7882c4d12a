"""Launch at scale: N = 1, 16 and 64 simultaneous starts of an import-heavy Python entry
and of a program that loads 500 libraries, warm and cold, from the store and from the
image. Run by hand (not a test):

    python3 bench/scale.py [--repeat 3] [--runtime OTHER_RUNTIME] [--no-cold]

Configurations, interleaved in one run (one repetition of each in turn):

* ``store``: the program run from its install prefix (Python with the PYTHONPATH that
  `spack load` gives its extensions);
* ``fuse, warm``: the image, joining a mount kept by a long ``APPIMAGE_IDLE_MS``;
* ``extract, warm``: the image, extracted once (``NO_CLEANUP``);
* ``other runtime``: with ``--runtime FILE``, the same squashfs behind that runtime (for
  a site to compare the official one), which mounts afresh at every start;
* cold (``--no-cold`` leaves it out; needs root): the page cache dropped before each burst
  (``/proc/sys/vm/drop_caches``), and the image mounted afresh (``APPIMAGE_IDLE_MS=0``).

Python comes from the offline site the tests build (run the tests once first); the
500-library program from the generated store of ``bench/tree.py``. Prints medians and
ratios to the store; writes ``bench/scale.json`` and ``bench/scale.png``.
Targets (issue: launch at scale): 16 and 64 warm starts of the Python entry <= 1.5 x the
store, cold <= 2 x, one warm start <= store + 10 ms.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import python as python_bench  # noqa: E402
import run as pipeline_bench  # noqa: E402  (imports Spack and the extension)
import scratch  # noqa: E402
import tree  # noqa: E402

COUNTS = (1, 16, 64)


def wall(command, env, n):
    start = time.perf_counter()
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL) for _ in range(n)]
    codes = [p.wait() for p in procs]
    assert codes == [0] * n, (command, codes)
    return time.perf_counter() - start


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def with_runtime(image, runtime_file, output):
    """The squashfs of ``image`` behind another runtime."""
    offset = int(subprocess.run([image, "--appimage-offset"], capture_output=True, text=True,
                                check=True).stdout)
    with open(output, "wb") as out, open(runtime_file, "rb") as rt, open(image, "rb") as im:
        out.write(rt.read())
        im.seek(offset)
        out.write(im.read())
    os.chmod(output, 0o755)
    return output


def programs(work, site):
    """{program: (native command, native environment, image, arguments)}."""
    python_image = os.path.join(work, "py.app")
    python_bench.spack(site, "appimage", "--entry", "python3", "-o", python_image, "-f")
    python, pythonpath = python_bench.store_python(site)
    store, apps = tree.generate(os.path.join(work, "tree"), 500, apps=(500,))
    pipeline_bench.pipeline(store, apps[500], work)
    libs_image = os.path.join(work, "libs.app")
    os.rename(os.path.join(work, "tree.app"), libs_image)
    return {
        "python, 31 modules": ([python, "-c", python_bench.IMPORTS],
                               dict(os.environ, PYTHONPATH=pythonpath), python_image,
                               ["-c", python_bench.IMPORTS]),
        "program, 500 libraries": ([apps[500]], dict(os.environ), libs_image, []),
    }


def measure(work, site, repeat, other_runtime, cold):
    base = dict(os.environ, TMPDIR=work)
    results = {}
    for name, (native, native_env, image, args) in programs(work, site).items():
        configs = {
            "store": (native, native_env, False),
            "fuse, warm": ([image, *args], dict(base, APPIMAGE_IDLE_MS="600000"), False),
            "extract, warm": ([image, *args], dict(base, APPIMAGE_EXTRACT_AND_RUN="1",
                                                   NO_CLEANUP="1"), False),
        }
        if other_runtime:
            other = with_runtime(image, other_runtime, image.replace(".app", "-other.app"))
            configs["other runtime"] = ([other, *args], base, False)
        if cold:
            configs["store, cold"] = (native, native_env, True)
            configs["fuse, cold"] = ([image, *args], dict(base, APPIMAGE_IDLE_MS="0"), True)
        samples = {(config, n): [] for config in configs for n in COUNTS}
        # Warm ones interleaved, then cold ones interleaved: a dropped cache would make
        # the warm configuration after it partly cold.
        for want_cold in (False, True):
            chosen = {c: v for c, v in configs.items() if v[2] == want_cold}
            for command, env, _ in chosen.values():
                wall(command, env, 1)  # the extraction, the kept mount, the page cache
            for _ in range(repeat):
                for n in COUNTS:
                    for config, (command, env, is_cold) in chosen.items():
                        if is_cold:
                            time.sleep(0.1)  # let a new mount's server go first
                            drop_caches()
                        samples[(config, n)].append(wall(command, env, n))
        results[name] = {config: {str(n): statistics.median(samples[(config, n)]) * 1000
                                  for n in COUNTS} for config in configs}
    return results


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4))
    for axis, (name, by_config) in zip(axes, results.items()):
        for config, by_n in by_config.items():
            axis.plot(COUNTS, [by_n[str(n)] for n in COUNTS], marker="o", label=config)
        axis.set(xscale="log", yscale="log", xlabel="simultaneous starts",
                 ylabel="wall time until all exited (ms)", title=name)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--site", default=os.path.join(python_bench.CACHE, "offline-site"))
    parser.add_argument("--runtime", help="another AppImage runtime file to compare")
    parser.add_argument("--no-cold", action="store_true", help="no cold starts")
    args = parser.parse_args()
    cold = not args.no_cold and os.access("/proc/sys/vm/drop_caches", os.W_OK)
    with scratch.directory("bench-scale-") as work:
        results = measure(work, args.site, args.repeat, args.runtime, cold)
    with open(os.path.join(HERE, "scale.json"), "w") as f:
        json.dump({"date": datetime.date.today().isoformat(),
                   "machine": f"{os.cpu_count()} cores", "ms": results}, f, indent=2)
    for name, by_config in results.items():
        print(f"== {name}: ms until all exited (x store, x store cold)")
        for config, by_n in by_config.items():
            reference = by_config["store, cold" if "cold" in config else "store"]
            print(f"   {config:16} " + "  ".join(
                f"{n:>3}: {by_n[str(n)]:8.1f} ({by_n[str(n)] / reference[str(n)]:4.2f})"
                for n in COUNTS))
    plot(results, os.path.join(HERE, "scale.png"))


if __name__ == "__main__":
    main()
