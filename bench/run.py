"""spack-appimage benchmarks: build cost, image size, launch cost and memory, side by side.

    python3 -m pip install -r bench/requirements.txt
    python3 bench/run.py [--repeat 5] [--work DIR]

Prints a table, writes bench/results.json and bench/launch.png. Needs Spack on PATH (set
up as in the README) and the tools of .ci/run. Every comparison is measured in this run,
interleaved where it compares configurations, as the median of --repeat repetitions.

1. Build: the pipeline stage by stage on a generated store of 2,000 gcc-built libraries
   with a deep DAG (bench/tree.py; the closure engine and the stages driven directly, no
   Spack needed), and the closure alone at 500 / 1,000 / 2,000 libraries. Targets:
   everything but mksquashfs <= 0.25 x mksquashfs; closure of 2,000 files <= 2 s, linear.
   Also one real `spack -v appimage` on the test environment, with Spack's start-up.
2. Size, on the test environment (tests/repo: a C program with three libraries, a C++
   program with gcc-runtime): our image vs a squashfs of every link/run prefix of the
   environment vs a flat libtree-style usr/bin + usr/lib bundle of the same files, same
   compression. Target: <= 0.5 x the whole environment. Then size and launch time per
   compression.
3. Launch: bench/launch.py (native vs FUSE vs extracted, 1 / 8 / 64 at once).
4. Memory: peak RSS of the pipeline on the generated store, and of the runtime's FUSE
   server through 64 simultaneous launches.
"""

import argparse
import datetime
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import launch  # noqa: E402  (imports Spack and the extension)
import tree  # noqa: E402

from spack.extensions.appimage import (  # noqa: E402
    build, closure, elf, entries, policy, relocate, runtime, squashfs,
)
from spack.extensions.appimage.layout import Layout  # noqa: E402

TEST_REPO = os.path.join(ROOT, "tests", "repo", "spack_repo", "appimage_test")


def pipeline(store, program, work, compression="zstd"):
    """The build's own stages (``build.plan_image``, ``build.write_image``) on the
    generated store, which holds no Spack specs; seconds per stage."""
    entry = entries.Entry(os.path.basename(program), None, program)
    options = build.Options(entries=[entry.name], output=os.path.join(work, "tree.app"),
                            compression=compression, force=True)
    progress = build.Progress(build.STAGES, checkpoint=lambda: None, quiet=True)
    result = build.plan_image([entry], [], Layout.of_prefixes(tree.prefixes(store)),
                              policy.DEFAULT_POLICY, options, progress, store_root=store)
    build.write_image(result, policy.DEFAULT_POLICY, options, progress, build.Tools(
        runtime.build(), squashfs.find_mksquashfs([]), relocate.find_patchelf()))
    return progress.timings, len(result.plan.files)


def median_of(runs):
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def build_benchmark(work, repeat):
    store, programs = tree.generate(os.path.join(work, "tree"), 2000)
    closure_seconds = {n: [] for n in programs}
    stage_runs = []
    for _ in range(repeat):
        for n, program in programs.items():
            start = time.perf_counter()
            closure.resolve([program], policy.DEFAULT_POLICY)
            closure_seconds[n].append(time.perf_counter() - start)
        seconds, files = pipeline(store, programs[2000], work)
        stage_runs.append(seconds)
    stages = median_of(stage_runs)
    others = sum(v for k, v in stages.items() if k != "squashfs")
    return {
        "closure_seconds": {n: statistics.median(v) for n, v in closure_seconds.items()},
        "stages_seconds": stages,
        "files_in_image": files,
        "non_mksquashfs_to_mksquashfs": others / stages["squashfs"],
    }


def pipeline_peak_rss_mb(work):
    """Peak RSS of the pipeline on the 2,000-library store, in a child process."""
    store, programs = tree.generate(os.path.join(work, "tree"), 2000)
    pid = os.fork()
    if pid == 0:
        try:
            pipeline(store, programs[2000], work)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


