"""The runtime on a node shared with other users, run as an ordinary user through the
setuid fusermount3 (conftest's ``ordinary_user``), with a second real user
(``other_user``) who plants, squats and races:

* nothing another user plants runs as the user: not a tree swapped in for the per-user
  directory (a real attacker program exchanging it with a symlink in a loop), not a
  ``<image>.home`` of theirs or a symlink of theirs to a directory of the user's, not a
  directory of theirs that ``unshare -r`` shows with the same overflow uid as root's;
* names another user took (or other uid-0 users of rootless namespaces) never stop a
  launch: the runtime uses a private directory of its own, the same at every launch
  even where the directory cannot be listed;
* cleanup holds a bounded number of descriptors, and a permanent error is not retried;
* an extraction that cannot go into a directory (too little room counted in blocks,
  read-only, paths too long, a write that fails) leaves nothing there, and the next
  directory is tried; every message names the real cause.
"""

import os
import shutil
import signal
import subprocess
import tempfile

import pytest
from conftest import PROBE_APPRUN, OrdinaryUser, cc, make_image, wait_for_line, wait_no_server

#: What this module tests is the runtime's own (C, FUSE, the kernel): it does not change
#: with Spack's version, so the matrix runs it with the first Spack only (README, Tests).
pytestmark = pytest.mark.one_spack

#: Where the runtime makes its per-user directories (TMPDIR is the test's own or unset).
SYSTEM_DIRS = ("/tmp", "/var/tmp", "/dev/shm")

EXTRACT = {"APPIMAGE_EXTRACT_AND_RUN": "1"}

#: Exchanges two names in a loop (renameat2 RENAME_EXCHANGE) until SIGTERM, then prints
#: how many exchanges the kernel allowed.
SWAPPER = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }
int main(int argc, char **argv) {
    unsigned long swaps = 0, refused = 0;
    if (argc != 3) return 2;
    signal(SIGTERM, on_term);
    printf("ready\n");
    fflush(stdout);
    while (!stop)
        if (renameat2(AT_FDCWD, argv[1], AT_FDCWD, argv[2], RENAME_EXCHANGE) == 0) swaps++;
        else refused++;
    printf("swaps %lu refused %lu\n", swaps, refused);
    return 0;
}
"""


def fields(stdout):
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


#: Directories made by shared_dir, removed by the autouse fixture remove_shared_dirs.
MADE = []


def shared_dir(mode):
    """A directory of root's that every user can reach, with ``mode``."""
    path = tempfile.mkdtemp(prefix="shared-node-")
    os.chmod(path, mode)
    MADE.append(path)
    return path


@pytest.fixture(autouse=True)
def remove_shared_dirs():
    yield
    while MADE:
        shutil.rmtree(MADE.pop(), ignore_errors=True)  # what a test removed already


def image_id(image):
    doctor = subprocess.run([image, "--appimage-doctor"], capture_output=True, text=True)
    return doctor.stdout.split("image id: ")[1].split()[0]


def private_dirs(uids):
    """The runtime's per-user directories of ``uids`` in the system's directories."""
    return [os.path.join(d, name) for d in SYSTEM_DIRS for name in os.listdir(d)
            if name.startswith("spack-appimage-")
            and os.lstat(os.path.join(d, name)).st_uid in uids]


@pytest.fixture
def fresh(ordinary_user, other_user, probe_image):
    """No per-user directory of the test users before and after the test (their mounts
    gone first), so each test sees a node where they never ran."""
    users = (ordinary_user.uid, other_user.uid)

    def clear():
        # The server removes its mount directory after unmounting, then exits.
        assert ordinary_user.wait_unmounted(probe_image) and wait_no_server(probe_image)
        for path in private_dirs(users):
            if os.path.islink(path) or not os.path.isdir(path):
                os.unlink(path)
            else:
                shutil.rmtree(path)

    clear()
    yield
    clear()


