"""What stays on the host (external MPI, GPU driver, --host-lib), what the ELF closure
cannot see (plugins, --include), data rules, script entries, and the checks AppRun
makes before it runs an entry. Real Spack, real Debian OpenMPI as an external, real runs."""

import glob
import json
import os
import platform
import shutil
import struct
import subprocess

import pytest
from conftest import cc, fails, store_renamed_away

from spack.extensions.appimage import apprun, elf

MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2"]


def make(site, tmp_path, name, *args):
    """Build tmp_path/name.app, keeping its AppDir in tmp_path/name; return both."""
    output, appdir = tmp_path / f"{name}.app", tmp_path / name
    site("appimage", "-o", str(output), "--keep-appdir", str(appdir), *args, env=site.env)
    return str(output), appdir


def files(appdir):
    return {os.path.relpath(os.path.join(r, n), appdir) for r, ds, ns in os.walk(appdir)
            for n in ns + ds}


def names(appdir):
    return {os.path.basename(f) for f in files(appdir)}


def driver_dir(site):
    [path] = glob.glob(os.path.join(site.store, "**", "ai-gpu-*", "lib", "driver"),
                       recursive=True)
    return path


def test_external_mpi_stays_on_the_host(site, tmp_path):
    image, appdir = make(site, tmp_path, "mpi", "--entry", "mpi-hello")
    assert not any(n.startswith("libmpi") for n in names(appdir))
    table = (appdir / ".appimage" / "entries").read_text()
    assert "host\tmpi-hello\tlibmpi.so.40\texternal openmpi@4.1.4\n" in table
    with store_renamed_away(site):
        run = subprocess.run(MPIRUN + [image, "mpi-hello"], capture_output=True, text=True,
                             cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert sorted(run.stdout.splitlines()) == ["rank 0 of 2 sum 3", "rank 1 of 2 sum 3"]


def test_bundle_externals_bundles_the_mpi(site, tmp_path):
    image, appdir = make(site, tmp_path, "mpib", "--entry", "mpi-hello", "--bundle-externals")
    assert "libmpi.so.40" in names(appdir)
    assert "libmpi.so.40" not in (appdir / ".appimage" / "entries").read_text()
    run = subprocess.run(MPIRUN + [image, "mpi-hello"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "rank 1 of 2 sum 3" in run.stdout


def test_gpu_driver_library_comes_from_the_host(site, tmp_path):
    image, appdir = make(site, tmp_path, "gpu", "--entry", "gpu-app")
    assert "libcuda.so.1" not in names(appdir)
    found = subprocess.run([image], capture_output=True, text=True,
                           env=dict(os.environ, LD_LIBRARY_PATH=driver_dir(site)))
    assert found.stdout == "gpu app: driver fake-driver-1\n"
    missing = subprocess.run([image], capture_output=True, text=True)
    assert missing.returncode == 127
    assert missing.stderr == (
        "gpu.app: gpu-app needs libcuda.so.1 (GPU driver) from this host, and the loader "
        "cannot find it: load the module that provides it, or add its directory to "
        "LD_LIBRARY_PATH\n")


def test_bundle_lib_and_host_lib_override_the_policy(site, tmp_path):
    image, appdir = make(site, tmp_path, "gpub", "--entry", "gpu-app",
                         "--bundle-lib", "libcuda.so*")
    assert "libcuda.so.1" in names(appdir)
    assert subprocess.run([image], capture_output=True, text=True).stdout == \
        "gpu app: driver fake-driver-1\n"

    image, appdir = make(site, tmp_path, "hostleaf", "--entry", "ai-hello=ai-hello",
                         "--host-lib", "libleaf.so*")
    assert not any(n.startswith("libleaf") for n in names(appdir))
    run = subprocess.run([image], capture_output=True, text=True)
    assert run.returncode == 127
    assert "ai-hello needs libleaf.so.1 (--host-lib) from this host" in run.stderr


def test_included_plugin_and_its_closure(site, tmp_path):
    image, appdir = make(site, tmp_path, "plug", "--entry", "plugin-host")
    assert subprocess.run([image], capture_output=True, text=True).stdout.startswith(
        "no plugin")
    image, appdir = make(site, tmp_path, "plugi", "--entry", "plugin-host",
                         "--include", "ai-plugin:lib/plugins/*.so")
    assert {"libplug.so", "libleaf.so.1"} <= names(appdir)
    with store_renamed_away(site):
        run = subprocess.run([image], capture_output=True, text=True)
    assert run.stdout == "plugin host: plugin-ok\n"


def test_bad_include_is_an_error(site, tmp_path):
    result = site("appimage", "--entry", "plugin-host", "--include", "ai-plugin:lib/nothing*",
                  "-o", str(tmp_path / "x.app"), env=site.env, check=False)
    assert result.returncode == 1
    assert "--include ai-plugin:lib/nothing*: nothing matches lib/nothing*" in result.stderr
    assert not (tmp_path / "x.app").exists()


@pytest.mark.parametrize("include,message", [
    ("ai-plugin@@1:lib/*", "--include ai-plugin@@1:lib/*: 'ai-plugin@@1' is not a spec ("),
    ("mpi:lib/*", "--include mpi:lib/*: no installed specs of the environment match mpi "
                  "(specs are matched by their own name: for a virtual, name its provider)"),
])
def test_include_naming_no_spec_is_one_line(site, include, message):
    line = fails(site, "--entry", "plugin-host", "--include", include, "--dry-run",
                 env=site.env)
    assert message in line


def test_exclude_and_keep_data(site, tmp_path):
    _, appdir = make(site, tmp_path, "data", "--entry", "ai-hello=ai-hello",
                     "--keep", "share/man*", "--exclude", "share/leaf/*")
    present = names(appdir)
    assert "leaf.1" in present and "leaf.dat" not in present and "greeting.txt" in present
    assert "leaf.h" not in present


def test_script_entries_run_with_the_bundled_interpreter(site, tmp_path):
    image, appdir = make(site, tmp_path, "scripts", "--entry", "say-hello",
                         "--entry", "say-sbang")
    assert "ai-interp" in names(appdir)
    with store_renamed_away(site):
        for mode in ({}, {"APPIMAGE_EXTRACT_AND_RUN": "1"}):
            env = dict(os.environ, **mode)
            hello = subprocess.run([image, "say-hello", "x"], capture_output=True, text=True,
                                   env=env, cwd=tmp_path)
            assert hello.stdout == "HELLO FROM A SCRIPT\nargs: x\n", hello.stderr
            sbang = subprocess.run([image, "say-sbang"], capture_output=True, text=True,
                                   env=env)
            assert sbang.stdout == "via sbang\nargs:\n", sbang.stderr


def test_the_shebang_of_a_script_entry_is_not_reported_as_naming_the_store(site, tmp_path):
    """AppRun runs a script entry with its bundled interpreter: its #! line (and the sbang
    form's two lines), though they name the store, are never read by the kernel."""
    report = json.loads(site("appimage", "--entry", "say-hello", "--entry", "say-sbang",
                             "--dry-run", "--json", env=site.env, cwd=tmp_path).stdout)
    planned = {tree["entry"]: tree["path"] for tree in report["entries"]}
    assert planned["say-hello"].endswith("/bin/say-hello"), planned  # in the image...
    reported = [p for leak in report["store_paths"] for p in leak["paths"]]
    assert not [p for p in reported if p.endswith(("/say-hello", "/say-sbang"))], reported


def test_script_whose_interpreter_is_nowhere_is_an_error(site, tmp_path):
    result = site("appimage", "--entry", "say-nowhere", "-o", str(tmp_path / "x.app"),
                  env=site.env, check=False)
    assert result.returncode == 1
    assert ("--entry say-nowhere: the interpreter /opt/nowhere/bin/tclsh of this script is "
            "neither in the environment nor a program on this machine") in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.app").exists()


def test_apprun_applies_the_run_environment_in_order(tmp_path):
    appdir = tmp_path / "AppDir"
    (appdir / "bin").mkdir(parents=True)
    os.symlink(shutil.which("env"), appdir / "bin" / "env")
    apprun.write_table(str(appdir), [apprun.EntryPoint("env", "bin/env")], None, ["bin"],
                       run_environment=[
                           ("prepend", "PYTHONPATH", "${APPDIR}/a", ":"),
                           ("prepend", "PYTHONPATH", "${APPDIR}/b", ":"),
                           ("append", "LIST", "${APPDIR}/z;${APPDIR}/y", ";"),
                           ("set", "OPAL_PREFIX", "${APPDIR}/opt/openmpi", ""),
                           ("unset", "GONE", "", ""),
                       ])
    shutil.copy(apprun.build(), appdir / "AppRun")
    result = subprocess.run([appdir / "AppRun"], capture_output=True, text=True, check=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": "/host", "LIST": "x",
                                 "GONE": "1"})
    seen = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert seen["PYTHONPATH"] == f"{appdir}/b:{appdir}/a:/host"
    assert seen["LIST"] == f"x;{appdir}/z;{appdir}/y"
    assert seen["OPAL_PREFIX"] == f"{appdir}/opt/openmpi"
    assert "GONE" not in seen


def test_glibc_requirement_is_read_from_symbol_versions(tmp_path):
    # A stand-in libc.so.6 defining GLIBC_2.99, and a library that uses it.
    stub = tmp_path / "stub"
    stub.mkdir()
    (tmp_path / "v.map").write_text("GLIBC_2.99 { global: fake_new; local: *; };\n")
    cc(str(stub / "libc.so.6"), "int fake_new(void) { return 0; }", "-shared", "-fPIC",
       "-nostdlib", "-Wl,-soname,libc.so.6", f"-Wl,--version-script={tmp_path / 'v.map'}")
    user = cc(str(tmp_path / "libuser.so"), "int fake_new(void); int f(void) { return fake_new(); }",
              "-shared", "-fPIC", "-nostdlib", str(stub / "libc.so.6"))
    assert elf.glibc_requirement([elf.read_elf(user)]) == "2.99"
    # The dynamic-array reader agrees with pyelftools, on this and on the host's programs.
    for path in [user, "/bin/true", "/usr/bin/python3", *glob.glob("/usr/lib/x86_64-linux-gnu/libstdc++.so.6")]:
        with open(os.path.realpath(path), "rb") as f:
            assert elf.read_elf(path).glibc == elf._read_with_pyelftools(path, f).glibc
    assert elf.read_elf("/bin/true").glibc >= (2, 2)


def test_apprun_puts_the_bundled_bin_directories_first_in_path(tmp_path):
    appdir = tmp_path / "AppDir"
    (appdir / "opt" / "a" / "bin").mkdir(parents=True)
    os.symlink(shutil.which("env"), appdir / "opt" / "a" / "bin" / "env")
    point = apprun.EntryPoint("env", "opt/a/bin/env")
    apprun.write_table(str(appdir), [point], None, ["opt/a/bin", "opt/b/bin"])
    shutil.copy(apprun.build(), appdir / "AppRun")
    result = subprocess.run([appdir / "AppRun"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"})
    [path] = [line for line in result.stdout.splitlines() if line.startswith("PATH=")]
    assert path == f"PATH={appdir}/opt/a/bin:{appdir}/opt/b/bin:/usr/bin:/bin"


def test_apprun_refuses_a_host_glibc_older_than_needed(tmp_path):
    appdir = tmp_path / "AppDir"
    (appdir / "bin").mkdir(parents=True)
    os.symlink("/bin/true", appdir / "bin" / "true")
    apprun.write_table(str(appdir), [apprun.EntryPoint("true", "bin/true")], None, ["bin"],
                       glibc="2.99")
    shutil.copy(apprun.build(), appdir / "AppRun")
    result = subprocess.run([appdir / "AppRun"], capture_output=True, text=True,
                            env=dict(os.environ, APPIMAGE="/x/old.app"))
    assert result.returncode == 127
    assert result.stderr.startswith("old.app: needs glibc 2.99 or newer, this host has 2.")
    apprun.write_table(str(appdir), [apprun.EntryPoint("true", "bin/true")], None, ["bin"],
                       glibc="2.2")
    assert subprocess.run([appdir / "AppRun"]).returncode == 0


def test_apprun_reads_a_table_of_any_size(tmp_path):
    appdir = tmp_path / "AppDir"
    (appdir / "bin").mkdir(parents=True)
    os.symlink(shutil.which("env"), appdir / "bin" / "env")
    points = [apprun.EntryPoint(f"e{i}", "bin/env") for i in range(3000)]
    apprun.write_table(str(appdir), points, None, [f"d{i}" for i in range(1100)])
    shutil.copy(apprun.build(), appdir / "AppRun")
    result = subprocess.run([appdir / "AppRun", "e2999"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    [path] = [line for line in result.stdout.splitlines() if line.startswith("PATH=")]
    assert path.split(":")[-3:] == [f"{appdir}/d1099", "/usr/bin", "/bin"]


def ld_so_cache(libraries):
    """An /etc/ld.so.cache in glibc's format ("glibc-ld.so.cache1.1") listing
    (flags, name, path) entries."""
    strings, offsets = b"", []
    start = 48 + 24 * len(libraries)
    for _, name, path in libraries:
        offsets.append((start + len(strings), start + len(strings) + len(name) + 1))
        strings += name.encode() + b"\0" + path.encode() + b"\0"
    header = b"glibc-ld.so.cache1.1" + struct.pack("<IIB3xI12x", len(libraries),
                                                      len(strings), 0, 0)
    entries = b"".join(struct.pack("<iIIIQ", flags, key, value, 0, 0)
                       for (flags, _, _), (key, value) in zip(libraries, offsets))
    return header + entries + strings


def test_apprun_looks_for_host_libraries_as_this_hosts_loader_would(tmp_path):
    """In the table's loader directories, and in ld.so.cache only under this
    architecture's flags: a multilib cache also lists 32-bit libraries by the same name."""
    appdir = tmp_path / "AppDir"
    (appdir / "bin").mkdir(parents=True)
    os.symlink("/bin/true", appdir / "bin" / "true")
    shutil.copy(apprun.build(), appdir / "AppRun")
    found, cached = tmp_path / "lib", tmp_path / "cached"
    for directory, name in ((found, "libindir.so.1"), (cached, "libcached.so.1")):
        directory.mkdir()
        (directory / name).write_bytes(b"")
    cache = tmp_path / "ld.so.cache"

    def run(cache_flags, loader_dirs):
        cache.write_bytes(ld_so_cache([(cache_flags, "libcached.so.1",
                                        str(cached / "libcached.so.1"))]))
        apprun.write_table(str(appdir), [apprun.EntryPoint("true", "bin/true")], None,
                           ["bin"], host_libs=[("true", "libcached.so.1", "MPI"),
                                               ("true", "libindir.so.1", "MPI")],
                           loader_dirs=loader_dirs)
        return subprocess.run(
            ["unshare", "-m", "sh", "-c",
             'mount --bind "$1" /etc/ld.so.cache && exec "$2"', "-", cache,
             appdir / "AppRun"], capture_output=True, text=True,
            env={"PATH": "/usr/bin:/bin", "APPIMAGE": "/x/t.app"})

    native = {"x86_64": 0x0303, "aarch64": 0x0A03, "ppc64le": 0x0503}[platform.machine()]
    assert run(native, [str(found)]).returncode == 0
    refused = run(0x0003, [str(found)])  # an i386 library of that name
    assert refused.returncode == 127
    assert refused.stderr.startswith("t.app: true needs libcached.so.1 (MPI) from this host")
    refused = run(native, [])
    assert refused.stderr.startswith("t.app: true needs libindir.so.1 (MPI) from this host")
