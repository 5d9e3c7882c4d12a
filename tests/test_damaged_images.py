"""Damaged images: the runtime refuses them or runs them, and never crashes.

squashfuse 0.1.105 trusts what it reads (runtime/verify.c): a damaged directory table
once crashed extraction (a free() of an invalid pointer) and the FUSE server (SIGABRT,
leaving a dead mount). A fixed corpus of byte-flipped copies of a small image is run in
every mode, as root and as an ordinary user; so is a smaller one of copies without the
CRCs the runtime checks (the ID section of an image stamped by the previous release, or
none: another tool's image), which the runtime walks instead (runtime/walk.c).

The corpus image's AppRun is a symlink to the host's /bin/sh, and what it runs (a script
given as arguments) reads every directory, link and file of the image through the
runtime: the app's own code is not in the image, so damage can change the bytes it reads
(a zstd block has no checksum) but cannot crash it, and any crash is the runtime's or its
server's. The harness is the subreaper of everything the runtime starts, so it sees how
each process ended, the detached server included.
"""

import fcntl
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

import pytest
from conftest import make_image, mount_dirs_in, wait_for_line
from conftest import _gone

from spack.extensions.appimage import assemble

#: What this module tests is the runtime's own (C, FUSE, the kernel): it does not change
#: with Spack's version, so the matrix runs it with the first Spack only (README, Tests).
pytestmark = pytest.mark.one_spack

#: What AppRun (/bin/sh) runs: every directory, link and file of the image read through
#: the runtime; exit 1 if anything cannot be read.
READ_ALL = ('cd "$APPDIR" && ls -lR . >/dev/null && find . -type f -exec cat {} + >/dev/null'
            ' || exit 1')

#: Run by the ordinary user or root, once per batch of images: each image in extract mode,
#: in mount mode and with --appimage-extract; one JSON line per run. It reaps every
#: process the runtime started (PR_SET_CHILD_SUBREAPER) and reports those that died by a
#: signal, what is left mounted or in the runtime's directories, and exit statuses.
HARNESS = r"""
import ctypes, json, os, shutil, signal, subprocess, sys
PR_SET_CHILD_SUBREAPER = 36
ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
script, workdir, build_id, images = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
CANDIDATES = (os.environ["TMPDIR"], "/tmp", "/var/tmp", "/dev/shm")
MODES = {"extract": {"APPIMAGE_EXTRACT_AND_RUN": "1"}, "mount": {},
         "--appimage-extract": {"APPIMAGE_QUIET": "1"}}

def timeout(*_):
    raise TimeoutError

signal.signal(signal.SIGALRM, timeout)

def reap():
    # Waits for every process left (a server unmounts and exits once its app is gone).
    deaths = []
    signal.alarm(30)
    try:
        while True:
            pid, status = os.waitpid(-1, 0)
            if os.WIFSIGNALED(status):
                deaths.append(signal.Signals(os.WTERMSIG(status)).name)
    except ChildProcessError:
        pass
    except TimeoutError:
        deaths.append("a process did not exit within 30 s")
    signal.alarm(0)
    return deaths

def bases():
    # The runtime's directories of this user: spack-appimage-<uid>, or the private
    # spack-appimage-<uid>.<random> it uses when that name is taken (privdir.c), perhaps
    # by another user's test running meanwhile: not ours, and not readable.
    prefix = f"spack-appimage-{os.getuid()}"
    for candidate in CANDIDATES:
        for name in os.listdir(candidate):
            path = os.path.join(candidate, name)
            if (name == prefix or name.startswith(prefix + ".")) and os.path.isdir(path) \
                    and os.stat(path).st_uid == os.getuid():
                yield path

def left(image):
    # Mounts of the image, and what is in the runtime's directories for an image with
    # this build ID (the runtime may move on from TMPDIR to the next candidates) but an
    # extraction cache's two lock files (conftest.leftovers: they stay).
    found = [line.split()[4] for line in open("/proc/self/mountinfo") if image in line]
    for base in bases():
        names = os.listdir(base)
        for name in [os.path.join(base, n) for n in names if n.startswith(build_id)]:
            if not os.path.isdir(name) or set(os.listdir(name)) - {"lock", "users"}:
                found.append(name)
    return found

for image in images:
    for mode, env in MODES.items():
        cwd = os.path.join(workdir, "cwd")
        os.makedirs(cwd)
        argv = [image, mode] if mode.startswith("--") else [image, "-c", script]
        result = subprocess.run(argv, cwd=cwd, env=dict(os.environ, **env), capture_output=True,
                                text=True, errors="replace", timeout=60)
        deaths = reap()
        shutil.rmtree(cwd)  # --appimage-extract's squashfs-root, by design
        print(json.dumps({"image": image, "mode": mode, "code": result.returncode,
                          "stderr": result.stderr[-300:], "deaths": deaths,
                          "left": left(image)}), flush=True)
"""

