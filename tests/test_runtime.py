"""The runtime, with real FUSE mounts and real processes.

Each image holds a small C AppRun that prints its arguments, environment and working
directory, and then, as asked by its first argument, exits with a code, kills itself
with a signal, or waits for SIGTERM.
"""

import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import (_gone, cc, mounts_of, server_of, wait_for_line, wait_no_server,
                      wait_nothing_left, wait_unmounted)
from elftools.elf.elffile import ELFFile

from spack.extensions.appimage import assemble

#: What this module tests is the runtime's own (C, FUSE, the kernel): it does not change
#: with Spack's version, so the matrix runs it with the first Spack only (README, Tests).
pytestmark = pytest.mark.one_spack

MODES = {"mount": {}, "extract": {"APPIMAGE_EXTRACT_AND_RUN": "1"}}


@pytest.fixture(scope="module")
def image(probe_image):
    return probe_image


def run(image, *args, mode="mount", env=None, **kwargs):
    environment = dict(os.environ, **MODES[mode], **(env or {}))
    return subprocess.run([image, *args], capture_output=True, text=True, env=environment,
                          **kwargs)


def fields(stdout):
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


def test_format(image, our_runtime, tmp_path):
    data = open(image, "rb").read()
    assert data[:4] == b"\x7fELF" and data[8:11] == assemble.MAGIC
    with open(our_runtime, "rb") as f:
        sections = {s.name: s["sh_size"] for s in ELFFile(f).iter_sections()}
    assert {n: sections[n] for n in (".digest_md5", ".upd_info", ".sha256_sig", ".sig_key")} == {
        ".digest_md5": 16, ".upd_info": 1024, ".sha256_sig": 1024, ".sig_key": 8192}
    offset = run(image, "--appimage-offset").stdout.strip()
    assert int(offset) == os.path.getsize(our_runtime) == assemble.elf_size(our_runtime)
    assert data[int(offset):int(offset) + 4] == b"hsqs"
    # Other tools open it too.
    subprocess.run(["unsquashfs", "-o", offset, "-d", str(tmp_path / "u"), image], check=True,
                   capture_output=True)
    assert (tmp_path / "u" / "data" / "x.txt").read_text() == "x\n"
    point = tmp_path / "m"
    point.mkdir()
    subprocess.run(["squashfuse", "-o", f"offset={offset}", image, str(point)], check=True)
    try:
        assert (point / "data" / "x.txt").read_text() == "x\n"
    finally:
        subprocess.run(["fusermount3", "-u", str(point)], check=True)


@pytest.mark.parametrize(
    "flag, stream, text",
    [
        ("--appimage-help", "stderr", "--appimage-extract [PATTERN]"),
        ("--appimage-version", "stderr", "AppImage runtime version: "),
        ("--appimage-updateinformation", "stdout", "\n"),
        ("--appimage-updateinfo", "stdout", "\n"),
        ("--appimage-signature", "stdout", "\n"),
        ("--appimage-doctor", "stdout", "/dev/fuse: usable"),
    ],
)
def test_flags(image, flag, stream, text):
    result = run(image, flag)
    assert result.returncode == 0
    if text == "\n":  # an empty section prints as an empty line, nothing else
        assert getattr(result, stream) == text
    else:
        assert text in getattr(result, stream)


def test_unknown_appimage_flag_exits_1(image):
    result = run(image, "--appimage-frobnicate")
    assert result.returncode == 1
    assert "--appimage-frobnicate is not yet implemented" in result.stderr


