"""Launch cost of AppRun's CPU check (apprun/cpu.c): the same program with and without cpu
lines in its entry table, side by side in one run. Run by hand (not a test):

    python3 bench/cpu_check.py [--repeat 300] [--control]

Two pairs, each launched in turn (which goes first alternates), reported as the median ms
of one launch of each, their difference, and the median of the pairs' ratios with/without
(pairing keeps the ratio meaningful while the machine's load drifts): AppRun run directly
from its AppDir, where nothing else hides the check (the table's flags looked up and
answered by the CPU, apprun/cpuid.c: on x86_64 no file is read), and the image through
its joined FUSE mount, as users launch it. The cpu lines are the host's own target (so the
whole check runs and passes) and the family's generic levels. Target (issue 20): the
check costs no measurable launch time. --control gives both images no cpu lines: its
ratios are the run-to-run noise the others compare with.
"""

import argparse
import os
import shutil
import subprocess

import launch  # noqa: F401  (sets up Spack and the extension)
import scratch
from spack.extensions.appimage import apprun, cpu
from spack.extensions.appimage.compat import archspec_cpu


def cpu_lines():
    """The table lines of an image built for this host's own target."""
    host = archspec_cpu.host()
    return [("cpu", host.name, "bench@1", " ".join(cpu.kernel_flags(host)))] + [
        ("cpu-level", t.name, " ".join(cpu.kernel_flags(t)))
        for t in cpu.generic_levels(host.family)]


def appdir_with(work, name, lines):
    """An AppDir running a gcc-built `true` through the project's AppRun."""
    appdir = os.path.join(work, name)
    os.makedirs(os.path.join(appdir, "bin"))
    src = os.path.join(work, "true.c")
    with open(src, "w") as f:
        f.write("int main(void) { return 0; }\n")
    subprocess.run(["gcc", "-O2", "-o", os.path.join(appdir, "bin", "true"), src], check=True)
    apprun.write_table(appdir, [apprun.EntryPoint("true", "bin/true")], None, ["bin"],
                       cpu=lines)
    shutil.copy(apprun.build(), os.path.join(appdir, "AppRun"))
    return appdir


def measure(repeat, control):
    """{configuration: (median ms without cpu lines, median ms with, median ratio)};
    with `control`, "with" has no cpu lines either."""
    with scratch.directory("bench-cpu-check-") as work:
        base = dict(os.environ)
        base.pop("APPIMAGE_IGNORE_CPU", None)
        pairs = {}
        for name, lines in (("without", []), ("with", [] if control else cpu_lines())):
            appdir = appdir_with(work, name, lines)
            image = launch.image_of(appdir, os.path.join(work, f"{name}.app"))
            # The first launch starts a server that a long idle time keeps for the others.
            subprocess.run([image], env=dict(base, APPIMAGE_IDLE_MS="600000"), check=True)
            pairs.setdefault("AppRun directly", []).append(os.path.join(appdir, "AppRun"))
            pairs.setdefault("image, joined mount", []).append(image)
        times = {config: ([], []) for config in pairs}
        for n in range(repeat):
            for config, commands in pairs.items():
                for i in (n % 2, 1 - n % 2):
                    times[config][i].append(launch.wall([commands[i]], base, 1))
        return {config: launch.paired_summary(without, with_)
                for config, (without, with_) in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1000)
    parser.add_argument("--control", action="store_true",
                        help="no cpu lines in either image: the ratio's run-to-run noise")
    args = parser.parse_args()
    results = measure(args.repeat, args.control)
    print(f"{'configuration':22} {'no cpu lines ms':>16} {'cpu lines ms':>13} "
          f"{'difference ms':>14} {'ratio':>6}")
    for config, (without, with_lines, ratio) in results.items():
        print(f"{config:22} {without:>16.3f} {with_lines:>13.3f} "
              f"{with_lines - without:>14.3f} {ratio:>6.3f}")


if __name__ == "__main__":
    main()