#: How many damaged copies (with and without CRCs), and the seed that makes them the same
#: at every run.
CORPUS, CRCLESS_CORPUS, SEED = 1000, 300, 18
#: The exit statuses a damaged image may give: the app's (0, or 1 for an unreadable file),
#: 1 for --appimage-extract that could not write everything, 127 for a refused image.
ALLOWED = {0, 1, 127}
#: What a process sees when the server of its mount is gone.
DEAD_MOUNT = ("Transport endpoint is not connected", "Software caused connection abort")


def corpus_appdir(root: str) -> str:
    """Directories, small files (fragments), a file of several blocks, and links."""
    appdir = os.path.join(root, "AppDir")
    rng = random.Random(SEED)
    words = ["alpha", "beta", "gamma", "delta", "squash", "fuse", "spack", "node"]
    for d in range(4):
        share = os.path.join(appdir, "share", f"d{d}")
        os.makedirs(share)
        for i in range(12):
            with open(os.path.join(share, f"file-{i}.txt"), "w") as f:
                f.write(" ".join(rng.choice(words) for _ in range(rng.randrange(5, 400))))
        os.symlink("file-0.txt", os.path.join(share, "link"))
    with open(os.path.join(appdir, "share", "big.txt"), "w") as f:  # several 128 KiB blocks
        f.write(" ".join(f"{rng.choice(words)}{rng.randrange(10**6)}" for _ in range(60000)))
    with open(os.path.join(appdir, "share", "version"), "w") as f:
        f.write("built\n")
    os.symlink("/bin/sh", os.path.join(appdir, "AppRun"))
    return appdir


def squashfs_layout(image: str):
    """(offset of the squashfs, inode table start, bytes used) of ``image``."""
    offset = assemble.elf_size(image)
    with open(image, "rb") as f:
        f.seek(offset)
        superblock = f.read(assemble.SUPERBLOCK)
    (used,) = struct.unpack_from("<Q", superblock, assemble.BYTES_USED)
    (tables,) = struct.unpack_from("<Q", superblock, assemble.INODE_TABLE)
    return offset, tables, used


def without_crcs(image: str, out: str) -> str:
    """A copy of ``image`` whose ID section holds only "<id> <unpacked bytes>", as the
    previous release stamped it (assemble.stamp_image_id): the runtime has no CRC to check
    and walks the squashfs's structure instead."""
    from spack.extensions.appimage import runtime

    data = bytearray(open(image, "rb").read())
    offset, size = assemble.section(image, runtime.ID_SECTION)
    text = b" ".join(bytes(data[offset:offset + size]).split()[:2])
    data[offset:offset + size] = text + b"\0" * (size - len(text))
    with open(out, "wb") as f:
        f.write(data)
    os.chmod(out, 0o755)
    return out


def damaged_copies(image: str, directory: str, count=CORPUS, prefix="damaged", weights=(14, 3, 3)):
    """``count`` copies of ``image``, each with 1 to 4 bytes flipped: by default 70%
    anywhere in the squashfs, 15% in the superblock, 15% in the tables (inode table to the
    end); the region is in the name."""
    data = open(image, "rb").read()
    offset, tables, used = squashfs_layout(image)
    rng = random.Random(SEED)
    regions = [("anywhere", offset, len(data))] * weights[0] + \
              [("superblock", offset, offset + assemble.SUPERBLOCK)] * weights[1] + \
              [("tables", offset + tables, offset + used)] * weights[2]
    copies = []
    for n in range(count):
        region, start, end = rng.choice(regions)
        copy = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            copy[rng.randrange(start, end)] ^= rng.randrange(1, 256)
        path = os.path.join(directory, f"{prefix}-{n:04d}-{region}.app")
        with open(path, "wb") as f:
            f.write(copy)
        os.chmod(path, 0o755)
        copies.append(path)
    return copies