class Site:
    """The test packages installed into a store of the benchmark's own."""

    def __init__(self, work):
        self.root = os.path.join(work, "site")
        self.env_dir = os.path.join(self.root, "env")
        self.vars = dict(os.environ, SPACK_USER_CONFIG_PATH=os.path.join(self.root, "config"),
                         SPACK_USER_CACHE_PATH=os.path.join(self.root, "cache"))
        if os.path.exists(os.path.join(self.env_dir, "spack.lock")):
            return
        os.makedirs(os.path.join(self.root, "config"), exist_ok=True)
        os.makedirs(self.env_dir, exist_ok=True)
        with open(os.path.join(self.root, "config", "config.yaml"), "w") as f:
            f.write(f"config:\n  install_tree:\n    root: {self.root}/store\n"
                    f"  extensions:\n  - {ROOT}/spack-appimage\n")
        with open(os.path.join(self.root, "config", "repos.yaml"), "w") as f:
            f.write(f"repos:\n  appimage_test: {TEST_REPO}\n")
        with open(os.path.join(self.env_dir, "spack.yaml"), "w") as f:
            f.write("spack:\n  specs: [ai-hello, ai-cxx]\n  view: false\n")
        self.spack("install")

    def spack(self, *args):
        return subprocess.run(["spack", "-e", self.env_dir, *args], env=self.vars,
                              capture_output=True, text=True, check=True)

    def prefixes(self):
        """Install prefixes of the environment's link/run nodes (externals excepted)."""
        script = os.path.join(self.root, "prefixes.py")
        with open(script, "w") as f:
            f.write("import spack.deptypes as dt\nimport spack.environment as ev\n"
                    "import spack.traverse as t\n"
                    "roots = ev.active_environment().concrete_roots()\n"
                    "for s in t.traverse_nodes(roots, deptype=dt.LINK | dt.RUN, "
                    "key=t.by_dag_hash):\n    if not s.external:\n        print(s.prefix)\n")
        return self.spack("python", script).stdout.split()


def squashfs_bytes(directory, compression, work):
    out = os.path.join(work, "size.sqfs")
    if os.path.exists(out):
        os.remove(out)
    squashfs.make(squashfs.find_mksquashfs([]), directory, out, offset=0,
                  compression=compression, jobs=None, progress=False)
    return os.path.getsize(out)


def flat_bundle(appdir, work):
    """The same programs and libraries as libtree 2.x would deploy them: usr/bin, usr/lib."""
    flat = os.path.join(work, "flat")
    shutil.rmtree(flat, ignore_errors=True)
    for sub in ("usr/bin", "usr/lib"):
        os.makedirs(os.path.join(flat, sub))
    for root, _, names in os.walk(os.path.join(appdir, "opt")):
        for name in names:
            path = os.path.join(root, name)
            if os.path.islink(path) or elf.read_elf(path) is None:
                continue
            sub = "usr/bin" if os.path.basename(root) == "bin" else "usr/lib"
            shutil.copy(path, os.path.join(flat, sub, name))
    shutil.copy(os.path.join(appdir, "AppRun"), flat)
    return flat