@pytest.fixture(scope="module")
def many_files_image(our_runtime):
    """The probe with 400 small files (about 60 KiB of data, 1.6 MiB of 4 KiB blocks) and
    a file with a 200-character name."""
    work = tempfile.mkdtemp(prefix="shared-node-image-")
    os.chmod(work, 0o755)
    appdir = os.path.join(work, "AppDir")
    data = os.path.join(appdir, "data")
    os.makedirs(data)
    cc(os.path.join(appdir, "AppRun"), PROBE_APPRUN)
    os.remove(os.path.join(appdir, "AppRun.c"))
    for i in range(400):
        with open(os.path.join(data, f"f{i}"), "w") as f:
            f.write(f"{i}\n" * 40)
    with open(os.path.join(data, "n" * 200), "w") as f:
        f.write("long\n")
    yield make_image(our_runtime, appdir, os.path.join(work, "many.app"))
    shutil.rmtree(work)


@pytest.fixture
def small_fs(ordinary_user):
    """small_fs(options) -> a tmpfs (mode 1777) mounted with ``options`` inside the users'
    mount namespace, where their commands see it; unmounted after the test."""
    points = []

    def nsenter(*argv):
        subprocess.run(["nsenter", "-t", str(ordinary_user.namespace.pid), "-m", "--", *argv],
                       check=True)

    def mount(options):
        point = shared_dir(0o755)
        nsenter("mount", "-t", "tmpfs", "-o", f"mode=1777,{options}", "tmpfs", point)
        points.append(point)
        return point

    mount.remount = lambda point, options: nsenter("mount", "-o", f"remount,{options}", point)
    yield mount
    for point in points:
        nsenter("umount", point)
        os.rmdir(point)


def listing(user, directory):
    """What ``user`` sees in ``directory`` (inside the namespace), recursively."""
    found = user.run(["find", directory, "-mindepth", "1"])
    assert found.returncode == 0, found.stderr
    return found.stdout.split()


# ------------------------------------------------------ another user's code as you


def test_a_swapped_private_directory_runs_nothing_of_the_attacker(
        probe_image, ordinary_user, other_user, fresh):
    """A TMPDIR others can write without the sticky bit (a group scratch directory): the
    attacker exchanges the victim's per-user directory with a symlink to a tree of
    theirs in a loop, while the victim launches 200 times in extract mode and 20 times
    in mount mode. The runtime used to check the directory once and then look it up
    again by name (the attacker's AppRun ran 23 times in 200); now such a directory is
    never used: no path in it can be trusted to stay the victim's."""
    scratch = shared_dir(0o777)
    marks = os.path.join(scratch, "marks")
    os.mkdir(marks)
    os.chmod(marks, 0o777)
    victim = os.path.join(scratch, f"spack-appimage-{ordinary_user.uid}")
    assert ordinary_user.run(["mkdir", "-m", "700", victim]).returncode == 0
    # The attacker's tree: what the victim's runtime would take for its cached copy.
    root = os.path.join(scratch, "tree", image_id(probe_image), "root")
    os.makedirs(root)
    with open(os.path.join(root, "AppRun"), "w") as f:
        f.write(f'#!/bin/sh\ntouch "{marks}/ran-as-$(id -u)-$$"\n')
    os.chmod(os.path.join(root, "AppRun"), 0o755)
    os.symlink(os.path.join(scratch, "tree"), os.path.join(scratch, "evil"))
    subprocess.run(["chown", "-R", "-h", f"{other_user.uid}:{other_user.gid}",
                    os.path.join(scratch, "tree"), os.path.join(scratch, "evil")], check=True)
    subprocess.run(["chmod", "-R", "a+rwX", os.path.join(scratch, "tree")], check=True)
    doctor = ordinary_user.run([probe_image, "--appimage-doctor"], env={"TMPDIR": scratch})
    assert (f"directory {scratch}: exec allowed" in doctor.stdout and "NOT safe: other users "
            f"can rename entries in {scratch} (writable by others, not sticky)" in doctor.stdout)
    swapper = cc(os.path.join(scratch, "swapper"), SWAPPER)
    attacker = other_user.popen([swapper, victim, os.path.join(scratch, "evil")],
                                stdout=subprocess.PIPE, text=True)
    try:
        wait_for_line(attacker, "ready")
        launches = [EXTRACT] * 200 + [{}] * 20
        for env in launches:
            result = ordinary_user.run([probe_image, "exit", "0"], env=dict(env, TMPDIR=scratch))
            assert result.returncode == 0 and "argv:" in result.stdout, result.stderr
            assert not fields(result.stdout)["APPDIR"].startswith(scratch)
    finally:
        attacker.send_signal(signal.SIGTERM)
        report = attacker.communicate(timeout=30)[0]
    swaps = int(report.split()[1])
    assert swaps > 0, report  # the race was on all along
    assert os.listdir(marks) == []


