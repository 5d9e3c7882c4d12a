"""Whatever ends a shared mount's FUSE server, nothing stays: no mount (dead or alive) in
the mount table, no server or guardian process, nothing in the runtime's directory
(runtime/unmount.c says user cleans up what).

Every test runs as root and as an ordinary user user mounts through the setuid
fusermount3 (conftest.OrdinaryUser): libfuse's auto_unmount cleans a killed server's
mount only for root, so the user is the case that matters. The mounts live long
(APPIMAGE_IDLE_MS of ten minutes) unless a test says otherwise: what cleans up is the
handling of the server's end, never its idle timer.
"""

import os
import resource
import select
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

import pytest
from conftest import Root, make_image, server_of, wait_for_line, wait_no_server

#: What this module tests is the runtime's own (C, FUSE, the kernel): it does not change
#: with Spack's version, so the matrix runs it with the first Spack only (README, Tests).
pytestmark = pytest.mark.one_spack

#: Long enough that no test sees an idle unmount.
LONG_IDLE = {"APPIMAGE_IDLE_MS": "600000"}

#: Signals after which the server leaves once no app uses it (unmount.c: stop_on_signals).
STOPPING = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
#: Deaths that only the server's guardian sees (unmount.c: guard).
DEADLY = [signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT]


def no_core_dump():
    """A server killed by SIGSEGV or SIGABRT must not write a core file (its directory is /)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@pytest.fixture(scope="module")
def own_image(probe_image, our_runtime):
    """The probe image with content of its own: an image of the same content anywhere
    (another test run on this machine) has the same ID, and joins the same mount."""
    work = tempfile.mkdtemp(prefix="lifecycle-test-")
    os.chmod(work, 0o755)  # the ordinary user runs it
    appdir = os.path.join(work, "AppDir")
    shutil.copytree(os.path.join(os.path.dirname(probe_image), "AppDir"), appdir)
    with open(os.path.join(appdir, "data", "token"), "w") as f:
        f.write(f"{uuid.uuid4()}\n")
    yield make_image(our_runtime, appdir, os.path.join(work, "t.app"))
    shutil.rmtree(work)


#: An app that reads its image's files by path when told to (a line on its stdin), as a
#: TERM handler that imports a module or reads data from $APPDIR does.
READER_APPRUN = """#!/bin/sh
echo ready
read -r line
exec cat "$APPDIR/data/token"
"""


@pytest.fixture(scope="module")
def reader_image(our_runtime):
    """An image of :data:`READER_APPRUN`, and the token its data holds."""
    work = tempfile.mkdtemp(prefix="lifecycle-test-")
    os.chmod(work, 0o755)  # the ordinary user runs it
    appdir = os.path.join(work, "AppDir")
    os.makedirs(os.path.join(appdir, "data"))
    with open(os.path.join(appdir, "AppRun"), "w") as f:
        f.write(READER_APPRUN)
    os.chmod(os.path.join(appdir, "AppRun"), 0o755)
    token = f"{uuid.uuid4()}\n"
    with open(os.path.join(appdir, "data", "token"), "w") as f:
        f.write(token)
    yield make_image(our_runtime, appdir, os.path.join(work, "r.app")), token
    shutil.rmtree(work)


@pytest.fixture
def image(own_image, user):
    """The image, with no mount of it left over by another test."""
    assert user.wait_unmounted(own_image) and wait_no_server(own_image)
    return own_image


def nothing_left(user, image):
    return (user.wait_unmounted(image) and wait_no_server(image)
            and user.wait_nothing_left(image))


def parent_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def wait_gone(pid):
    """Waits until the process `pid` (not a child of ours) has ended."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # ended and reaped already
    try:
        assert select.select([fd], [], [], 10)[0], f"process {pid} is still there"
    finally:
        os.close(fd)


def stop_server(server, sig):
    """Sends the server TERM, INT or HUP, and waits until it has handled it: its thread
    that takes them (unmount.c: stop_on_signals, waiting in sigwait) has ended."""
    def sigwaiting():
        found = []
        for tid in os.listdir(f"/proc/{server}/task"):
            try:
                with open(f"/proc/{server}/task/{tid}/wchan") as f:
                    found += [tid] if "sigtimedwait" in f.read() else []
            except OSError:  # the thread has ended
                pass
        return found

    assert sigwaiting(), f"/proc/{server}/task/*/wchan shows no thread in sigtimedwait"
    os.kill(server, sig)
    deadline = time.monotonic() + 10
    while sigwaiting():
        assert time.monotonic() < deadline, f"server {server} did not take signal {sig}"
        time.sleep(0.01)