def launch_once(image, entry, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([image, entry], stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def size_benchmark(work, repeat):
    site = Site(work)
    appdir, image = os.path.join(work, "appdir"), os.path.join(work, "test.app")
    shutil.rmtree(appdir, ignore_errors=True)
    start = time.perf_counter()
    verbose = site.spack("-v", "appimage", "--entry", "ai-hello=ai-hello", "--entry", "ai-cxx",
                         "-o", image, "--force", "--keep-appdir", appdir)
    wall = time.perf_counter() - start
    stages = dict(item.split() for item in
                  verbose.stdout.split("seconds per stage: ")[1].splitlines()[0].split(", "))
    stages = {k: float(v) for k, v in stages.items()}
    whole = os.path.join(work, "whole")
    shutil.rmtree(whole, ignore_errors=True)
    for prefix in site.prefixes():
        shutil.copytree(prefix, os.path.join(whole, os.path.basename(prefix)), symlinks=True)
    ours = os.path.getsize(image) - os.path.getsize(runtime.build())
    sizes = {"ours": ours, "whole_environment": squashfs_bytes(whole, "zstd", work),
             "flat_bundle": squashfs_bytes(flat_bundle(appdir, work), "zstd", work)}
    per_compression = {}
    for compression in ("gzip", "zstd", "xz", "lz4"):
        path = os.path.join(work, f"{compression}.app")
        site.spack("appimage", "--entry", "ai-hello=ai-hello", "--entry", "ai-cxx", "-o", path,
                   "--force", "--compression", compression)
        per_compression[compression] = {
            "bytes": os.path.getsize(path),
            "launch_ms": launch_once(path, "ai-cxx", repeat * 4) * 1000,
        }
    return {
        "spack_appimage_wall_seconds": wall,
        "spack_appimage_stages_seconds": stages,
        "spack_startup_and_entries_seconds": wall - sum(stages.values()),
        "bytes": sizes,
        "ours_to_whole_environment": ours / sizes["whole_environment"],
        "per_compression": per_compression,
    }


def fuse_server_peak_rss_mb(work):
    native, image = launch.trivial_image(tempfile.mkdtemp(dir=work), "rss")
    processes = [subprocess.Popen([image], env=dict(os.environ, APPIMAGE_IDLE_MS="3000"))
                 for _ in range(64)]
    [p.wait() for p in processes]
    servers = subprocess.run(["pgrep", "-f", "-x", image], capture_output=True,
                             text=True).stdout.split()
    peak = 0
    for pid in servers:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    launches = results["launch_ms"]
    for name, by_n in launches.items():
        counts = sorted(int(n) for n in by_n)
        left.plot(counts, [by_n[str(n)] for n in counts], marker="o", label=name)
    left.set(xscale="log", yscale="log", xlabel="simultaneous launches",
             ylabel="wall time until all exited (ms)", title="Launch")
    left.legend()
    closure_s = results["build"]["closure_seconds"]
    counts = sorted(int(n) for n in closure_s)
    right.plot(counts, [closure_s[str(n)] for n in counts], marker="o")
    right.set(xlabel="libraries in the closure", ylabel="seconds", title="Closure",
              ylim=(0, None))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "spack-appimage-bench"))
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    results = {"date": datetime.date.today().isoformat(), "machine": f"{os.cpu_count()} cores"}
    results["build"] = build_benchmark(args.work, args.repeat)
    results["memory_mb"] = {"pipeline_peak_rss": pipeline_peak_rss_mb(args.work),
                            "fuse_server_peak_rss_64_launches": fuse_server_peak_rss_mb(args.work)}
    results["size"] = size_benchmark(args.work, args.repeat)
    results["launch_ms"] = {name: {str(n): ms for n, ms in by_n.items()}
                            for name, by_n in launch.measure(args.repeat).items()}
    results = json.loads(json.dumps(results, default=str))
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot(results, os.path.join(HERE, "launch.png"))
    report(results)


def report(r):
    b, s = r["build"], r["size"]
    print(f"== build: generated store, app_2000 ({b['files_in_image']} files in the image)")
    for stage_name, seconds in b["stages_seconds"].items():
        print(f"   {stage_name:10} {seconds:8.3f} s")
    print(f"   everything but mksquashfs / mksquashfs = {b['non_mksquashfs_to_mksquashfs']:.2f}"
          "  (target <= 0.25)")
    print("   closure: " + ", ".join(f"{n} libs {t:.3f} s" for n, t in b["closure_seconds"].items())
          + "  (target: 2000 <= 2 s, linear)")
    print(f"== spack appimage on the test environment: {s['spack_appimage_wall_seconds']:.2f} s "
          f"wall, of which Spack start-up and entries {s['spack_startup_and_entries_seconds']:.2f} s")
    print("   " + ", ".join(f"{k} {v:.2f}" for k, v in s["spack_appimage_stages_seconds"].items()))
    print("== size (zstd): " + ", ".join(f"{k} {v:,} B" for k, v in s["bytes"].items())
          + f"; ours / whole environment = {s['ours_to_whole_environment']:.3f} (target <= 0.5)")
    for name, row in s["per_compression"].items():
        print(f"   {name:5} {row['bytes']:>10,} B   launch {row['launch_ms']:.2f} ms")
    print("== memory: " + ", ".join(f"{k} {v:.1f} MiB" for k, v in r["memory_mb"].items()))
    print("== launch (ms, wall until all exited)")
    for name, by_n in r["launch_ms"].items():
        print(f"   {name:22} " + "  ".join(f"{n:>3}: {ms:7.2f}" for n, ms in by_n.items()))


if __name__ == "__main__":
    main()