def test_a_home_planted_by_another_user_is_not_used(probe_image, ordinary_user, other_user,
                                                    fresh):
    """An image copied into a sticky shared directory next to a ``.home`` and a
    ``.config`` another user made: neither becomes HOME or XDG_CONFIG_HOME (they would
    run that user's startup files, such as Python's usercustomize.py, as this user);
    one line says why. The user's own, closed to others, is used; opened to others, not."""
    shared = shared_dir(0o1777)
    image = os.path.join(shared, "t.app")
    assert ordinary_user.run(["cp", probe_image, image]).returncode == 0
    for suffix in ("home", "config"):
        assert other_user.run(["mkdir", "-m", "777", f"{image}.{suffix}"]).returncode == 0
    result = ordinary_user.run([image, "exit", "0"], env=EXTRACT)
    assert result.returncode == 0, result.stderr
    assert fields(result.stdout)["HOME"] == ordinary_user.home
    owner = f"owned by uid {other_user.uid}, not by you"
    assert f"t.app: not using {image}.home as $HOME: {owner}\n" in result.stderr
    assert f"t.app: not using {image}.config as $XDG_CONFIG_HOME: {owner}\n" in result.stderr
    made = ordinary_user.run([image, "--appimage-portable-home"])
    assert f"Error: {image}.home exists and cannot be used: {owner}\n" == made.stderr
    for suffix in ("home", "config"):
        os.rmdir(f"{image}.{suffix}")

    made = ordinary_user.run([image, "--appimage-portable-home"])
    assert f"Portable home directory created at {image}.home" in made.stderr
    result = ordinary_user.run([image, "exit", "0"], env=EXTRACT)
    assert fields(result.stdout)["HOME"] == f"{image}.home", result.stderr
    os.chmod(f"{image}.home", 0o777)  # as the user could by mistake: anyone may plant
    result = ordinary_user.run([image, "exit", "0"], env=EXTRACT)
    assert fields(result.stdout)["HOME"] == ordinary_user.home
    assert (f"t.app: not using {image}.home as $HOME: writable by others (mode 0777): run "
            f"chmod go-w {image}.home\n") in result.stderr


def test_a_group_writable_home_says_how_to_fix_it(probe_image, ordinary_user, fresh):
    """With user-private groups and umask 002 the user's own directories are 0775. Such
    a ``.home`` is refused (the runtime cannot know that nobody else is in the group),
    and the one line says why and the one command that makes it usable."""
    shared = shared_dir(0o1777)
    image = os.path.join(shared, "t.app")
    assert ordinary_user.run(["cp", probe_image, image]).returncode == 0
    made = ordinary_user.run(["sh", "-c", 'umask 002 && mkdir "$0"', f"{image}.home"])
    assert made.returncode == 0, made.stderr
    result = ordinary_user.run([image, "exit", "0"], env=EXTRACT)
    assert fields(result.stdout)["HOME"] == ordinary_user.home
    assert (f"t.app: not using {image}.home as $HOME: writable by its group (mode 0775): run "
            f"chmod go-w {image}.home\n") in result.stderr
    assert ordinary_user.run(["chmod", "go-w", f"{image}.home"]).returncode == 0
    result = ordinary_user.run([image, "exit", "0"], env=EXTRACT)
    assert fields(result.stdout)["HOME"] == f"{image}.home", result.stderr


