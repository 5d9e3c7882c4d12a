"""Faults and interruptions during a build, secrets and modes in the image, the same
bytes twice, and many simultaneous launches.

Every failing build is checked for: one `Error:` line, the exit status, no traceback, no
output file, and no temporary file left (TMPDIR and the output directory are the test's)."""

import hashlib
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
from conftest import fails, wait_for_line

from spack.extensions.appimage import assemble

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


def test_disk_full_during_mksquashfs(site, clean, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], check=True)
    try:
        line = fails(site, "-o", str(small / "x.app"), *ENTRY, env=site.env)
        assert "mksquashfs failed" in line and "check free space" in line
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


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
    line = fails(site, "-o", str(clean), "--entry", "ai-runpath", env=site.env,
                 spack_options=["-c", "bootstrap:enable:false"])
    assert "patchelf is needed to rewrite RPATHs and could not be found or bootstrapped" in line


#: Progress lines of a build: ``==> [i/STAGES] ...``; the squashfs is written in the
#: second-to-last stage.
STAGES = 9


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("stage", range(1, STAGES + 1))
def test_interrupted_at_each_stage(site, clean, sig, stage):
    """The signal is sent as soon as the stage's progress line appears."""
    process = subprocess.Popen(
        ["spack", "-e", site.env, "appimage", "-o", str(clean), *ENTRY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(site.env_vars, PYTHONUNBUFFERED="1"), cwd=site.root,
    )
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
    if sig == signal.SIGTERM:
        assert process.returncode == 1
        assert "Error: terminated by SIGTERM; the partial image and the temporary files " \
               "were removed" in err
    else:
        assert process.returncode == 2 and "Error: Keyboard interrupt." in err


def test_sigkill_during_assembly_never_leaves_a_partial_output(site, tmp_path):
    output = tmp_path / "x.app"
    output.write_text("previous image")
    process = subprocess.Popen(
        ["spack", "-e", site.env, "appimage", "-o", str(output), "--force", *ENTRY],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=dict(site.env_vars, PYTHONUNBUFFERED="1"), cwd=site.root,
    )
    wait_for_line(process, f"[{STAGES - 1}/{STAGES}]", seconds=120)
    process.kill()
    process.wait()
    assert output.read_text() == "previous image"
    left = [n for n in os.listdir(tmp_path) if n != "x.app"]
    assert all(n.startswith(".x.app.tmp-") for n in left)
    # The next build of that output removes what the killed one left.
    site("appimage", "-o", str(output), "--force", *ENTRY, env=site.env)
    assert os.listdir(tmp_path) == ["x.app"]


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


def test_runtime_refuses_a_directory_another_user_owns(site):
    shared = tempfile.mkdtemp(prefix="plant-test-")  # nobody must reach the image
    os.chmod(shared, 0o755)
    image = os.path.join(shared, "x.app")
    site("appimage", "-o", image, *ENTRY, env=site.env)
    planted = pathlib.Path(shared) / "base"
    planted.mkdir()
    os.chmod(planted, 0o777)
    nobody = subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True).stdout.strip()
    trap = planted / f"spack-appimage-{nobody}"
    trap.mkdir(mode=0o777)  # root's, open to all: a plant
    run = subprocess.run(
        [shutil.which("setpriv"), "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         str(image), "x"],
        capture_output=True, text=True, env={"TMPDIR": str(planted), "PATH": "/usr/bin:/bin",
                                             "APPIMAGE_QUIET": "1"},
    )
    assert f"refusing {trap}: owned by uid 0 or open to others" in run.stderr
    assert run.returncode == 0 and "hello:" in run.stdout  # moved on to the next directory
    assert os.listdir(trap) == []
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