@pytest.fixture(scope="module")
def corpus(our_runtime):
    """The corpus image and its damaged copies, in a directory every user can read."""
    work = tempfile.mkdtemp(prefix="damaged-")
    os.chmod(work, 0o755)
    image = make_image(our_runtime, corpus_appdir(work), os.path.join(work, "corpus.app"))
    yield image, damaged_copies(image, work)
    shutil.rmtree(work)


@pytest.fixture(scope="module")
def crcless_corpus(corpus):
    """The corpus image without CRCs, and CRCLESS_CORPUS damaged copies of it in the tables
    (inode table to the end), which only the walk guards (the superblock is checked as for
    the main corpus)."""
    image, _ = corpus
    work = tempfile.mkdtemp(prefix="crcless-")
    os.chmod(work, 0o755)
    plain = without_crcs(image, os.path.join(work, "crcless.app"))
    yield plain, damaged_copies(plain, work, CRCLESS_CORPUS, "crcless", weights=(0, 0, 1))
    shutil.rmtree(work)


@pytest.fixture
def private_tmp(user):
    """A TMPDIR of the user's own, removed after the test."""
    path = tempfile.mkdtemp(prefix="damaged-tmp-")
    os.chown(path, user.uid, -1)
    yield path
    # A server removes its mount's directory after its idle time, when the test is over:
    # removing the tree under it would race with it.
    assert _gone(mount_dirs_in, path, 10), mount_dirs_in(path)
    shutil.rmtree(path)


def build_id(image: str) -> str:
    """The first field of the image's ID section (assemble.stamp_image_id)."""
    from spack.extensions.appimage import runtime

    offset, size = assemble.section(image, runtime.ID_SECTION)
    with open(image, "rb") as f:
        f.seek(offset)
        return f.read(size).split()[0].decode()


