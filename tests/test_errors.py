"""Every failure a user can cause: one `==> Error:` line naming cause and fix, exit 1
(2 for usage errors), no traceback, and no output file created or clobbered."""

import getpass
import glob
import os
import shutil
import subprocess

import pytest
from conftest import cc, fails

from spack.extensions.appimage import assemble, relocate, runtime
from spack.extensions.appimage.errors import AuditError, ToolError
from spack.extensions.appimage.policy import DEFAULT_POLICY


@pytest.fixture
def out(site, tmp_path):
    """An output path; the test checks it never appears, and that no temporary file is
    left next to it or in TMPDIR."""
    output = tmp_path / "out" / "x.app"
    output.parent.mkdir()
    (tmp_path / "tmp").mkdir()
    saved = site.env_vars.get("TMPDIR")
    site.env_vars["TMPDIR"] = str(tmp_path / "tmp")
    yield output
    site.env_vars.pop("TMPDIR")
    if saved is not None:
        site.env_vars["TMPDIR"] = saved
    assert not output.exists()
    # ($TMPDIR/$USER is Spack's own build stage, when a test installs something.)
    left = [e for e in os.listdir(tmp_path / "tmp") if e != getpass.getuser()]
    assert os.listdir(output.parent) == [] and left == []


@pytest.mark.parametrize(
    "entry, message",
    [
        ("nope", "--entry nope: no bin/nope in the environment's installed specs"),
        ("ai-hello", "--entry ai-hello: bin/ai-hello is in several specs: ai-cxx@1.0/"),
        ("ai-hello", "say which with --entry ai-hello=SPEC"),
        ("not-executable", "is not an executable file"),
        ("../../etc/passwd", "is not a name or a path inside a prefix"),
        ("ai-hello=ai-side", "--entry ai-hello=ai-side: no bin/ai-hello in the environment"),
        ("ai-hello=nothing-like-this", "no installed spec of the environment matches"),
        ("gcc", "no bin/gcc"),  # build-only and external nodes offer no entries
    ],
)
def test_bad_entry(site, stub_runtime, out, entry, message):
    line = fails(site, "--runtime", stub_runtime, "-o", str(out), "--entry", entry, env=site.env)
    assert message in line


def test_default_entry_must_be_an_entry(site, stub_runtime, out):
    line = fails(site, "--runtime", stub_runtime, "-o", str(out), "--entry", "ai-origin",
                 "--default-entry", "ai-cxx", env=site.env)
    assert "--default-entry ai-cxx is not one of the entries (ai-origin)" in line


def test_no_environment(site, out):
    assert "requires an environment" in fails(site, "--entry", "x", "-o", str(out))


def test_missing_entry_flag_is_a_usage_error(site, out):
    result = site("appimage", "-o", str(out), env=site.env, check=False)
    assert result.returncode == 2 and "--entry" in result.stderr


def test_unknown_compression_is_a_usage_error(site, out):
    result = site("appimage", "--entry", "ai-origin", "--compression", "brotli",
                  env=site.env, check=False)
    assert result.returncode == 2 and "invalid choice: 'brotli'" in result.stderr


def test_not_concretized_then_not_installed_then_install(site, stub_runtime, out, tmp_path):
    env = site.make_env("lonely", ["ai-lonely"])
    args = ["--runtime", stub_runtime, "-o", str(out), "--entry", "ai-lonely"]
    assert "has no concrete specs" in fails(site, *args, env=env)
    site("concretize", env=env)
    line = fails(site, *args, env=env)
    assert "not installed: ai-lonely@1.0/" in line
    done = tmp_path / "lonely.app"
    site("appimage", "--install", "--runtime", stub_runtime, "-o", str(done),
         "--entry", "ai-lonely", env=env)
    assert done.read_bytes()[8:11] == assemble.MAGIC


def test_existing_output_is_kept_without_force(site, stub_runtime, tmp_path):
    output = tmp_path / "x.app"
    output.write_text("precious")
    line = fails(site, "--runtime", stub_runtime, "-o", str(output), "--entry", "ai-origin",
                 env=site.env)
    assert "already exists" in line and "--force" in line
    assert output.read_text() == "precious"
    assert os.listdir(tmp_path) == ["x.app"]


def test_output_directory_missing_or_a_directory(site, stub_runtime, tmp_path):
    line = fails(site, "--runtime", stub_runtime, "-o", str(tmp_path / "no" / "x.app"),
                 "--entry", "ai-origin", env=site.env)
    assert "does not exist" in line
    assert "is a directory" in fails(site, "--runtime", stub_runtime, "-o", str(tmp_path),
                                     "--entry", "ai-origin", env=site.env)


def test_read_only_output_directory(site, stub_runtime, tmp_path):
    # A read-only filesystem: even root cannot write there.
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        line = fails(site, "--runtime", stub_runtime, "-o", str(ro / "x.app"), "--entry",
                     "ai-origin", env=site.env)
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    assert "is not writable" in line