def test_a_home_symlink_planted_by_another_user_is_not_followed(probe_image, ordinary_user,
                                                                other_user, fresh):
    """In a sticky shared directory another user links ``t.app.home`` to a directory of
    the victim's own (closed to others): what it leads to passed every check, so the
    attacker chose the victim's HOME. The name itself is looked at now: a link is not a
    directory of the user's."""
    shared = shared_dir(0o1777)
    image = os.path.join(shared, "t.app")
    own = os.path.join(shared, "vdir")
    assert ordinary_user.run(["cp", probe_image, image]).returncode == 0
    assert ordinary_user.run(["mkdir", "-m", "700", own]).returncode == 0
    assert other_user.run(["ln", "-s", own, f"{image}.home"]).returncode == 0
    result = ordinary_user.run([image, "exit", "0"], env=EXTRACT)
    assert result.returncode == 0, result.stderr
    assert fields(result.stdout)["HOME"] == ordinary_user.home
    assert result.stderr == (f"t.app: not using {image}.home as $HOME: a symbolic link, not "
                             "a directory (use a real directory of yours)\n")


def test_a_script_apprun_runs_from_the_extracted_copy(our_runtime, ordinary_user, fresh):
    """AppRun runs through the copy's descriptor; a #! script, which the kernel cannot
    hand its interpreter that way, runs by the copy's path and sees itself there."""
    work = shared_dir(0o755)
    appdir = os.path.join(work, "AppDir")
    os.makedirs(appdir)
    with open(os.path.join(appdir, "AppRun"), "w") as f:
        f.write('#!/bin/sh\necho "script=$0"\necho "APPDIR=$APPDIR"\n')
    os.chmod(os.path.join(appdir, "AppRun"), 0o755)
    image = make_image(our_runtime, appdir, os.path.join(work, "script.app"))
    result = ordinary_user.run([image], env=EXTRACT)
    assert result.returncode == 0, result.stderr
    appdir = fields(result.stdout)["APPDIR"]
    assert appdir.startswith(f"/tmp/spack-appimage-{ordinary_user.uid}/")
    assert fields(result.stdout)["script"] == f"{appdir}/AppRun"


# ------------------------------------------------------------- denial of service


@pytest.mark.parametrize("mode", ["mount", "extract"])
def test_names_another_user_took_stop_nobody(probe_image, ordinary_user, other_user, fresh,
                                             mode):
    """Another user made /tmp/spack-appimage-<victim uid> (open to all), the same name in
    /var/tmp (a symlink to their own directory) and in /dev/shm (closed): the victim's
    launches used to fail with exit 127 in both modes. Now they use a private directory
    of their own beside it, shared by their launches (one mount), and put nothing into
    the squatter's."""
    name = f"spack-appimage-{ordinary_user.uid}"
    squatter = other_user.run(["sh", "-c", f"""
        mkdir -m 777 /tmp/{name} && mkdir -m 700 /dev/shm/{name} &&
        mkdir -m 777 /var/tmp/{name}.theirs && ln -s /var/tmp/{name}.theirs /var/tmp/{name}
    """])
    assert squatter.returncode == 0, squatter.stderr
    env = EXTRACT if mode == "extract" else {}
    first = ordinary_user.popen([probe_image, "wait"], env=env, stdout=subprocess.PIPE,
                                text=True)
    try:
        appdir = wait_for_line(first, "APPDIR=").strip().split("=", 1)[1]
        wait_for_line(first, "ready")
        second = ordinary_user.run([probe_image, "exit", "0"], env=env)
    finally:
        first.terminate()
        first.wait()
    assert second.returncode == 0, second.stderr
    assert fields(second.stdout)["APPDIR"] == appdir  # the same directory, the same mount
    assert appdir.startswith(f"/tmp/{name}.")
    base = appdir[:len(f"/tmp/{name}.") + 16]
    assert os.stat(base).st_uid == ordinary_user.uid and os.stat(base).st_mode & 0o777 == 0o700
    for squatted in (f"/tmp/{name}", f"/var/tmp/{name}.theirs"):
        assert os.listdir(squatted) == []


