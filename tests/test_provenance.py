"""Provenance: what made an image, from what, and whether a site's pre-built runtime is
current. Real clones of this repository (run by root and by an ordinary user), real
builds of copies of the session's environment, the images' own runtime printing what
they carry, and a runtime compiled from other sources as a site's stale pre-built one.
"""

import hashlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import EXTENSION, ROOT, fails, readable_tmp_dir

VERSION = open(os.path.join(EXTENSION, "appimage", "VERSION")).read().strip()
ENTRIES = ["--entry", "ai-hello=ai-hello", "--entry", "ai-cxx"]  # ai-cxx has a bin/ai-hello too
#: How the README tells site admins to pre-build the runtime at a path.
PREBUILD = 'install -m 0755 "$(spack appimage --print-runtime)" {}'

#: Prints the identity of the extension whose root is argv[1], as the extension does,
#: with nothing but the Python standard library (so as an ordinary user too).
IDENTITY = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from appimage import version; print(version.identity())")


def git(*args, cwd=ROOT):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout


def identity_of(extension_dir, user=None):
    argv = [sys.executable if user is None else "python3", "-B", "-c", IDENTITY,
            str(extension_dir)]
    run = user.run(argv) if user else subprocess.run(argv, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def expected_identity(clone=ROOT):
    """What the extension must say of ``clone``, from git itself."""
    head = git("rev-parse", "HEAD", cwd=clone).strip()
    dirty = git("status", "--porcelain", "--", "spack-appimage", cwd=clone).strip()
    return f"spack-appimage {VERSION} (commit {head[:12]}{', dirty' if dirty else ''})"


@pytest.fixture
def shared_dir():
    with readable_tmp_dir("provenance-") as directory:
        yield directory


@pytest.fixture(scope="module")
def images_dir():
    with readable_tmp_dir("provenance-images-") as directory:
        yield directory


def test_version_needs_no_environment(site):
    result = site("appimage", "--version")
    assert result.stdout == expected_identity() + "\n"
    assert result.stderr == ""


def clone_of_this_tree(directory):
    """A clone of this repository whose HEAD commits the extension as it is now."""
    git("clone", "--quiet", ROOT, str(directory))
    extension = directory / "spack-appimage"
    shutil.copytree(EXTENSION, extension, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    git("add", "-A", "spack-appimage", cwd=directory)
    git("-c", "user.name=test", "-c", "user.email=test@example.org", "commit", "--quiet",
        "--allow-empty", "-m", "the extension as tested", cwd=directory)
    return extension


def test_identity_of_clones_and_copies(shared_dir, ordinary_user, other_user):
    clone = shared_dir / "clone"
    extension = clone_of_this_tree(clone)
    head = git("rev-parse", "HEAD", cwd=clone).strip()
    clean = f"spack-appimage {VERSION} (commit {head[:12]})"
    assert identity_of(extension) == clean
    # A site's clone, owned by its admin, run by a user: git alone would refuse it.
    assert "dubious ownership" in ordinary_user.run(
        ["git", "-C", str(clone), "rev-parse", "HEAD"]).stderr
    assert identity_of(extension, ordinary_user) == clean
    # Files outside the extension (README, tests) are not what runs.
    with open(clone / "README.md", "a") as f:
        f.write("\nlocal note\n")
    assert identity_of(extension) == clean
    with open(extension / "appimage" / "runtime" / "runtime.c", "a") as f:
        f.write("/* a local change */\n")
    assert identity_of(extension) == clean[:-1] + ", dirty)"
    assert identity_of(extension, ordinary_user) == clean[:-1] + ", dirty)"
    # A pip install: no clone, the version alone; also inside an unrelated git tree
    # (a home directory under git) that does not track the extension.
    home = shared_dir / "home"
    git("init", "--quiet", str(home), cwd=shared_dir)
    for copy in (shared_dir / "site-packages" / "spack-appimage", home / "spack-appimage"):
        shutil.copytree(extension, copy)
        assert identity_of(copy) == f"spack-appimage {VERSION}"
    # A copy in a shared directory where another user planted a .git whose config runs a
    # command (core.fsmonitor) when git looks at the tree: never asked.
    scratch = shared_dir / "scratch"
    scratch.mkdir()
    copy = scratch / "spack-appimage"
    shutil.copytree(extension, copy)
    ran = shared_dir / "planted-command-ran"
    git("init", "--quiet", str(scratch), cwd=shared_dir)
    git("config", "core.fsmonitor", f"touch {ran}; false #", cwd=scratch)
    for directory, _, names in os.walk(scratch / ".git"):
        for path in [directory] + [os.path.join(directory, n) for n in names]:
            os.lchown(path, other_user.uid, other_user.gid)
    subprocess.run(["git", "-c", "safe.directory=*", "status"], cwd=copy, capture_output=True)
    assert ran.exists()  # armed: git as anyone trusting that tree runs it
    ran.unlink()
    assert identity_of(copy) == f"spack-appimage {VERSION}"
    assert not ran.exists()


def copy_env(site, parent, name, config=""):
    """A copy of the session's environment (its spack.yaml, plus ``config``, and its
    spack.lock: nothing to concretize or install)."""
    path = pathlib.Path(parent) / name
    path.mkdir()
    shutil.copy(os.path.join(site.env, "spack.lock"), path)
    with open(os.path.join(site.env, "spack.yaml")) as f:
        (path / "spack.yaml").write_text(f.read() + config)
    return path


def runtime_config(path):
    return f"  config:\n    appimage:\n      runtime: {path}\n"


def setting_line(env):
    """`` (in FILE:LINE)`` of the runtime setting of ``env``'s spack.yaml."""
    lines = (env / "spack.yaml").read_text().splitlines()
    number = next(i for i, line in enumerate(lines, 1) if "runtime:" in line)
    return f"config:appimage:runtime (in {env / 'spack.yaml'}:{number})"


def manifest_of(image, user=None):
    argv = [str(image), "--appimage-manifest"]
    run = user.run(argv) if user else subprocess.run(argv, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.fixture(scope="module")
def images(site, images_dir, tmp_path_factory):
    """The same image asked for twice in different words (absolute -e and -o; then
    relative ones, -f over an existing file, -j, Spack's -v, --entry=NAME), and one with
    another entry set."""
    work = tmp_path_factory.mktemp("provenance")
    env = copy_env(site, work, "env")
    for name in ("one", "two", "other"):
        (images_dir / name).mkdir()
    one, two, other = (images_dir / n / "x.app" for n in ("one", "two", "other"))
    site("appimage", *ENTRIES, "-o", str(one), env=str(env))
    two.write_text("an older file, replaced with -f\n")
    relative_env = os.path.relpath(env, two.parent)
    site("-v", "-e", relative_env, "appimage", "--entry=ai-hello=ai-hello", "--entry", "ai-cxx",
         "-o", "x.app", "-f", "-j", "1", cwd=two.parent)
    site("appimage", "--entry", "ai-hello=ai-hello", "-o", str(other), env=str(env))
    return env, one, two, other


def test_the_same_image_however_it_was_asked_for(images):
    _, one, two, _ = images
    assert subprocess.run(["cmp", str(one), str(two)]).returncode == 0


def test_manifest_records_environment_tool_and_normalized_command(images):
    env, one, _, other = images
    text = manifest_of(one)
    manifest = json.loads(text)
    lock = (env / "spack.lock").read_bytes()
    assert manifest["environment"] == {"path": os.path.realpath(env),
                                       "spack_lock_sha256": hashlib.sha256(lock).hexdigest()}
    head = git("rev-parse", "HEAD").strip()
    dirty = bool(git("status", "--porcelain", "--", "spack-appimage").strip())
    assert manifest["tool"] == {"name": "spack-appimage", "version": VERSION,
                                "commit": head, "dirty": dirty}
    assert manifest["command"] == ["spack", "-e", os.path.realpath(env), "appimage",
                                   *ENTRIES, "--output", "x.app"]
    assert socket.gethostname() not in text
    different = json.loads(manifest_of(other))
    assert different["command"] == ["spack", "-e", os.path.realpath(env), "appimage",
                                    "--entry", "ai-hello=ai-hello", "--output", "x.app"]
    assert [e["name"] for e in different["entries"]] == ["ai-hello"]
    assert [e["name"] for e in manifest["entries"]] == ["ai-hello", "ai-cxx"]


def test_image_prints_what_compiled_its_runtime(images, ordinary_user):
    from spack.extensions.appimage import runtime

    _, one, _, _ = images
    run = ordinary_user.run([str(one), "--appimage-version"])
    assert run.returncode == 0
    assert run.stderr == f"AppImage runtime version: {runtime.build_line()}\n"
    assert runtime.build_line() == (f"{expected_identity()}, runtime source "
                                    f"{runtime.source_digest()}")
    # The compiled runtime carries the digest alone: the version and commit are the
    # image's (written at assembly), so an image does not depend on when the compile
    # cache was filled.
    assert runtime.carried_digest(runtime.build()) == runtime.source_digest()
    with open(runtime.build(), "rb") as f:
        assert expected_identity().encode() not in f.read()
    # The image still runs as an ordinary user.
    hello = ordinary_user.run([str(one), "ai-hello"])
    assert hello.returncode == 0, hello.stderr


@pytest.fixture(scope="module")
def other_runtime(our_runtime, tmp_path_factory):
    """Our runtime compiled from other sources (a comment more in runtime.c): what a
    site's pre-built runtime is once an upgrade has changed the runtime."""
    from spack.extensions.appimage import runtime

    sources = tmp_path_factory.mktemp("other-runtime-sources")
    for path in runtime.SOURCES:
        shutil.copy(path, sources)
    with open(sources / "runtime.c", "a") as f:
        f.write("/* another revision */\n")
    patch = pytest.MonkeyPatch()
    patch.setattr(runtime, "SOURCES", sorted(str(p) for p in sources.iterdir()))
    runtime.source_digest.cache_clear()
    try:
        return runtime.build(), runtime.source_digest()
    finally:
        patch.undo()
        runtime.source_digest.cache_clear()


def test_a_stale_prebuilt_runtime_is_named_with_the_command_that_rebuilds_it(
        site, other_runtime, images_dir, tmp_path):
    from spack.extensions.appimage import runtime

    compiled, digest = other_runtime
    assert digest != runtime.source_digest()
    prebuilt = images_dir / "opt" / "runtime"
    prebuilt.parent.mkdir()
    shutil.copy(compiled, prebuilt)
    env = copy_env(site, tmp_path, "env", runtime_config(prebuilt))
    image = images_dir / "opt" / "stale.app"
    result = site("appimage", "--entry", "ai-hello=ai-hello", "-o", str(image), env=str(env))
    [warning] = [line for line in result.stderr.splitlines() if "Warning" in line]
    assert warning.startswith(f"==> Warning: {setting_line(env)}: {prebuilt} was built from "
                              "other runtime sources")
    assert f"runtime source {digest}" in warning
    assert warning.endswith(f"; rebuild it: {PREBUILD.format(prebuilt)}")
    # The image is made with it, runs, and says so.
    assert subprocess.run([str(image), "ai-hello"], capture_output=True).returncode == 0
    version = subprocess.run([str(image), "--appimage-version"], capture_output=True,
                             text=True).stderr
    assert version.strip().endswith(f"runtime source {digest}")
    # The command the warning names makes it current.
    subprocess.run(["sh", "-c", PREBUILD.format(prebuilt)], env=site.env_vars, check=True,
                   cwd=tmp_path)
    result = site("appimage", "--entry", "ai-hello=ai-hello", "-o", str(image), "-f", env=str(env))
    assert "Warning" not in result.stderr
    assert runtime.carried_digest(str(prebuilt)) == runtime.source_digest()


def test_a_config_runtime_that_is_not_elf_names_the_setting(site, tmp_path):
    bogus = tmp_path / "runtime"
    bogus.write_text("#!/bin/sh\n")
    env = copy_env(site, tmp_path, "env", runtime_config(bogus))
    line = fails(site, "--entry", "ai-hello=ai-hello", "-o", str(tmp_path / "x.app"),
                 spack_options=("-e", str(env)))
    assert line == (f"==> Error: {setting_line(env)}: the runtime {bogus} is not an ELF "
                    f"file; pre-build the runtime there: {PREBUILD.format(bogus)}, or "
                    "remove the setting")
    assert not (tmp_path / "x.app").exists()
