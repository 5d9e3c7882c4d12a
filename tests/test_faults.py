"""Faults and interruptions during a build, secrets and modes in the image, the same
bytes twice, and many simultaneous launches.

Every failing build is checked for: one `Error:` line, the exit status, no traceback, no
output file, and no temporary file left (TMPDIR and the output directory are the test's)."""

import fcntl
import hashlib
import os
import pathlib
import pty
import shutil
import signal
import subprocess
import tempfile
import termios
import threading
import time

import pytest
from conftest import _gone, _require, fails, mount_dirs_in, wait_for_line

import spack
from spack.extensions.appimage import assemble, desktop, scratch

ENTRY = ["--entry", "ai-hello=ai-hello"]


@pytest.fixture
def clean(site, tmp_path):
    """(output path, environment) with a TMPDIR of the test's; both checked to be empty
    of anything the build left, afterwards."""
    out_dir, tmp_dir = tmp_path / "out", tmp_path / "tmp"
    out_dir.mkdir()
    tmp_dir.mkdir()
    saved = dict(site.env_vars)
    site.env_vars["TMPDIR"] = str(tmp_dir)
    yield out_dir / "x.app"
    site.env_vars.clear()
    site.env_vars.update(saved)
    assert os.listdir(out_dir) == [] and os.listdir(tmp_dir) == []


def test_neither_elf_nor_script(site, clean):
    line = fails(site, "-o", str(clean), "--entry", "data-exec", env=site.env)
    assert "is neither an ELF executable nor a script" in line


def test_entry_symlink_leading_out_of_its_prefix(site, clean):
    line = fails(site, "-o", str(clean), "--entry", "escape", env=site.env)
    assert "leads outside the prefix of ai-hello" in line


@pytest.fixture
def small_fs(tmp_path):
    """small_fs(bytes) -> a new tmpfs of that size; checked empty, and unmounted, after."""
    mounted = []

    def make(size: int) -> pathlib.Path:
        point = tmp_path / f"small{len(mounted)}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                       check=True)
        mounted.append(point)
        return point

    yield make
    left = {point: os.listdir(point) for point in mounted}
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)
    assert all(names == [] for names in left.values()), left


def test_disk_full_writing_the_appdir(site, clean, small_fs, our_runtime):
    small = small_fs(64 << 10)
    site.env_vars["TMPDIR"] = str(small)  # (and a runtime built already: gcc uses TMPDIR)
    line = fails(site, "--runtime", our_runtime, "-o", str(clean), *ENTRY, env=site.env)
    assert line == f"==> Error: no space left on device writing in {small}; free space " \
                   "there or set TMPDIR to a directory with room"


@pytest.fixture(scope="module")
def sizes(site, tmp_path_factory):
    """(squashfs, runtime) bytes of the image of ENTRY (the same bytes at every build)."""
    image = tmp_path_factory.mktemp("sizes") / "x.app"
    site("appimage", "-o", str(image), *ENTRY, env=site.env)
    runtime = assemble.elf_size(str(image))
    return image.stat().st_size - runtime, runtime