def test_names_taken_in_a_directory_nobody_can_list_are_reused(probe_image, ordinary_user,
                                                               other_user, fresh):
    """A sticky scratch directory of mode 1733 (others can neither list it nor rename
    what is not theirs) where another user took spack-appimage-<victim uid>: the runtime
    looked for a directory of its own by listing, could not, and made a new one at every
    launch, left there for good. Now the name beside the taken one is a keyed hash only
    the user can compute (its key in ~/.cache, 0600): every launch finds the same
    directory, and the user has one there."""
    scratch = shared_dir(0o1733)
    name = f"spack-appimage-{ordinary_user.uid}"
    assert other_user.run(["mkdir", "-m", "777", os.path.join(scratch, name)]).returncode == 0
    appdirs = set()
    for _ in range(3):
        result = ordinary_user.run([probe_image, "exit", "0"], env=dict(EXTRACT, TMPDIR=scratch))
        assert result.returncode == 0, result.stderr
        appdirs.add(fields(result.stdout)["APPDIR"])
    [appdir] = appdirs
    assert appdir.startswith(f"{scratch}/{name}.")
    ours = [entry for entry in os.listdir(scratch)
            if os.lstat(os.path.join(scratch, entry)).st_uid == ordinary_user.uid]
    assert ours == [appdir[len(scratch) + 1:].split("/")[0]]
    key = os.lstat(os.path.join(ordinary_user.home, ".cache", "spack-appimage", "secret"))
    assert key.st_uid == ordinary_user.uid and key.st_mode & 0o777 == 0o600
    assert key.st_size == 16


def test_inside_a_user_namespace_another_users_directory_is_not_trusted(
        probe_image, ordinary_user, other_user, fresh):
    """Inside ``unshare -r`` every other user's files show as the overflow uid, as the
    host root's do. A TMPDIR another user made in /tmp (mode 1777) was trusted as if it
    were root's: the victim extracted there, and the attacker could rename the victim's
    directory away and plant a tree of theirs under the same name while the app ran.
    Only the system's own directories (/, /tmp, /var/tmp, /dev/shm, ... by device and
    inode) are trusted there now: the launch skips it and uses /tmp."""
    made = other_user.run(["sh", "-c", 'd=$(mktemp -d /tmp/rev.XXXXXX) && chmod 755 "$d" && '
                           'mkdir -m 1777 "$d/bdir" && echo "$d"'])
    assert made.returncode == 0, made.stderr
    top = made.stdout.strip()
    MADE.append(top)
    bdir = os.path.join(top, "bdir")
    with open("/proc/sys/kernel/overflowuid") as f:
        overflow = int(f.read())
    why = (f"{os.path.basename(top)} in /tmp is another user's (uid {overflow}, a user "
           "outside this user namespace)")
    doctor = ordinary_user.run(["unshare", "-r", probe_image, "--appimage-doctor"],
                               env={"TMPDIR": bdir})
    assert f"directory {bdir}: " in doctor.stdout and f"NOT safe: {why}\n" in doctor.stdout
    for env in (EXTRACT, {}):
        result = ordinary_user.run(["unshare", "-r", probe_image, "exit", "0"],
                                   env=dict(env, TMPDIR=bdir, VERBOSE="1"))
        assert result.returncode == 0, result.stderr
        assert fields(result.stdout)["APPDIR"].startswith("/tmp/spack-appimage-0")
        assert f"skipping {bdir}: {why}\n" in result.stderr
        assert os.listdir(bdir) == []
    # The same rule for <image>.home: the victim's own, in the attacker's directory (whose
    # owner can rename anything in it, sticky or not), is not used.
    image = os.path.join(bdir, "t.app")
    assert ordinary_user.run(["cp", probe_image, image]).returncode == 0
    assert ordinary_user.run(["mkdir", "-m", "700", f"{image}.home"]).returncode == 0
    result = ordinary_user.run(["unshare", "-r", image, "exit", "0"], env=EXTRACT)
    assert result.returncode == 0, result.stderr
    assert fields(result.stdout)["HOME"] == ordinary_user.home
    assert f"t.app: not using {image}.home as $HOME: {why}\n" in result.stderr