@pytest.mark.parametrize(
    "content, message",
    [
        (b"#!/bin/sh\n", "is not an ELF file"),
        (None, "has no AppImage type-2 magic"),
        (b"trailing", "bytes after its ELF end"),
    ],
)
def test_bad_runtime(site, stub_runtime, out, tmp_path, content, message):
    runtime = tmp_path / "runtime"
    if content is None:
        shutil.copy(stub_runtime, runtime)
        with open(runtime, "rb+") as f:
            f.seek(8)
            f.write(b"\0\0\0")
    elif content == b"trailing":
        runtime.write_bytes(open(stub_runtime, "rb").read() + content)
    else:
        runtime.write_bytes(content)
    assert message in fails(site, "--runtime", str(runtime), "-o", str(out), "--entry",
                            "ai-origin", env=site.env)


def test_runtime_libraries_missing_names_what_provides_them():
    with pytest.raises(ToolError) as error:
        runtime._pkg_config(["squashfuse_ll", "no-such-library"], [])
    assert "spack install squashfuse libfuse@3" in error.value.message
    assert "apt install libsquashfuse-dev libfuse3-dev" in error.value.message


def test_unresolvable_library(site, stub_runtime, out):
    [side] = [os.path.join(r, "libside.so") for r, _, f in os.walk(site.store)
              if "libside.so" in f]
    os.rename(side, side + ".away")
    try:
        line = fails(site, "--runtime", stub_runtime, "-o", str(out), "--entry",
                     "ai-hello=ai-hello", env=site.env)
    finally:
        os.rename(side + ".away", side)
    assert "cannot find libside.so, needed by " in line and "/bin/ai-hello" in line


def test_mksquashfs_missing(site, stub_runtime, out, tmp_path):
    # PATH with spack's python and gcc, but without mksquashfs
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("python3", "gcc", "cc", "patchelf", "spack"):
        found = shutil.which(tool)
        if found:
            os.symlink(found, bin_dir / tool)
    saved = site.env_vars["PATH"]
    site.env_vars["PATH"] = f"{bin_dir}"
    try:
        line = fails(site, "--runtime", stub_runtime, "-o", str(out), "--entry", "ai-origin",
                     env=site.env)
    finally:
        site.env_vars["PATH"] = saved
    assert "mksquashfs not found" in line


def test_invalid_config_value(site, stub_runtime, out):
    result = site("-c", "config:appimage:compression:brotli", "appimage", "--runtime",
                  stub_runtime, "-o", str(out), "--entry", "ai-origin", env=site.env,
                  check=False)
    assert result.returncode == 1 and "unknown compression 'brotli'" in result.stderr


def test_audit_catches_a_planted_absolute_rpath(tmp_path):
    appdir = tmp_path / "AppDir"
    (appdir / "lib").mkdir(parents=True)
    cc(str(appdir / "lib" / "libq.so"), "int q(void) { return 1; }", "-shared", "-fPIC")
    cc(str(appdir / "main"), "int q(void); int main(void) { return q(); }",
       f"-L{appdir / 'lib'}", "-lq", "-Wl,-rpath,/opt/store/lib:$ORIGIN/lib",
       "-Wl,--disable-new-dtags")
    with pytest.raises(AuditError) as error:
        relocate.audit(str(appdir), DEFAULT_POLICY.patterns, ["/opt/store"])
    assert "main: RPATH entry /opt/store/lib is not relative to $ORIGIN" in error.value.long_message

    relocate.set_rpath(str(appdir / "main"), ["$ORIGIN/lib"], relocate.find_patchelf())
    relocate.audit(str(appdir), DEFAULT_POLICY.patterns, ["/opt/store"])  # now clean

    os.remove(appdir / "lib" / "libq.so")
    with pytest.raises(AuditError) as error:
        relocate.audit(str(appdir), DEFAULT_POLICY.patterns, ["/opt/store"])
    assert "main: NEEDED libq.so is not in the AppDir" in error.value.long_message


def test_audit_reads_needed_alike_with_and_without_spack_verify_libraries(site, tmp_path):
    """Spack < 1.0 has no ``spack.verify_libraries``; the audit then reads NEEDED with the
    closure's ELF reader. On a real AppDir both readings agree: nothing unresolved, then
    exactly the library whose files were removed."""
    appdir = tmp_path / "AppDir"
    site("appimage", "--entry", "ai-hello=ai-hello", "-o", str(tmp_path / "x.app"),
         "--keep-appdir", str(appdir), env=site.env)
    patterns = DEFAULT_POLICY.patterns
    readings = [relocate.unresolved_by_closure_reader, relocate.unresolved_needed]
    assert [read(str(appdir), patterns) for read in readings] == [{}, {}]
    removed = glob.glob(str(appdir / "opt" / "ai-side-*" / "lib" / "libside*"))
    assert removed
    for path in removed:
        os.remove(path)
    [hello] = glob.glob(str(appdir / "opt" / "ai-hello-*" / "bin" / "ai-hello"))
    expected = {os.path.relpath(hello, appdir): ["libside.so"]}
    assert [read(str(appdir), patterns) for read in readings] == [expected, expected]


def test_an_exclude_spec_that_names_no_spec_is_an_error(site, tmp_path):
    """A misspelt --exclude-spec would leave nothing out, silently."""
    line = fails(site, "--entry", "ai-hello=ai-hello", "--exclude-spec", "ai-lef",
                 "-o", str(tmp_path / "x.app"), env=site.env)
    assert line == ("==> Error: --exclude-spec ai-lef names no spec of the environment; "
                    "did you mean ai-leaf?"), line
    assert os.listdir(tmp_path) == []