def ignoring_sigchld(argv):
    """``argv`` run with SIGCHLD ignored, as a caller's SIG_IGN is inherited through exec."""
    return ["python3", "-c", "import os, signal, sys; signal.signal(signal.SIGCHLD, "
            "signal.SIG_IGN); os.execv(sys.argv[1], sys.argv[1:])", *argv]


def idle_mount(user, image):
    """Mounts the image with an app that has already left: the server idles."""
    result = user.run([image, "exit", "0"], env=LONG_IDLE, preexec_fn=no_core_dump)
    assert result.returncode == 0, result.stderr
    assert user.mounts_of(image)
    return server_of(image)


@pytest.mark.parametrize("sig", STOPPING + DEADLY, ids=lambda s: signal.Signals(s).name)
def test_a_server_ended_while_idle_leaves_nothing(user, image, sig):
    server = idle_mount(user, image)
    os.kill(server, sig)
    assert nothing_left(user, image), user.leftovers(image)


@pytest.mark.parametrize("sig", DEADLY, ids=lambda s: signal.Signals(s).name)
def test_a_server_killed_while_an_app_runs_leaves_nothing(user, image, sig):
    app = user.popen([image, "wait"], env=LONG_IDLE, stdout=subprocess.PIPE, text=True,
                    preexec_fn=no_core_dump)
    try:
        wait_for_line(app, "ready")
        os.kill(server_of(image), sig)
        # The dead mount leaves the table at once, while the app still runs.
        assert user.wait_unmounted(image)
        assert app.poll() is None
        assert user.leftovers(image)  # the app holds the mount's directory...
    finally:
        app.kill()
        app.wait()
    assert nothing_left(user, image), user.leftovers(image)  # ...until it ends


@pytest.mark.parametrize("sig", STOPPING, ids=lambda s: signal.Signals(s).name)
def test_a_stopped_server_serves_its_apps_by_path_then_leaves(user, reader_image, sig):
    """After TERM (Slurm's, 30 s before its KILL) the mount stays whole while an app runs:
    the app still opens files by $APPDIR/... (a lazy detach would give it ENOENT). Once it
    has left, the server unmounts and cleans up at once, not after its idle time."""
    image, token = reader_image
    assert user.wait_unmounted(image) and wait_no_server(image)
    app = user.popen([image], env=LONG_IDLE, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
    try:
        wait_for_line(app, "ready")
        stop_server(server_of(image), sig)
        out, err = app.communicate("go\n", timeout=30)
        assert (app.returncode, out, err) == (0, token, "")
    finally:
        app.kill()
        app.wait()
    assert nothing_left(user, image), user.leftovers(image)


def test_launches_after_a_stop_join_the_mount(user, image):
    """A launch while a stopped server still serves an app joins its mount, and the server
    leaves when the last app is gone."""
    first = user.popen([image, "wait"], env=LONG_IDLE, stdout=subprocess.PIPE, text=True)
    second = None
    try:
        wait_for_line(first, "ready")
        server = server_of(image)
        stop_server(server, signal.SIGTERM)
        second = user.popen([image, "wait"], stdout=subprocess.PIPE, text=True)
        wait_for_line(second, "ready")
        assert len(user.mounts_of(image)) == 1 and server_of(image) == server
        for app in (first, second):
            app.send_signal(signal.SIGTERM)
            wait_for_line(app, "got signal 15")
    finally:
        for app in (first, second):
            if app:
                app.kill()
                app.wait()
    assert nothing_left(user, image), user.leftovers(image)


def test_launches_in_flight_when_the_server_stops_all_run(user, image):
    """Launches that found the mount and have not yet run AppRun when TERM comes run it:
    the mount stays while any of them holds it."""
    holder = user.popen([image, "wait"], env=LONG_IDLE, stdout=subprocess.PIPE, text=True)
    launches = []
    try:
        wait_for_line(holder, "ready")
        server = server_of(image)
        launches = [user.popen([image, "exit", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
        os.kill(server, signal.SIGTERM)
        for launch in launches:
            out, err = launch.communicate(timeout=60)
            assert launch.returncode == 0 and f"argv: {image} exit 0\n" in out, err
        holder.send_signal(signal.SIGTERM)
        wait_for_line(holder, "got signal 15")
    finally:
        for app in (holder, *launches):
            app.kill()
            app.wait()
    assert nothing_left(user, image), user.leftovers(image)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL],
                         ids=lambda s: signal.Signals(s).name)
def test_an_ignored_sigchld_does_not_keep_the_mount(user, image, sig):
    """A launcher started with SIGCHLD ignored (inherited through exec): the server's
    guardian still gets the status of a killed server (the kernel would reap it
    otherwise) and cleans up after it; the server stopped by TERM still unmounts."""
    result = user.run(ignoring_sigchld([image, "exit", "0"]), env=LONG_IDLE)
    assert result.returncode == 0 and f"argv: {image} exit 0\n" in result.stdout, result.stderr
    os.kill(server_of(image), sig)
    assert nothing_left(user, image), user.leftovers(image)


def test_a_killed_session_leaves_nothing_once_the_image_runs_again(user, image):
    """Server and guardian both killed (a job's cgroup): the user's mount is dead until
    the next launch of the image, which clears it, mounts afresh and cleans up."""
    server = idle_mount(user, image)
    guardian = parent_of(server)
    for pid in (guardian, server):
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
    if user.uid:  # root's auto_unmount may have cleared it already
        assert user.mounts_of(image)
    result = user.run([image, "exit", "0"])
    assert result.returncode == 0, result.stderr
    assert "extracting instead" not in result.stderr  # it mounted
    assert f"argv: {image} exit 0\n" in result.stdout
    assert nothing_left(user, image), user.leftovers(image)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1],
                         ids=lambda s: signal.Signals(s).name)