def test_a_lock_that_cannot_be_made_is_not_retried(probe_image, ordinary_user, fresh):
    """The mount's directory holds a ``users`` that cannot be opened as a lock file (a
    directory: EISDIR, as EACCES or a full disk would be): the runtime tried 100 times
    before giving up. Only a directory removed meanwhile (by a server that unmounted)
    is worth another try: it gives up at once now, and says why (strace counts the
    attempts)."""
    ns = os.stat(f"/proc/{ordinary_user.namespace.pid}/ns/mnt").st_ino
    base = f"/tmp/spack-appimage-{ordinary_user.uid}"
    users = os.path.join(base, f"{image_id(probe_image)}-{ns}", "users")
    os.makedirs(users)
    for argv in (["chown", "-R", f"{ordinary_user.uid}:{ordinary_user.gid}"], ["chmod", "-R", "700"]):
        subprocess.run([*argv, base], check=True)
    trace = os.path.join(shared_dir(0o1777), "trace")
    result = ordinary_user.run(["strace", "-f", "-qq", "-e", "trace=openat", "-o", trace,
                                probe_image, "exit", "0"], env={"VERBOSE": "1"})
    assert f"cannot create locks in {os.path.dirname(users)}: Is a directory" in result.stderr
    with open(trace) as f:
        attempts = [line for line in f if '"users"' in line and "EISDIR" in line]
    assert len(attempts) == 1, attempts


@pytest.fixture(scope="module")
def crowd(ordinary_user, other_user):
    """Four real users."""
    more = [OrdinaryUser(name, ordinary_user.namespace) for name in ("aithird", "aifourth")]
    return [ordinary_user, other_user, *more]


@pytest.mark.parametrize("mode", ["mount", "extract"])
def test_a_crowd_of_uid_0_namespaces_runs(probe_image, crowd, mode):
    """Rootless containers and `unshare -r`: every user is uid 0 and sees the others' files
    as the overflow uid. Each took one of /tmp, /var/tmp and /dev/shm's spack-appimage-0
    and the fourth was refused everywhere; now each has a directory of its own."""
    uids = {user.uid for user in crowd}
    before = set(private_dirs(uids))
    bases = set()
    try:
        for user in crowd:
            result = user.run(["unshare", "-r", probe_image, "exit", "0"],
                              env=EXTRACT if mode == "extract" else {})
            assert result.returncode == 0, (user.name, result.stderr)
            appdir = fields(result.stdout)["APPDIR"]
            assert appdir.startswith("/tmp/spack-appimage-0")  # the first place for each
            bases.add(appdir.split("/")[2])
        assert len(bases) == len(crowd)
    finally:
        for path in set(private_dirs(uids)) - before:
            shutil.rmtree(path)


# ------------------------------------------------------------------- extraction


def test_a_tmpdir_without_room_in_blocks_is_skipped(many_files_image, ordinary_user, fresh,
                                                    small_fs):
    """A tmpfs of 1 MiB holds the image's 60 KiB of bytes but not its 1.6 MiB of blocks:
    the runtime used to start, fail half-way with a stale errno, and stop. Now it counts
    blocks, says so (VERBOSE), leaves nothing there and extracts in /tmp."""
    point = small_fs("size=1m")
    doctor = ordinary_user.run([many_files_image, "--appimage-doctor"])
    assert "extraction needs: 1.6 MiB (4 KiB blocks), 404 inodes\n" in doctor.stdout
    result = ordinary_user.run([many_files_image, "exit", "0"],
                               env=dict(EXTRACT, TMPDIR=point, VERBOSE="1"))
    assert result.returncode == 0, result.stderr
    assert fields(result.stdout)["APPDIR"].startswith(f"/tmp/spack-appimage-{ordinary_user.uid}/")
    assert f"skipping {point}: 1.6 MiB needed, 1.0 MiB free" in result.stderr
    assert listing(ordinary_user, point) == []


def test_a_write_that_fails_names_its_cause_and_leaves_nothing(many_files_image,
                                                               ordinary_user, fresh, small_fs):
    """Room enough, but a write fails (a file size limit, as a job's may be): each
    directory is tried, cleaned, and the one line names each one's real cause."""
    point = small_fs("size=16m")
    limited = ["sh", "-c", 'trap "" XFSZ; exec prlimit --fsize=8192 "$@"', "sh"]
    result = ordinary_user.run([*limited, many_files_image, "exit", "0"],
                               env=dict(EXTRACT, TMPDIR=point))
    assert result.returncode == 127, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("many.app: no directory allows extraction (")
    for directory in (point, "/tmp", "/var/tmp"):
        assert f"{directory}: cannot extract AppRun into " in line
    assert line.count(": File too large") == 4 and "mounted noexec" not in line
    assert listing(ordinary_user, point) == []
    assert private_dirs({ordinary_user.uid}) == []