@pytest.mark.parametrize("when", ["mksquashfs", "runtime"])
def test_disk_full_writing_the_image(site, clean, small_fs, sizes, when):
    """The output's file system fills while mksquashfs writes, or after it, when the
    runtime is written into the room mksquashfs left before the squashfs."""
    squashfs, runtime = sizes
    small = small_fs(64 << 10 if when == "mksquashfs" else squashfs + runtime // 2)
    line = fails(site, "-o", str(small / "x.app"), *ENTRY, env=site.env)
    assert line == f"==> Error: no space left on device writing in {small}; free space " \
                   "there or write the image elsewhere with -o"


def test_disk_full_writing_the_sbom(site, clean, small_fs):
    small = small_fs(4 << 10)
    line = fails(site, "-o", str(clean), "--sbom", str(small / "x.json"), *ENTRY,
                 env=site.env)
    assert line == f"==> Error: no space left on device writing in {small}; free space " \
                   "there or write the SBOM elsewhere with --sbom"


@pytest.mark.parametrize("flag, value", [
    ("-o", "x\nExec=rm -rf ~\nName=x.app"),
    ("-o", os.fsdecode(b"caf\xe9.app")),  # Latin-1, not UTF-8
    ("--entry", "ai-hello\nExec=evil=ai-hello"),
    ("--entry", "ai-hello\x1b[2J"),
])
def test_names_a_desktop_entry_cannot_hold_are_refused(site, clean, flag, value):
    output = str(clean.parent / value) if flag == "-o" else str(clean)
    entry = ["--entry", value] if flag == "--entry" else ENTRY
    line = fails(site, "-o", output, *entry, env=site.env)
    name = desktop.image_name(value) if flag == "-o" else value
    assert line == f"==> Error: {flag} {ascii(name)} holds a control character or bytes " \
                   "that are not UTF-8, which the image's desktop entry cannot hold; " \
                   "choose a name without them"


def _validated(path: pathlib.Path) -> dict:
    """The keys of the desktop file at ``path``, once desktop-file-validate accepts it."""
    validate = _require("desktop-file-validate", "apt-get install desktop-file-utils "
                                                 "(see .ci/run)")
    check = subprocess.run([validate, str(path)], capture_output=True, text=True)
    report = check.stdout + check.stderr
    # (Its one hint: two main categories, as desktop.py says.)
    assert check.returncode == 0 and all(": hint: " in line for line in report.splitlines()), \
        report
    return dict(line.split("=", 1) for line in path.read_text().splitlines()[1:])


def test_names_are_escaped_in_the_desktop_entry(site, tmp_path):
    name = "we\\ird $name 50%"
    image = tmp_path / f"{name}.app"
    site("appimage", "-o", str(image), *ENTRY, env=site.env)
    root = tmp_path / "root"
    subprocess.run(["unsquashfs", "-o", str(assemble.elf_size(str(image))), "-d", str(root),
                    str(image)], check=True, capture_output=True)
    fields = _validated(root / f"{name}.desktop")
    assert fields["Name"] == fields["Icon"] == "we\\\\ird $name 50%"  # \\ is one backslash
    assert fields["Exec"] == "AppRun"
    assert (root / f"{name}.png").is_file()


def test_entry_names_are_quoted_in_exec(tmp_path):
    """Exec's own quoting (a program name with reserved characters), then the string's
    escapes; the spec's validator reads it back."""
    desktop.write(str(tmp_path), "x.app", ['say "hi" $HOME \\ 100%', "other"], None)
    fields = _validated(tmp_path / "x.desktop")
    assert fields["Exec"] == 'AppRun "say \\\\"hi\\\\" \\\\$HOME \\\\\\\\ 100%%"'


def test_patchelf_missing_and_not_obtainable(site, clean, tmp_path):
    # ai-runpath has a DT_RUNPATH, which only patchelf can turn into DT_RPATH.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("python3", "gcc", "cc", "strip", "mksquashfs", "pkg-config", "spack", "ld",
                 "as", "collect2", "uname", "cat"):
        found = shutil.which(tool)
        if found:
            os.symlink(found, bin_dir / tool)
    site.env_vars["PATH"] = str(bin_dir)
    result = site("-c", "bootstrap:enable:false", "appimage", "-o", str(clean), "--entry",
                  "ai-runpath", env=site.env, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    # said, then refused, before the first stage copies anything
    said = result.stdout + result.stderr
    assert "==> patchelf is not on PATH: Spack bootstraps it" in said
    assert "==> [1/" not in said, said
    [line] = [line for line in result.stderr.splitlines() if "Error:" in line]
    assert line.startswith("==> Error: patchelf is needed to rewrite RPATHs and could not be "
                           "bootstrapped; install it: `apt install patchelf` or "
                           "`spack install patchelf`, and put it on PATH"), line


#: Progress lines of a build: ``==> [i/STAGES] ...``; the squashfs is written in the
#: second-to-last stage.
STAGES = 9


def _build(site, output, *args, **popen) -> subprocess.Popen:
    """``spack appimage -o output ARGS ENTRY``, started in the background."""
    return subprocess.Popen(["spack", "-e", site.env, "appimage", "-o", str(output), *args,
                             *ENTRY], env=dict(site.env_vars, PYTHONUNBUFFERED="1"),
                            cwd=site.root, **popen)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("stage", range(1, STAGES + 1))
def test_interrupted_at_each_stage(site, clean, sig, stage):
    """The signal is sent as soon as the stage's progress line appears."""
    _interrupted(site, clean, sig, stage)


@pytest.mark.parametrize("stage", [3, STAGES - 1])
def test_hangup_at_a_stage(site, clean, stage):
    """SIGHUP (``kill -HUP``, or a closed terminal whose output went to a log) is
    SIGTERM: after copying (the AppDir is full) and while mksquashfs runs."""
    _interrupted(site, clean, signal.SIGHUP, stage)


def _interrupted(site, clean, sig, stage):
    process = _build(site, clean, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_line(process, f"[{stage}/{STAGES}]", seconds=120)
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    assert "Traceback" not in err
    if os.path.exists(clean):  # the last stage (5 ms) may end before the signal lands
        assert stage == STAGES, "the build was not interrupted"
        # Then the image is whole, whatever the signal did to the exiting process.
        assert clean.read_bytes()[8:11] == assemble.MAGIC
        assert "the partial image and the temporary files were removed" not in err
        os.remove(clean)
        return
    if sig == signal.SIGINT:
        assert process.returncode == 2 and "Error: Keyboard interrupt." in err
    else:
        assert process.returncode == 1
        assert f"Error: terminated by {sig.name}; the partial image and the temporary " \
               "files were removed" in err
    assert len([line for line in err.splitlines() if "Error:" in line]) == 1, err


@pytest.mark.parametrize("stage", [3, STAGES - 1])
def test_terminal_closed_during_the_build(site, clean, stage):
    """A real hangup: the build runs on a terminal (its controlling one, as from a login
    shell) that closes. Every write to it fails from then on, the error line's too."""
    master, terminal = pty.openpty()
    process = _build(site, clean, stdin=terminal, stdout=terminal, stderr=terminal,
                     start_new_session=True,
                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(terminal)
    try:
        _read_until(master, f"[{stage}/{STAGES}]", process)
    finally:
        os.close(master)  # the hangup: SIGHUP to the build, its terminal gone
    assert process.wait(timeout=120) == 1  # and nothing left (``clean``)


def _read_until(fd: int, text: str, process, seconds: float = 120) -> None:
    """Read the terminal ``fd`` until ``text`` appears (a running stage's line ends only
    when the stage does); a process that does not print it in time is killed."""
    timer = threading.Timer(seconds, process.kill)
    timer.start()
    seen = b""
    try:
        while text.encode() not in seen:
            try:
                seen += os.read(fd, 4096)
            except OSError:  # EIO: the process is gone
                pytest.fail(f"no {text!r} on the terminal: {seen.decode(errors='replace')}")
    finally:
        timer.cancel()


def _killed_builds_leftovers(pid: int):
    """What a build with this PID left where builds put their AppDirs."""
    return [os.path.join(d, n) for d in ("/dev/shm", "/tmp") for n in os.listdir(d)
            if n.startswith(f"{scratch.PREFIX}{pid}-")]


def test_sigkill_during_assembly_never_leaves_a_partial_output(site, tmp_path):
    """Killed while mksquashfs runs (a job's time limit, the OOM killer): the previous
    image stays, and the next build (of another output in that directory) removes the
    partial output and the AppDir (in /dev/shm or /tmp: no TMPDIR here, as on a login
    node)."""
    output = tmp_path / "x.app"
    output.write_text("previous image")
    process = _build(site, output, "--force", stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL, text=True)
    try:
        wait_for_line(process, f"[{STAGES - 1}/{STAGES}]", seconds=120)
        process.kill()
        process.wait()
        assert output.read_text() == "previous image"
        [partial] = [n for n in os.listdir(tmp_path) if n != "x.app"]
        assert partial.startswith(f".x.app.{scratch.PARTIAL}{process.pid}-")
        assert len(_killed_builds_leftovers(process.pid)) == 1
        site("appimage", "-o", str(tmp_path / "y.app"), *ENTRY, env=site.env)
        assert sorted(os.listdir(tmp_path)) == ["x.app", "y.app"]
        assert output.read_text() == "previous image"
        assert _killed_builds_leftovers(process.pid) == []
    finally:  # whatever failed above, the test leaves nothing
        for path in _killed_builds_leftovers(process.pid):
            shutil.rmtree(path)


def _dead_pid() -> int:
    """The PID of a process that has exited."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _plant(parent, pid: int, uid: int = 0) -> pathlib.Path:
    """A directory named like the AppDir of a build with ``pid``, with a file, of ``uid``."""
    path = pathlib.Path(tempfile.mkdtemp(prefix=f"{scratch.PREFIX}{pid}-", dir=parent))
    (path / "lib").mkdir()
    (path / "lib" / "libx.so").write_bytes(b"\0" * 4096)
    for each in (path, path / "lib", path / "lib" / "libx.so"):
        os.chown(each, uid, -1)
    return path


def test_appdirs_of_killed_builds_are_removed_by_the_next_build(site, clean, tmp_path,
                                                                other_user):
    """Only this user's, only dead builds' (PID gone, lock free), never through a
    symlink, never a FIFO (whose open would block); a live build (stopped after copying
    its files) goes on unharmed."""
    scratch_dir = pathlib.Path(site.env_vars["TMPDIR"])
    dead = _plant(scratch_dir, _dead_pid())
    dead_partial = scratch_dir / f".old.app.{scratch.PARTIAL}{_dead_pid()}-abc"
    dead_partial.write_bytes(b"\0" * 4096)
    fifo = scratch_dir / f".fifo.app.{scratch.PARTIAL}{_dead_pid()}-abc"
    os.mkfifo(fifo)
    others = _plant(scratch_dir, _dead_pid(), other_user.uid)
    locked = _plant(scratch_dir, _dead_pid())  # a live build of another PID namespace
    lock = os.open(locked, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    target = scratch_dir / "kept"
    target.mkdir()
    (target / "file").write_text("kept")
    link = scratch_dir / f"{scratch.PREFIX}{_dead_pid()}-link"
    link.symlink_to(target)
    live = _build(site, tmp_path / "live.app", stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE, text=True)
    try:
        wait_for_line(live, f"[4/{STAGES}]", seconds=120)
        live.send_signal(signal.SIGSTOP)
        [live_dir] = scratch_dir.glob(f"{scratch.PREFIX}{live.pid}-*")
        site("appimage", "-o", str(clean), *ENTRY, env=site.env)
        assert not dead.exists() and not dead_partial.exists() and fifo.exists()
        assert (others / "lib" / "libx.so").is_file() and (locked / "lib" / "libx.so").is_file()
        assert link.is_symlink() and (target / "file").read_text() == "kept"
        assert any((live_dir / "opt").iterdir())
    finally:
        live.send_signal(signal.SIGCONT)
        _, err = live.communicate(timeout=120)
        os.close(lock)
        for path in (others, locked, target):
            shutil.rmtree(path)
        link.unlink()
        fifo.unlink()
        os.remove(clean)
    assert live.returncode == 0, err
    assert (tmp_path / "live.app").read_bytes()[8:11] == assemble.MAGIC


def test_appdirs_of_killed_builds_as_an_ordinary_user(ordinary_user, other_user):
    """The removal as an ordinary user, in a directory open to all with the sticky bit,
    like /tmp: that user's dead builds' AppDirs go; another user's, root's, a live
    build's (its lock held) and a symlink's target stay. (A whole build cannot run as
    that user here: the Spack under test and its test store are in root's 0700 home and
    pytest directories; the removal is the code of the build, run in a child process
    that became the user.)"""
    shared = pathlib.Path(tempfile.mkdtemp(prefix="shared-scratch-"))
    os.chmod(shared, 0o1777)
    me, other = ordinary_user, other_user
    try:
        mine, others = _plant(shared, _dead_pid(), me.uid), _plant(shared, _dead_pid(), other.uid)
        roots, live = _plant(shared, _dead_pid()), _plant(shared, _dead_pid(), me.uid)
        lock = os.open(live, os.O_RDONLY)
        fcntl.flock(lock, fcntl.LOCK_EX)
        target = _plant(shared, os.getpid(), me.uid)  # alive: not removed for itself
        link = shared / f"{scratch.PREFIX}{_dead_pid()}-link"
        link.symlink_to(target)
        os.lchown(link, me.uid, me.gid)
        child = os.fork()
        if child == 0:  # the user, with TMPDIR the shared directory
            code = 1
            try:
                os.setgroups([])
                os.setgid(me.gid)
                os.setuid(me.uid)
                os.environ["TMPDIR"] = str(shared)
                tempfile.tempdir = None  # tempfile reads TMPDIR again
                scratch.remove_stale()
                code = 0
            finally:
                os._exit(code)
        assert os.waitpid(child, 0)[1] == 0
        os.close(lock)
        assert not mine.exists()
        for kept in (others, roots, live, target):
            assert (kept / "lib" / "libx.so").is_file(), kept
        assert link.is_symlink()
    finally:
        shutil.rmtree(shared)


def _repository(root: pathlib.Path, name: str, recipe: str) -> str:
    """A package repository with the package ``name`` whose package.py is ``recipe``,
    in the layout of the Spack under test."""
    if spack.spack_version_info >= (1,):
        base = root / "spack_repo" / "ai_faults"
        package, api = base / "packages" / name.replace("-", "_"), "\n  api: v2.0"
    else:
        base, api = root, ""
        package = base / "packages" / name
    package.mkdir(parents=True)
    (base / "repo.yaml").write_text(f"repo:\n  namespace: ai_faults{api}\n")
    (package / "package.py").write_text(recipe)
    return str(base)


def test_sigterm_while_spack_loads_a_package(tmp_path):
    """Issue 19: Spack's package loader turns any Exception raised while it imports a
    recipe into "cannot load package ..."; the interrupt is no Exception, so it reaches
    the build as itself and leaves as the usual one line (:class:`Terminated`)."""
    import spack.repo
    from spack.extensions.appimage import build
    from spack.extensions.appimage.errors import Terminated

    repository = _repository(tmp_path, "ai-term-on-load",
                             "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    before = signal.getsignal(signal.SIGTERM)
    with spack.repo.use_repositories(repository):
        with pytest.raises(Terminated) as raised:
            with build._Interrupts().installed():
                spack.repo.PATH.get_pkg_class("ai-term-on-load")
    assert str(raised.value) == "terminated by SIGTERM; the partial image and the " \
                                "temporary files were removed"
    assert signal.getsignal(signal.SIGTERM) is before


def test_no_build_secret_in_the_image(site, tmp_path):
    [canary] = [os.path.join(r, "canary-secret.txt") for r, _, f in os.walk(site.store)
                if "canary-secret.txt" in f]
    assert "SECRET_TOKEN" in open(canary).read()
    image = tmp_path / "x.app"
    site("appimage", "-o", str(image), *ENTRY, env=site.env)
    extracted = tmp_path / "x"
    offset = subprocess.run([image, "--appimage-offset"], capture_output=True, text=True,
                            check=True).stdout.strip()
    subprocess.run(["unsquashfs", "-o", offset, "-d", str(extracted), image], check=True,
                   capture_output=True)
    for root, dirs, names in os.walk(extracted):
        assert ".spack" not in dirs
        for name in names:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                assert b"SECRET_TOKEN" not in open(path, "rb").read(), path


def test_modes_and_ownership_in_the_image(site, tmp_path):
    image = tmp_path / "x.app"
    site("appimage", "-o", str(image), *ENTRY, env=site.env)
    offset = subprocess.run([image, "--appimage-offset"], capture_output=True, text=True,
                            check=True).stdout.strip()
    listing = subprocess.run(["unsquashfs", "-o", offset, "-lln", str(image)],
                             capture_output=True, text=True, check=True).stdout
    entries = [line.split() for line in listing.splitlines() if line[:1] in "-dl"]
    assert entries and all(e[1] == "0/0" for e in entries)  # root-owned
    modes = {os.path.basename(e[5]): e[0] for e in entries}  # perms owner size date time path
    assert modes["setuid-data"] == "-rwxr-xr-x" and modes["open-data"] == "-rw-r--r--"
    assert "broken" not in modes and "outside" not in modes
    assert not any(m[0] != "l" and (m[5] == "w" or m[8] == "w" or m[3] in "sS")
                   for m in modes.values())


def test_host_ld_library_path_cannot_replace_a_bundled_library(site, tmp_path):
    image = tmp_path / "x.app"
    site("appimage", "-o", str(image), *ENTRY, env=site.env)
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    src = impostor / "leaf.c"
    src.write_text('const char *leaf(void) { return "IMPOSTOR"; }\n')
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libleaf.so.1", "-o",
                    str(impostor / "libleaf.so.1"), str(src)], check=True)
    run = subprocess.run([image, "x"], capture_output=True, text=True,
                         env=dict(os.environ, LD_LIBRARY_PATH=str(impostor)))
    assert run.returncode == 0 and "leaf-1.0" in run.stdout and "IMPOSTOR" not in run.stdout


def test_runtime_uses_a_directory_of_its_own_where_another_user_took_the_name(site):
    """A TMPDIR like /tmp (sticky, open to all) where root planted the name of nobody's
    per-user directory, open to all, with an AppRun at the place of the image's cached
    copy: nobody's launch uses a private directory of its own beside it, and nothing of
    the plant runs."""
    shared = tempfile.mkdtemp(prefix="plant-test-")  # nobody must reach the image
    os.chmod(shared, 0o755)
    image = os.path.join(shared, "x.app")
    site("appimage", "-o", image, *ENTRY, env=site.env)
    planted = pathlib.Path(shared) / "base"
    planted.mkdir()
    os.chmod(planted, 0o1777)
    nobody = int(subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True).stdout)
    trap = planted / f"spack-appimage-{nobody}"
    doctor = subprocess.run([image, "--appimage-doctor"], capture_output=True, text=True)
    root = trap / doctor.stdout.split("image id: ")[1].split()[0] / "root"
    root.mkdir(parents=True)
    (root / "AppRun").write_text(f"#!/bin/sh\ntouch {shared}/planted-ran\n")
    subprocess.run(["chmod", "-R", "a+rwX", str(trap)], check=True)  # root's, open to all
    run = subprocess.run(
        [shutil.which("setpriv"), "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         str(image), "x"],
        capture_output=True, text=True, env={"TMPDIR": str(planted), "PATH": "/usr/bin:/bin",
                                             "APPIMAGE_QUIET": "1", "VERBOSE": "1"},
    )
    assert f"{trap} is not a private directory of ours: using another" in run.stderr
    assert run.returncode == 0 and "hello:" in run.stdout, run.stderr
    [own] = [p for p in planted.iterdir() if p.name.startswith(f"{trap.name}.")]
    assert own.stat().st_uid == nobody and own.stat().st_mode & 0o777 == 0o700
    assert not os.path.exists(f"{shared}/planted-ran")
    # nobody's mount (closed even to root) goes after the server's idle time
    assert _gone(mount_dirs_in, str(planted), 10), mount_dirs_in(str(planted))
    shutil.rmtree(shared)


def test_two_builds_give_the_same_bytes(site, tmp_path):
    """The same command twice (the manifest records the command line, output included)."""
    digests = []
    output = tmp_path / "a.app"
    for _ in range(2):
        site("appimage", "-o", str(output), *ENTRY, "--entry", "ai-cxx", env=site.env)
        digests.append(hashlib.sha256(output.read_bytes()).hexdigest())
        output.unlink()
        time.sleep(1.1)  # a clock that leaked into the image would now differ
    assert digests[0] == digests[1]


@pytest.fixture(scope="module")
def load_image(site, tmp_path_factory):
    image = tmp_path_factory.mktemp("load") / "load.app"
    site("appimage", "-o", str(image), "--entry", "ai-origin", env=site.env)
    return str(image)


def _mounts(image):
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if image in line]


@pytest.mark.parametrize("mode", [{}, {"APPIMAGE_EXTRACT_AND_RUN": "1"}])
def test_256_simultaneous_launches(load_image, mode):
    env = dict(os.environ, **mode)
    processes = [subprocess.Popen([load_image], stdout=subprocess.PIPE, text=True, env=env)
                 for _ in range(256)]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert [p.returncode for p in processes] == [0] * 256
    assert set(outputs) == {"origin: priv-via-origin\n"}
    deadline = time.time() + 10
    while _mounts(load_image) and time.time() < deadline:
        time.sleep(0.1)
    assert not _mounts(load_image)


def test_64_simultaneous_extractions_into_distinct_directories(load_image, tmp_path):
    dirs = [tmp_path / str(i) for i in range(64)]
    for d in dirs:
        d.mkdir()
    processes = [subprocess.Popen([load_image, "--appimage-extract"], cwd=d,
                                  stdout=subprocess.DEVNULL) for d in dirs]
    assert [p.wait(timeout=120) for p in processes] == [0] * 64
    for d in dirs:
        assert (d / "squashfs-root" / "AppRun").is_file()
    assert not _mounts(load_image)


def test_unreadable_file(site, clean):
    """As root, without the capabilities that let root read anything."""
    [greeting] = [os.path.join(r, "greeting.txt") for r, _, f in os.walk(site.store)
                  if "greeting.txt" in f]
    os.chmod(greeting, 0)
    try:
        result = subprocess.run(
            [shutil.which("setpriv"), "--bounding-set", "-dac_override,-dac_read_search",
             "spack", "-e", site.env, "appimage", "-o", str(clean), *ENTRY],
            env=site.env_vars, capture_output=True, text=True, cwd=site.root,
        )
    finally:
        os.chmod(greeting, 0o644)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"Error: cannot read {greeting}: Permission denied; make the file readable by " \
           "you, or reinstall the spec that owns it" in result.stderr
