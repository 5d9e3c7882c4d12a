"""Launch cost of the store view (apprun/store.h): the same image with and without store
lines, side by side in one run. Run by hand (not a test), as root or as a user:

    python3 bench/store_view.py [--repeat 200] [--prefixes 10] [--user NAME]

The image runs a gcc-built `true` through the project's AppRun and runtime (its FUSE
mount joined, as users launch it). Root's view is a mount namespace; `--user NAME`
launches the images as that user (`setpriv`, on both sides), whose view is a user and
mount namespace. Its store lines name `--prefixes` prefixes in a store
that does not exist, so every launch that makes the view lays a tmpfs over the store's
parent and makes the prefixes' directories in it, as on a node without the store.

Configurations, each as pairs (which goes first alternates) reported as the median ms of
each side, their difference and the median of the pairs' ratios (pairing keeps the ratio
meaningful while the machine's load drifts):

* one launch, alone: nothing else of the image runs, so the launch makes the namespace
  (a holder process, the user namespace, the mounts) and the holder leaves after it;
* one launch, joining: another launch of the image keeps running, so the launch joins
  its namespace (two setns calls), as the ranks of a job after the first do;
* 64 at once: 64 simultaneous launches until all have exited, the first making the
  namespace and the others joining it.

Target (issue 21): within a few milliseconds of a start without the view.
"""

import argparse
import os
import shutil
import subprocess

import launch  # noqa: F401  (sets up Spack and the extension)
import scratch
from spack.extensions.appimage import apprun


def image_with(work, name, store_lines):
    """An image running a gcc-built `true` (and `sleep` for the resident launch)."""
    appdir = os.path.join(work, name)
    os.makedirs(os.path.join(appdir, "bin"))
    src = os.path.join(work, "true.c")
    with open(src, "w") as f:
        f.write("#include <unistd.h>\nint main(int c, char **v) { if (c > 1) pause(); "
                "return 0; }\n")
    subprocess.run(["gcc", "-O2", "-o", os.path.join(appdir, "bin", "true"), src], check=True)
    for line in store_lines:
        if line[0] == "store":
            os.makedirs(os.path.join(appdir, line[2], "share"))
    apprun.write_table(appdir, [apprun.EntryPoint("true", "bin/true")], None, ["bin"],
                       store=store_lines)
    shutil.copy(apprun.build(), os.path.join(appdir, "AppRun"))
    return launch.image_of(appdir, os.path.join(work, f"{name}.app"))


def pairs(commands, env, n, repeat):
    """(times without, times with) of n simultaneous launches, interleaved."""
    times = ([], [])
    for i in range(repeat):
        for side in (i % 2, 1 - i % 2):
            times[side].append(launch.wall(commands[side], env, n))
    return times


def as_user(name):
    """The command prefix that runs as user ``name`` (nothing for None)."""
    if name is None:
        return []
    import pwd

    entry = pwd.getpwnam(name)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]


def measure(repeat, prefixes, user):
    with scratch.directory("bench-store-view-") as work:
        os.chmod(work, 0o755)
        root = os.path.join(work, "store")
        lines = [("store-root", root)] + [
            ("store", os.path.join(root, "linux-x86_64", f"pkg{i}-1.0-{i:07d}"), f"opt/pkg{i}")
            for i in range(prefixes)]
        images = [image_with(work, "plain", []), image_with(work, "view", lines)]
        subprocess.run(["chmod", "-R", "a+rX", work], check=True)
        env = dict(os.environ, APPIMAGE_IDLE_MS="600000")  # one server each, kept
        commands = [as_user(user) + [image] for image in images]
        for command in commands:
            subprocess.run(command, env=env, check=True)
        results = {"one launch, alone": pairs(commands, env, 1, repeat)}
        resident = [subprocess.Popen(command + ["wait"], env=env) for command in commands]
        try:
            results["one launch, joining"] = pairs(commands, env, 1, repeat)
        finally:
            for process in resident:
                process.kill()
                process.wait()
        results["64 at once"] = pairs(commands, env, 64, max(repeat // 10, 5))
        return {config: launch.paired_summary(without, with_)
                for config, (without, with_) in results.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--prefixes", type=int, default=10)
    parser.add_argument("--user", help="launch the images as this user")
    args = parser.parse_args()
    print(f"{'configuration':22} {'no view ms':>11} {'view ms':>9} {'difference ms':>14} "
          f"{'ratio':>6}")
    for config, (without, with_view, ratio) in measure(args.repeat, args.prefixes,
                                                      args.user).items():
        print(f"{config:22} {without:>11.3f} {with_view:>9.3f} {with_view - without:>14.3f} "
              f"{ratio:>6.3f}")


if __name__ == "__main__":
    main()