def test_a_signal_to_the_whole_session_leaves_nothing(user, image, sig):
    """A signal to the server's process group (a job's end, `kill -- -pgid`) reaches its
    guardian too, which outlives the server (SIGUSR1 kills the server) and cleans up."""
    server = idle_mount(user, image)
    guardian = parent_of(server)
    os.killpg(os.getpgid(server), sig)
    wait_gone(server)
    wait_gone(guardian)
    assert nothing_left(user, image), user.leftovers(image)


def test_the_guardian_keeps_nothing_of_the_callers(user, image):
    """Like the server, its guardian holds no descriptor of the launcher's: a pipe
    passed to the launcher reads end-of-file once the launcher has exited."""
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    try:
        launcher = user.popen([image, "exit", "0"], env=LONG_IDLE, pass_fds=[write_end],
                             stdout=subprocess.DEVNULL)
        os.close(write_end)
        assert launcher.wait(timeout=30) == 0
        server = server_of(image)
        ready, _, _ = select.select([read_end], [], [], 10)
        assert ready and os.read(read_end, 1) == b""
        guardian = parent_of(server)
        assert os.readlink(f"/proc/{guardian}/cwd") == "/"
        assert sorted(os.listdir(f"/proc/{guardian}/fd")) == ["0", "1", "2"]
    finally:
        os.close(read_end)
    os.kill(server, signal.SIGTERM)
    assert nothing_left(user, image)


@pytest.mark.parametrize("who_fails", ["root", "user"])
def test_a_failed_mount_leaves_nothing(request, own_image, who_fails):
    """The mount fails: root without CAP_SYS_ADMIN (a container's root), a user whose
    setuid fusermount3 runs without privileges (no_new_privs). The launch falls back to
    extraction, and the mount's directory goes."""
    if who_fails == "root":
        user, wrapper = Root(), ["setpriv", "--bounding-set=-sys_admin"]
    else:
        user, wrapper = request.getfixturevalue("ordinary_user"), ["setpriv", "--no-new-privs"]
    image = own_image
    result = user.run([*wrapper, image, "exit", "0"])
    assert result.returncode == 0, result.stderr
    assert "cannot mount (the FUSE mount of" in result.stderr
    assert "extracting instead" in result.stderr
    assert f"argv: {image} exit 0\n" in result.stdout
    assert user.leftovers(image) == []
    assert not user.mounts_of(image) and wait_no_server(image)