def run_batches(user, images, tmp, batches=2):
    """The harness over ``images`` in parallel batches (one process each); its records."""
    processes = []
    for n in range(batches):
        workdir = os.path.join(tmp, f"work{n}")
        os.mkdir(workdir)
        os.chown(workdir, user.uid, -1)
        env = {"TMPDIR": os.path.join(tmp, f"tmp{n}"), "APPIMAGE_IDLE_MS": "0"}
        os.mkdir(env["TMPDIR"], 0o700)
        os.chown(env["TMPDIR"], user.uid, -1)
        processes.append(user.popen(
            [sys.executable, "-c", HARNESS, READ_ALL, workdir, build_id(images[0]),
             *images[n::batches]],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    records = []
    for process in processes:
        out, err = process.communicate()
        assert process.returncode == 0, err
        records += [json.loads(line) for line in out.splitlines()]
    assert len(records) == 3 * len(images)
    return records


def problems_in(records):
    """The runs that show a crash, a dead mount, a status not allowed, or leftovers."""
    return [r for r in records
            if r["deaths"] or r["left"] or r["code"] not in ALLOWED
            or any(text in r["stderr"] for text in DEAD_MOUNT)]


@pytest.mark.parametrize("kind", ["with CRCs", "without CRCs"])
def test_the_undamaged_images_read_all(corpus, crcless_corpus, kind, user, private_tmp):
    """The probe is sound, and the walk of an image without CRCs accepts what mksquashfs
    wrote: the intact image gives 0 in every mode, as anyone."""
    image, _ = corpus if kind == "with CRCs" else crcless_corpus
    records = run_batches(user, [image], private_tmp, batches=1)
    assert [(r["mode"], r["code"], r["stderr"]) for r in records] == [
        ("extract", 0, ""), ("mount", 0, ""), ("--appimage-extract", 0, "")]
    assert not problems_in(records)


def test_a_thousand_damaged_images_never_crash_the_runtime(corpus, user, private_tmp):
    """Each exits with 0, 1 or 127, and leaves no process, mount or file behind. Damage to
    the superblock or the tables is always refused before squashfuse reads them; damage
    to data is refused by an extraction, and makes the app's reads fail or differ in a
    mount."""
    _, copies = corpus
    records = run_batches(user, copies, private_tmp)
    assert problems_in(records) == []
    read = [r for r in records if "-anywhere" not in r["image"] and r["code"] in (0, 1)
            and not (r["mode"] == "--appimage-extract" and r["code"] == 1)]
    assert read == []
    # A refused image says why in one line, in every mode.
    for mode in ("extract", "--appimage-extract", "mount"):
        refused = [r for r in records if r["mode"] == mode and
                   (r["code"] == 127 or mode == "--appimage-extract" and r["code"] == 1)]
        longer = [r["stderr"] for r in refused if r["stderr"].count("\n") != 1]
        assert not longer, f"{mode}: {len(longer)} of {len(refused)} refusals in more than " \
                           f"one line, such as:\n{longer[0]}"


def test_damaged_images_without_crcs_never_crash_the_runtime(crcless_corpus, user, private_tmp):
    """Without CRCs, damage to the tables is found by the walk (or is harmless: a time, a
    mode, a file's bytes); each run exits with 0, 1 or 127, leaves nothing behind, and a
    refusal is one line."""
    _, copies = crcless_corpus
    records = run_batches(user, copies, private_tmp)
    assert problems_in(records) == []
    refused = [r for r in records if r["code"] == 127]
    assert refused, "no damaged copy was refused: the corpus does not reach the walk"
    longer = [r["stderr"] for r in refused if r["stderr"].count("\n") != 1]
    assert not longer, longer[0]


def uncompressed_image(runtime_file: str, appdir: str, out: str) -> str:
    """An image of ``appdir`` with uncompressed metadata (its directory table can be
    edited in place), without CRCs."""
    from spack.extensions.appimage import runtime, squashfs

    partial = out + ".partial"
    subprocess.run([squashfs.find_mksquashfs([]), appdir, partial, "-noappend", "-quiet",
                    "-no-progress", "-offset", str(os.path.getsize(runtime_file)), "-noI",
                    "-noD", "-noF", "-no-xattrs", "-root-owned"], check=True)
    assemble.write_runtime(runtime_file, partial)
    assemble.stamp_image_id(partial, runtime_file, runtime.ID_SECTION, 4 << 20)
    without_crcs(partial, out)
    os.unlink(partial)
    return out


#: In an uncompressed metadata block (2-byte header): a directory header (count,
#: start_block, inode_number: 12 bytes), then its first entry, whose name size is at 6.
DIR_TABLE, FIRST_NAME_SIZE = 72, 2 + 12 + 6


@pytest.mark.parametrize("mode", ["extract", "mount", "--appimage-extract"])
def test_a_name_longer_than_squashfs_allows_is_refused_without_crcs(our_runtime, user,
                                                                   private_tmp, elsewhere, mode):
    """The damage that crashed squashfuse 0.1.105 (issue 18): a directory entry's name size
    beyond SQUASHFS_NAME_LEN, which sqfs_dir_next copies into a 257-byte buffer."""
    image = uncompressed_image(our_runtime, corpus_appdir(elsewhere),
                               os.path.join(elsewhere, "long-name.app"))
    shutil.rmtree(os.path.join(elsewhere, "AppDir"))
    offset, _, _ = squashfs_layout(image)
    with open(image, "rb+") as f:
        f.seek(offset + DIR_TABLE)
        (table,) = struct.unpack("<Q", f.read(8))
        f.seek(offset + table)
        (header,) = struct.unpack("<H", f.read(2))
        assert header & 0x8000, "mksquashfs -noD wrote a compressed directory block"
        f.seek(offset + table + FIRST_NAME_SIZE)
        f.write(struct.pack("<H", 300))  # a name of 301 bytes
    os.chown(elsewhere, user.uid, -1)  # --appimage-extract writes there
    env = {"TMPDIR": private_tmp, "APPIMAGE_IDLE_MS": "0",
           **({"APPIMAGE_EXTRACT_AND_RUN": "1"} if mode == "extract" else {})}
    argv = [image, mode] if mode.startswith("--") else [image, "-c", READ_ALL]
    result = user.run(["sh", "-c", 'cd "$0" && exec "$@"', elsewhere, *argv], env=env)
    assert result.returncode == (1 if mode.startswith("--") else 127), result.stderr
    assert result.stderr == (f"long-name.app: the squashfs of {image} is damaged (a directory "
                             "holds an impossible name); rebuild or re-download it\n")
    assert not user.mounts_of(image)
    assert left_in(private_tmp) == []
    assert os.listdir(elsewhere) == ["long-name.app"]


def damage_tables(image: str, out: str) -> str:
    """A copy of ``image`` with one byte of its directory table flipped."""
    data = bytearray(open(image, "rb").read())
    offset, tables, used = squashfs_layout(image)
    data[offset + (tables + used) // 2] ^= 0x55
    with open(out, "wb") as f:
        f.write(data)
    os.chmod(out, 0o755)
    return out


def left_in(tmp):
    """What is under ``tmp`` but the runtime's empty per-user directories."""
    return [os.path.join(top, name) for top, dirs, files in os.walk(tmp) for name in dirs + files
            if top != tmp or not name.startswith("spack-appimage-")
            or os.listdir(os.path.join(top, name))]


@pytest.fixture
def elsewhere():
    """A directory every user can read, removed after the test."""
    path = tempfile.mkdtemp(prefix="damaged-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize("mode", ["extract", "mount", "--appimage-extract", "--appimage-manifest"])
def test_a_refused_image_says_so_in_one_line_and_leaves_nothing(corpus, user, private_tmp,
                                                               elsewhere, mode):
    image, _ = corpus
    broken = damage_tables(image, os.path.join(elsewhere, "broken.app"))
    os.chown(elsewhere, user.uid, -1)  # --appimage-extract writes there
    env = {"TMPDIR": private_tmp, "APPIMAGE_IDLE_MS": "0",
           **({"APPIMAGE_EXTRACT_AND_RUN": "1"} if mode == "extract" else {})}
    argv = [broken, mode] if mode.startswith("--") else [broken, "-c", READ_ALL]
    # In `elsewhere` (nsenter starts commands in the namespace holder's directory).
    result = user.run(["sh", "-c", 'cd "$0" && exec "$@"', elsewhere, *argv], env=env)
    assert result.returncode == (127 if not mode.startswith("--") else 1), result.stderr
    assert result.stderr.startswith(f"broken.app: the squashfs of {broken} is damaged (")
    assert result.stderr.endswith("); rebuild or re-download it\n")
    assert result.stderr.count("\n") == 1, result.stderr
    assert not user.mounts_of(broken)
    assert left_in(private_tmp) == []
    assert os.listdir(elsewhere) == ["broken.app"]


def repack(image: str, directory: str, settings: str) -> str:
    """``image`` with its runtime and ID section, and a new squashfs made from its
    --appimage-extract output with a changed file: with mksquashfs's defaults, or with
    the project's (zstd, fixed timestamps: the same bytes for the same tree)."""
    from spack.extensions.appimage import squashfs

    subprocess.run([image, "--appimage-extract"], cwd=directory, check=True, capture_output=True)
    tree = os.path.join(directory, "squashfs-root")
    with open(os.path.join(tree, "share", "version"), "w") as f:
        f.write("repacked, and changed\n")
    new = os.path.join(directory, "new.squashfs")
    mksquashfs = squashfs.find_mksquashfs([])
    if settings == "defaults":
        subprocess.run([mksquashfs, tree, new, "-noappend", "-quiet"], check=True)
    else:
        squashfs.make(mksquashfs, tree, new, offset=0, compression="zstd", jobs=None,
                      progress=False)
    out = os.path.join(directory, "repacked.app")
    with open(image, "rb") as f, open(out, "wb") as o, open(new, "rb") as n:
        o.write(f.read(assemble.elf_size(image)) + n.read())
    os.chmod(out, 0o755)
    shutil.rmtree(tree)
    return out


def garbage(image: str, directory: str, keep_superblock: bool) -> str:
    """``image`` with its runtime and ID section, and random bytes instead of its squashfs
    (behind its own superblock, if ``keep_superblock``)."""
    data = bytearray(open(image, "rb").read())
    offset = assemble.elf_size(image)
    keep = offset + (assemble.SUPERBLOCK if keep_superblock else 0)
    data[keep:] = random.Random(SEED).randbytes(len(data) - keep)
    out = os.path.join(directory, "garbage.app")
    with open(out, "wb") as f:
        f.write(data)
    os.chmod(out, 0o755)
    return out


SHOW_VERSION = 'cat "$APPDIR/share/version"; echo ready; read line'


@pytest.fixture(params=["repacked with mksquashfs's defaults", "repacked the project's way",
                        "garbage", "garbage behind the superblock"])
def impostor(request, corpus):
    """A file that carries the corpus image's runtime and ID section, not its squashfs."""
    image, _ = corpus
    directory = tempfile.mkdtemp(prefix="impostor-")
    os.chmod(directory, 0o755)
    if request.param.startswith("repacked"):
        path = repack(image, directory, "defaults" if "defaults" in request.param else "project")
    else:
        path = garbage(image, directory, keep_superblock="superblock" in request.param)
    yield path
    shutil.rmtree(directory)


@pytest.mark.parametrize("mode", ["extract", "mount"])
def test_an_image_with_another_squashfs_never_runs_the_original(corpus, impostor, user,
                                                               private_tmp, mode):
    """The original's copy is cached (NO_CLEANUP) or its mount is live while a file with the
    same ID section but another squashfs starts: that file is refused, and the original's
    content never runs under its name."""
    image, _ = corpus
    env = {"TMPDIR": private_tmp, "APPIMAGE_IDLE_MS": "0", "NO_CLEANUP": "1",
           **({"APPIMAGE_EXTRACT_AND_RUN": "1"} if mode == "extract" else {})}
    original = user.popen([image, "-c", SHOW_VERSION], env=env, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
    try:
        wait_for_line(original, "built")
        wait_for_line(original, "ready")
        result = user.run([impostor, "-c", SHOW_VERSION], env=env, input="\n")
    finally:
        original.communicate("\n")
    assert user.wait_unmounted(image)
    assert "built" not in result.stdout
    assert result.returncode == 127, result.stderr
    assert "is damaged" in result.stderr or "no squashfs image" in result.stderr
    assert not user.mounts_of(impostor)


def waiting_on(inode: int):
    """Whether a process waits for a lock on the file ``inode`` (/proc/locks: "->")."""
    with open("/proc/locks") as f:
        return any("->" in line and line.split()[6].endswith(f":{inode}") for line in f)


def test_an_image_swapped_after_it_was_identified_is_not_served(corpus, user, private_tmp,
                                                               elsewhere):
    """The launcher identifies the image (its ID section and squashfs) on one descriptor,
    and the server serves that descriptor: replacing the file meanwhile (by anyone who
    can write its directory) does not put other content under the identified image's
    key. Without CRCs, which would refuse the newcomer as damaged: only the descriptor
    tells them apart. The launcher is held between the two steps by the mount
    directory's lock, held here."""
    image, _ = corpus
    original = without_crcs(image, os.path.join(elsewhere, "app"))
    newcomer = without_crcs(repack(image, elsewhere, "project"), os.path.join(elsewhere, "new"))
    doctor = user.run([original, "--appimage-doctor"])
    image_id = doctor.stdout.split("image id: ")[1].split()[0]
    namespace = user.run(["stat", "-L", "-c", "%i", "/proc/self/ns/mnt"]).stdout.strip()
    mount_dir = os.path.join(private_tmp, f"spack-appimage-{user.uid}", f"{image_id}-{namespace}")
    for path in (os.path.dirname(mount_dir), mount_dir):  # as the runtime makes them
        os.mkdir(path, 0o700)
        os.chown(path, user.uid, -1)
    for name in ("users", "lock"):
        os.close(os.open(os.path.join(mount_dir, name), os.O_CREAT | os.O_WRONLY, 0o600))
        os.chown(os.path.join(mount_dir, name), user.uid, -1)
    lock = os.open(os.path.join(mount_dir, "lock"), os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        launch = user.popen([original, "-c", SHOW_VERSION], env={"TMPDIR": private_tmp,
                            "APPIMAGE_IDLE_MS": "0", "VERBOSE": "1"}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        held = _gone(lambda inode: not waiting_on(inode), os.fstat(lock).st_ino, 30)
        os.rename(newcomer, original)
    finally:
        os.close(lock)
    out, err = launch.communicate("\n", timeout=60)
    assert held, f"the launcher did not wait for the mount directory's lock: {err}"
    assert (out, launch.returncode) == ("built\nready\n", 0), err
    assert user.wait_unmounted(original)