def test_extract_with_and_without_pattern(image, tmp_path):
    """Each says what it wrote in one line on stderr (APPIMAGE_QUIET drops it)."""
    some = run(image, "--appimage-extract", "data/*", cwd=tmp_path)
    assert (some.returncode, some.stdout, some.stderr) == (0, "", (
        f"t.app: extracted 1 file, 0 directories and 0 symlinks into {tmp_path}/squashfs-root\n"))
    assert sorted(os.listdir(tmp_path / "squashfs-root")) == ["data"]
    everything = run(image, "--appimage-extract", cwd=tmp_path)
    assert (everything.returncode, everything.stderr) == (0, (
        f"t.app: extracted 2 files, 1 directory and 0 symlinks into {tmp_path}/squashfs-root\n"))
    assert sorted(os.listdir(tmp_path / "squashfs-root")) == ["AppRun", "data"]
    assert os.access(tmp_path / "squashfs-root" / "AppRun", os.X_OK)
    quiet = run(image, "--appimage-extract", env={"APPIMAGE_QUIET": "1"}, cwd=tmp_path)
    assert (quiet.returncode, quiet.stderr) == (0, "")


@pytest.mark.parametrize("there", [False, True], ids=["no squashfs-root", "squashfs-root there"])
def test_extract_pattern_matching_nothing_is_an_error(image, tmp_path, there):
    """A pattern that matches nothing (here the leading "/" that users try first) exits 1
    with one line saying so, and writes nothing: no squashfs-root is made, and one that
    was there is left as it was."""
    if there:
        (tmp_path / "squashfs-root").mkdir()
        (tmp_path / "squashfs-root" / "mine").write_text("kept\n")
    result = run(image, "--appimage-extract", "/data/*", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == ("t.app: no path in the image matches '/data/*' (patterns match "
                             "paths as the image holds them, without a leading /: "
                             "'usr/bin/*')\n")
    assert os.listdir(tmp_path) == (["squashfs-root"] if there else [])
    if there:
        assert os.listdir(tmp_path / "squashfs-root") == ["mine"]


@pytest.mark.parametrize("kind, variable", [("home", "HOME"), ("config", "XDG_CONFIG_HOME")])
def test_portable_directories(image, kind, variable):
    directory = f"{image}.{kind}"
    try:
        result = run(image, f"--appimage-portable-{kind}")
        assert result.returncode == 0 and directory in result.stderr
        assert os.path.isdir(directory)
        app = run(image, "exit", "0")
        assert f"Setting ${variable} to {directory}" in app.stderr
        if variable == "HOME":
            assert fields(app.stdout)["HOME"] == directory
    finally:
        os.rmdir(directory)


def test_mount_flag_prints_the_mount_point_until_killed(image):
    process = subprocess.Popen([image, "--appimage-mount"], stdout=subprocess.PIPE, text=True)
    point = process.stdout.readline().strip()
    try:
        assert os.path.isfile(os.path.join(point, "data", "x.txt"))
        assert len(mounts_of(image)) == 1
    finally:
        process.terminate()
        process.wait()
    assert wait_unmounted(image)


def test_cached_answers_stay_right(image):
    """Names that are absent, directory listings and files opened by the kernel without
    asking the server (negative entries, kept listings, no OPEN): the same answers every
    time, on opens in parallel too."""
    process = subprocess.Popen([image, "--appimage-mount"], stdout=subprocess.PIPE, text=True)
    point = process.stdout.readline().strip()
    try:
        data = os.path.join(point, "data")
        for _ in range(3):
            assert not os.path.exists(os.path.join(data, "absent.txt"))
            assert sorted(os.listdir(data)) == ["x.txt"]
            with open(os.path.join(data, "x.txt")) as f:
                assert f.read() == "x\n"
        with open(os.path.join(point, "AppRun"), "rb") as f:
            whole = f.read()
        handles = [open(os.path.join(point, "AppRun"), "rb") for _ in range(8)]
        try:
            for offset in (0, 4096, len(whole) - 7):
                for handle in handles:
                    handle.seek(offset)
                    assert handle.read(100) == whole[offset:offset + 100]
        finally:
            for handle in handles:
                handle.close()
        with pytest.raises(OSError):
            open(os.path.join(data, "new.txt"), "w")
    finally:
        process.terminate()
        process.wait()
    assert wait_unmounted(image)


def test_extract_and_run_flag_is_removed_from_the_arguments(image):
    result = run(image, "a", "--appimage-extract-and-run", "b")
    assert result.returncode == 0
    assert f"argv: {image} a b\n" in result.stdout
    assert os.path.basename(fields(result.stdout)["APPDIR"]) == "root"


def test_no_cleanup_keeps_the_extracted_copy(image):
    result = run(image, mode="extract", env={"NO_CLEANUP": "1"})
    root = fields(result.stdout)["APPDIR"]
    try:
        assert os.path.isfile(os.path.join(root, "data", "x.txt"))
        again = run(image, mode="extract")  # reuses it, then removes it as the last user
        assert fields(again.stdout)["APPDIR"] == root
        assert not os.path.exists(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_target_appimage_runs_another_image(image, our_runtime, tmp_path):
    result = subprocess.run([our_runtime, "exit", "3"], capture_output=True, text=True,
                            env=dict(os.environ, TARGET_APPIMAGE=image))
    assert result.returncode == 3
    assert fields(result.stdout)["APPIMAGE"] == image


def elf32_with_section(name: bytes, content: bytes) -> bytes:
    """A minimal 32-bit ELF file (i386) whose section header table, last in the file,
    lists ``.shstrtab`` and a section ``name`` holding ``content``."""
    names = b"\0.shstrtab\0" + name + b"\0"
    data_at = 52 + len(names)
    shoff = data_at + len(content)
    header = b"\x7fELF\x01\x01\x01" + bytes(9) + struct.pack(
        "<HHIIIIIHHHHHH", 2, 3, 1, 0, 0, shoff, 0, 52, 0, 0, 40, 3, 1)
    sections = bytes(40) + struct.pack("<10I", 1, 3, 0, 0, 52, len(names), 0, 0, 1, 0) + \
        struct.pack("<10I", 11, 1, 0, 0, data_at, len(content), 0, 0, 1, 0)
    return header + names + content + sections


def test_a_32_bit_image_is_read_as_such(our_runtime, image, tmp_path):
    """Other tools make i386 AppImages; TARGET_APPIMAGE may name one: its ELF end and
    sections are read with 32-bit headers."""
    with open(image, "rb") as f:
        f.seek(int(run(image, "--appimage-offset").stdout))
        squashfs_image = f.read()
    runtime32 = elf32_with_section(b".upd_info", b"zsync|https://example.invalid/x.zsync\0")
    other = tmp_path / "i386.AppImage"
    other.write_bytes(runtime32 + squashfs_image)
    env = dict(os.environ, TARGET_APPIMAGE=str(other))
    offset = subprocess.run([our_runtime, "--appimage-offset"], capture_output=True,
                            text=True, env=env)
    assert offset.stdout == f"{len(runtime32)}\n", offset.stderr
    info = subprocess.run([our_runtime, "--appimage-updateinformation"], capture_output=True,
                          text=True, env=env)
    assert info.stdout == "zsync|https://example.invalid/x.zsync\n", info.stderr
    extracted = subprocess.run([our_runtime, "--appimage-extract", "data/*"], cwd=tmp_path,
                               capture_output=True, text=True, env=env)
    assert extracted.returncode == 0, extracted.stderr
    assert (tmp_path / "squashfs-root" / "data" / "x.txt").read_text() == "x\n"


@pytest.mark.parametrize("mode", MODES)
def test_environment(image, mode, tmp_path):
    link = tmp_path / "named-link"
    os.symlink(image, link)
    result = run(str(link), "a b", "c", mode=mode, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    env = fields(result.stdout)
    assert env["APPIMAGE"] == image
    assert env["ARGV0"] == str(link)
    assert env["OWD"] == str(tmp_path) == env["cwd"]
    assert os.path.basename(env["APPDIR"]) == ("mnt" if mode == "mount" else "root")
    assert f"argv: {link} a b c" in result.stdout


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("code", [0, 1, 42, 255])
def test_exit_status(image, mode, code):
    assert run(image, "exit", str(code), mode=mode).returncode == code


@pytest.mark.parametrize("mode", MODES)
def test_death_by_signal(image, mode):
    result = run(image, "kill", str(int(signal.SIGKILL)), mode=mode)
    # mount mode: the app is this very process (exec), so the caller sees the signal;
    # extract mode: the runtime reports it as a shell does, 128 + N.
    assert result.returncode == (-9 if mode == "mount" else 128 + 9)
    assert wait_unmounted(image)  # a killed app releases the shared mount


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                                 signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT])
def test_signals_reach_the_app(image, mode, sig):
    environment = dict(os.environ, **MODES[mode])
    process = subprocess.Popen([image, "wait"], stdout=subprocess.PIPE, text=True,
                               env=environment)
    wait_for_line(process, "ready")
    process.send_signal(sig)
    try:
        rest, _ = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 99
    assert f"got signal {int(sig)}" in rest


def test_no_fuse_falls_back_to_extraction(image):
    nobody = [shutil.which("setpriv"), "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    environment = {"PATH": "/nonexistent", "TMPDIR": "/tmp"}
    result = subprocess.run(nobody + [image, "exit", "5"], capture_output=True, text=True,
                            env=environment)
    assert result.returncode == 5, result.stderr
    # Which check fails first depends on the host: /dev/fuse closed to nobody, or no
    # fusermount in that PATH.
    assert result.stderr.startswith("t.app: cannot mount (")
    assert result.stderr.endswith("); extracting instead\n")
    quiet = subprocess.run(nobody + [image], capture_output=True, text=True,
                           env=dict(environment, APPIMAGE_QUIET="1"))
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert fields(quiet.stdout)["APPDIR"].startswith("/tmp/spack-appimage-65534/")


@pytest.mark.parametrize("mode", MODES)
def test_simultaneous_launches_share_and_clean_up(image, mode):
    environment = dict(os.environ, **MODES[mode])
    processes = [subprocess.Popen([image, "exit", "0", str(i)], stdout=subprocess.PIPE,
                                  text=True, env=environment) for i in range(64)]
    for i, process in enumerate(processes):
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        assert f"argv: {image} exit 0 {i}\n" in out
    assert wait_unmounted(image)
    assert wait_nothing_left(image)


def entries_of(image, uid):
    """Everything of ``image`` in the runtime's directory of user ``uid`` in /tmp: its
    mount directories (``<id>-<mount namespace>``) and its extraction directory
    (``<id>``), lock files and all."""
    doctor = subprocess.run([image, "--appimage-doctor"], capture_output=True, text=True)
    image_id = doctor.stdout.split("image id: ")[1].split()[0]
    base = f"/tmp/spack-appimage-{uid}"
    return [name for name in os.listdir(base) if name.startswith(image_id)] \
        if os.path.isdir(base) else []


@pytest.mark.parametrize("mode", MODES)
def test_launches_racing_the_last_user_out_all_run_and_leave_nothing(image, mode,
                                                                     ordinary_user):
    """The last user to leave removes the image's directory with its lock files, while
    launches arrive: each round, an app holds the mount or copy, 16 launches start, and
    the holder leaves among them (a mount outlives its last user by APPIMAGE_IDLE_MS=0).
    A launch that opened the lock files being removed starts over: every launch runs, and
    once all have left, nothing of the image stays in the user's directory."""
    environment = {**MODES[mode], "APPIMAGE_IDLE_MS": "0"}
    launches = []
    for round_ in range(8):
        holder = ordinary_user.popen([image, "wait"], env=environment, stdout=subprocess.PIPE,
                                     text=True)
        wait_for_line(holder, "ready")
        for i in range(16):
            if i == 8:
                holder.terminate()
            launches.append((f"{round_}.{i}", ordinary_user.popen(
                [image, "exit", "0", f"{round_}.{i}"], env=environment,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        assert holder.wait(timeout=60) == 99  # the app's own exit, on SIGTERM
        holder.stdout.close()
    for name, process in launches:
        out, err = process.communicate(timeout=60)
        assert (process.returncode, err) == (0, ""), name
        assert f"argv: {image} exit 0 {name}\n" in out
        # in /tmp, the first place: no launch gave up on it for the next
        assert fields(out)["APPDIR"].startswith(f"/tmp/spack-appimage-{ordinary_user.uid}/")
    assert ordinary_user.wait_unmounted(image) and wait_no_server(image)
    assert _gone(lambda image: entries_of(image, ordinary_user.uid), image, 10), \
        entries_of(image, ordinary_user.uid)


def test_launches_from_other_mount_namespaces_leave_nothing(image):
    """Containers and `unshare -m` share /tmp but not mounts: each namespace gets its own
    mount, and every server goes once its namespace's apps are gone (launches in a row,
    each within the previous server's idle time, used to leave servers forever)."""
    for i in range(3):
        result = subprocess.run(["unshare", "--mount", "--propagation", "private", image,
                                 "exit", "0", str(i)], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        assert f"argv: {image} exit 0 {i}\n" in result.stdout
    assert run(image, "exit", "0").returncode == 0  # and one in this namespace
    assert wait_unmounted(image) and wait_no_server(image) and wait_nothing_left(image)


def test_killed_launcher_leaves_nothing(image):
    process = subprocess.Popen([image, "wait"], stdout=subprocess.PIPE, text=True)
    wait_for_line(process, "ready")
    process.kill()
    process.wait()
    assert wait_unmounted(image) and wait_no_server(image) and wait_nothing_left(image)


def test_one_mount_for_simultaneous_launches(image):
    first = subprocess.Popen([image, "wait"], stdout=subprocess.PIPE, text=True)
    second = subprocess.Popen([image, "wait"], stdout=subprocess.PIPE, text=True)
    try:
        for process in (first, second):
            wait_for_line(process, "ready")
        [mount] = mounts_of(image)
        assert "allow_other" not in mount and "allow_root" not in mount
    finally:
        for process in (first, second):
            process.terminate()
            process.wait()
    assert wait_unmounted(image)


@pytest.mark.parametrize("damage", ["truncated", "superblock"])
def test_damaged_image_exits_127(image, tmp_path, damage):
    data = bytearray(open(image, "rb").read())
    offset = int(run(image, "--appimage-offset").stdout)
    if damage == "truncated":
        data = data[: offset + 50]
    else:
        data[offset: offset + 4] = b"XXXX"
    broken = tmp_path / "broken.app"
    broken.write_bytes(bytes(data))
    broken.chmod(0o755)
    result = subprocess.run([str(broken)], capture_output=True, text=True)
    assert result.returncode == 127
    assert result.stderr.startswith("broken.app: ") and "no squashfs image" in result.stderr


def test_noexec_or_full_tmpdir_moves_on(image, tmp_path):
    """The probe takes 8 blocks of 4 KiB (its files, directories and AppRun rounded up to
    blocks): not 16 KiB."""
    for name, options in (("noexec", "noexec,size=16m"), ("full", "size=16k")):
        point = tmp_path / name
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
        try:
            result = run(image, mode="extract", env={"TMPDIR": str(point), "VERBOSE": "1"})
            assert result.returncode == 0, result.stderr
            assert not fields(result.stdout)["APPDIR"].startswith(str(point))
            assert f"skipping {point}" in result.stderr
        finally:
            subprocess.run(["umount", str(point)], check=True)


@pytest.mark.parametrize("mode", MODES)
def test_a_tmpdir_too_long_for_the_runtimes_paths_is_skipped(image, tmp_path, mode):
    """Nothing is made at a truncated path: the runtime moves on to the next directory."""
    deep = str(tmp_path)
    while len(deep) < 4096 - 12:  # room for the directory, not for what goes in it
        deep = os.path.join(deep, "d" * min(200, 4096 - 13 - len(deep)))
    os.makedirs(deep)
    result = run(image, mode=mode, env={"TMPDIR": deep, "VERBOSE": "1"})
    assert result.returncode == 0, result.stderr
    assert f"skipping {deep}: path too long" in result.stderr
    assert not fields(result.stdout)["APPDIR"].startswith(str(tmp_path))
    assert os.listdir(deep) == []


@pytest.fixture
def fuse_for_everyone():
    """/dev/fuse open to other users for the test (Debian's is root's alone), so that a
    user's mount goes through the setuid fusermount3 as on a cluster's nodes."""
    mode = os.stat("/dev/fuse").st_mode & 0o777
    os.chmod("/dev/fuse", 0o666)
    yield
    os.chmod("/dev/fuse", mode)


@pytest.mark.parametrize("user", ["root", "nobody"])
def test_a_comma_in_the_image_path_adds_no_mount_option(image, request, user,
                                                         fuse_for_everyone):
    """libfuse (root: mount(2)) and fusermount3 (users) split mount options at commas:
    the image path, which goes into fsname=, must not add options such as allow_other."""
    shared = tempfile.mkdtemp(prefix="comma-test-")  # nobody must reach the image
    os.chmod(shared, 0o755)
    request.addfinalizer(lambda: shutil.rmtree(shared))
    directory = os.path.join(shared, "a,allow_other,fsname=b")
    os.mkdir(directory, 0o755)
    odd = os.path.join(directory, "t.app")
    shutil.copy(image, odd)
    as_user = [] if user == "root" else [
        "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    assert wait_unmounted(image)  # the copy has its ID: it would join that mount
    process = subprocess.Popen([*as_user, odd, "wait"], stdout=subprocess.PIPE,
                               text=True, cwd=shared, env=dict(os.environ, TMPDIR="/tmp"))
    try:
        wait_for_line(process, "ready")
        [mount] = mounts_of(odd)
        source, options = mount.split(" - ")[1].split()[1:3]
        assert source == odd
        assert "allow_other" not in options.split(","), mount
    finally:
        process.terminate()
        process.wait()
    assert wait_unmounted(odd)


#: Runs a program with close_range(2) failing with ENOSYS, as on Linux before 5.9 (RHEL 8's
#: 4.18): a seccomp filter, which every process it starts inherits. Installed without
#: no_new_privs (root may), so a setuid fusermount3 still works under it.
NO_CLOSE_RANGE = r"""
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_close_range, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog program = {sizeof filter / sizeof *filter, filter};
    if (argc < 2 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program)) {
        perror("seccomp");
        return 126;
    }
    execvp(argv[1], argv + 1);
    perror(argv[1]);
    return 127;
}
"""


def test_the_runtime_tests_pass_without_close_range(tmp_path):
    """This module's tests again, in a pytest run where close_range(2) does not exist."""
    wrapper = cc(str(tmp_path / "no-close-range"), NO_CLOSE_RANGE)
    probe = subprocess.run(
        [wrapper, sys.executable, "-c",
         "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
         f"print(libc.syscall({CLOSE_RANGE_NR}, 3, 3, 0), os.strerror(ctypes.get_errno()))"],
        capture_output=True, text=True, check=True)
    assert probe.stdout.split(None, 1) == ["-1", "Function not implemented\n"]
    nested = subprocess.run(
        [wrapper, sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
         "--basetemp", str(tmp_path / "nested"), "-k", "not without_close_range"],
        capture_output=True, text=True, cwd=os.path.dirname(__file__))
    assert nested.returncode == 0, nested.stdout[-3000:] + nested.stderr[-2000:]
    assert " passed" in nested.stdout and " failed" not in nested.stdout


#: close_range's system call number on x86-64 and aarch64 (asm-generic): the same, 436.
CLOSE_RANGE_NR = 436


def test_extract_never_follows_a_planted_symlink(image, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "squashfs-root").mkdir()
    os.symlink(victim, tmp_path / "squashfs-root" / "data")
    result = run(image, "--appimage-extract", cwd=tmp_path)
    assert result.returncode == 1
    assert "t.app: cannot extract data into squashfs-root: Not a directory" in result.stderr
    assert os.listdir(victim) == []


def test_a_busy_mount_does_not_make_the_server_spin(image):
    """APPIMAGE_IDLE_MS=0 (as the benchmarks set it) and a process working inside the
    mount without the users lock: each unmount attempt fails, and the server retries
    about once a second rather than at once (which burned a core)."""
    process = subprocess.Popen([image, "wait"], stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, APPIMAGE_IDLE_MS="0"))
    squatter = None
    try:  # whatever fails, no app or squatter stays to hold the mount for later tests
        wait_for_line(process, "ready")
        [mount] = mounts_of(image)
        point = mount.split()[4]
        squatter = subprocess.Popen(["sleep", "60"], cwd=point)  # holds no users lock
        process.terminate()
        process.wait()
        time.sleep(3)  # the window the server's CPU ticks are counted over
        server = server_of(image)
        with open(f"/proc/{server}/stat") as f:
            ticks = sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:13])
        assert mounts_of(image) and ticks < 30, ticks  # spinning took ~75 ticks in 3 s
    finally:
        process.kill()
        process.wait()
        if squatter:
            squatter.kill()
            squatter.wait()
    assert wait_unmounted(image)


def test_the_server_keeps_none_of_the_callers_descriptors(image):
    read_end, write_end = os.pipe()
    try:
        starter = subprocess.Popen([image, "exit", "0"], pass_fds=[write_end],
                                   stdout=subprocess.DEVNULL,
                                   env=dict(os.environ, APPIMAGE_IDLE_MS="3000"))
        os.close(write_end)
        starter.wait(timeout=10)
        assert mounts_of(image)  # the server lives on, idle...
        ready, _, _ = select.select([read_end], [], [], 2)
        assert ready and os.read(read_end, 1) == b""  # ...without the caller's pipe
    finally:
        os.close(read_end)
    assert wait_unmounted(image)


def test_ignored_sigchld_does_not_lose_the_exit_status(image):
    result = subprocess.run(
        [image, "exit", "7"], capture_output=True, env=dict(os.environ, **MODES["extract"]),
        preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN),
    )
    assert result.returncode == 7


@pytest.fixture(scope="module")
def glibc_root(tmp_path_factory):
    """A root holding nothing but Debian's libc6 files (and empty /tmp, /proc, /dev)."""
    root = tmp_path_factory.mktemp("glibc-root")
    listed = subprocess.run(["dpkg", "-L", "libc6"], capture_output=True, text=True,
                            check=True).stdout.split()
    for link in ("bin", "lib", "lib64", "sbin"):  # Debian's merged /usr
        if os.path.islink(f"/{link}"):
            os.symlink(os.readlink(f"/{link}"), root / link)
    for path in listed:
        real = os.path.realpath(path)
        target = root / real.lstrip("/")
        if os.path.isdir(real):
            target.mkdir(parents=True, exist_ok=True)
        elif os.path.exists(real):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(real, target, follow_symlinks=False)
            if os.path.islink(path) and not os.path.lexists(root / path.lstrip("/")):
                (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
                os.symlink(os.readlink(path), root / path.lstrip("/"))
    for directory in ("tmp", "proc", "dev"):
        (root / directory).mkdir(exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    return root


@pytest.mark.parametrize("mode", MODES)
def test_runs_in_a_root_with_nothing_but_glibc(image, glibc_root, mode):
    """No shell, no fusermount3, no other library: as root the runtime mounts with
    mount(2), or extracts."""
    shutil.copy(image, glibc_root / f"{mode}.app")  # a server may still run the other
    assert not (glibc_root / "bin" / "sh").exists() and not (glibc_root / "usr" / "bin").exists()
    inside = (f'mount -t proc proc "$0/proc" && mount --bind /dev "$0/dev" && '
              f'exec chroot "$0" /{mode}.app exit 0 in-root')
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", inside,
         str(glibc_root)], capture_output=True, text=True, timeout=60,
        env=dict(PATH="/usr/sbin:/usr/bin:/sbin:/bin", **MODES[mode]))
    assert result.returncode == 0, result.stderr
    assert f"argv: /{mode}.app exit 0 in-root" in result.stdout
    assert fields(result.stdout)["APPDIR"].endswith("/mnt" if mode == "mount" else "/root")