def test_a_read_only_tmpdir_holding_the_private_directory_is_skipped(
        probe_image, ordinary_user, fresh, small_fs):
    point = small_fs("size=4m")
    first = ordinary_user.run([probe_image, "exit", "0"], env=dict(EXTRACT, TMPDIR=point))
    assert fields(first.stdout)["APPDIR"].startswith(point), first.stderr
    small_fs.remount(point, "ro")
    for env in (EXTRACT, {}):
        result = ordinary_user.run([probe_image, "exit", "0"],
                                   env=dict(env, TMPDIR=point, VERBOSE="1"))
        assert result.returncode == 0, result.stderr
        assert not fields(result.stdout)["APPDIR"].startswith(point)
        assert f"skipping {point}: mounted read-only" in result.stderr


def test_a_tmpdir_too_long_for_the_images_paths_leaves_nothing(many_files_image,
                                                               ordinary_user, fresh):
    """Room for the runtime's own directories, not for the image's 200-character name
    under them (the app could not open it): skipped before anything is made."""
    top = shared_dir(0o755)
    deep = top
    while len(deep) < 3900:
        deep = os.path.join(deep, "d" * min(200, 3900 - len(deep) - 1))
    os.makedirs(deep)
    os.chown(deep, ordinary_user.uid, ordinary_user.gid)
    result = ordinary_user.run([many_files_image, "exit", "0"],
                               env=dict(EXTRACT, TMPDIR=deep, VERBOSE="1"))
    assert result.returncode == 0, result.stderr
    assert not fields(result.stdout)["APPDIR"].startswith(top)
    assert f"skipping {deep}: path too long for the image's files" in result.stderr
    assert os.listdir(deep) == []


def test_a_deep_tree_left_by_the_app_is_removed_with_few_descriptors(our_runtime,
                                                                      ordinary_user, fresh):
    """The app made a tree 300 directories deep in its extracted copy, and the runtime
    runs with 32 descriptors (a job's limit): the removal held a descriptor per level,
    ran out (EMFILE) and left the copy half-removed. Now it holds one, whatever the
    depth, and nothing is left."""
    work = shared_dir(0o755)
    appdir = os.path.join(work, "AppDir")
    os.makedirs(appdir)
    with open(os.path.join(appdir, "AppRun"), "w") as f:
        f.write('#!/bin/sh\ncd "$APPDIR" && for i in $(seq 300); do mkdir d && cd d; done '
                '&& echo "deep=$(pwd | tr -cd / | wc -c)"\n')
    os.chmod(os.path.join(appdir, "AppRun"), 0o755)
    image = make_image(our_runtime, appdir, os.path.join(work, "deep.app"))
    result = ordinary_user.run(["prlimit", "--nofile=32", image], env=EXTRACT)
    assert result.returncode == 0, result.stderr
    assert int(fields(result.stdout)["deep"]) > 300
    assert ordinary_user.leftovers(image) == []


def extract_in(user, image, directory):
    """``image --appimage-extract`` run by ``user`` in ``directory`` as the namespace
    has it (a test file system is mounted there only)."""
    return user.run(["sh", "-c", 'cd "$0" && exec "$@"', directory, image,
                     "--appimage-extract"])


def test_extract_flag_says_why_it_cannot_write(many_files_image, ordinary_user, small_fs):
    closed = shared_dir(0o755)  # root's: the user cannot write it
    result = extract_in(ordinary_user, many_files_image, closed)
    assert result.returncode == 1
    assert result.stderr == (f"many.app: cannot create squashfs-root in {closed}: Permission "
                             "denied (run it in a directory you can write)\n")
    full = small_fs("size=1m")
    result = extract_in(ordinary_user, many_files_image, full)
    assert result.returncode == 1
    assert "into squashfs-root: No space left on device\n" in result.stderr
    assert listing(ordinary_user, full) == []  # nothing half-written
    small_fs.remount(full, "ro")
    result = extract_in(ordinary_user, many_files_image, full)
    assert result.returncode == 1 and "Read-only file system" in result.stderr
