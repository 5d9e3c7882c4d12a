"""Interpreted stacks on real software: a Spack-built CPython 3.11.2 with py-six (pure
Python), py-markupsafe (a C module) and py-wheel (a console script), and a Spack-built
Open MPI 4.1.4, all built offline (tests/offline, the ``offline_site`` fixture).

Images run with the store hidden: in a private mount namespace whose store directory is
an empty tmpfs, so any path into the store fails, and with a TMPDIR of their own.
"""

import inspect
import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import EXTENSION, OFFLINE_PY_VERSIONS, _require

#: Imports of the standard library (pure Python and lib-dynload C modules) and of the
#: bundled extensions; prints what the tests check.
PROBE = """
import ctypes, decimal, email.parser, json, lzma, math, sys, zlib
import six, markupsafe
from markupsafe import _speedups
print(json.dumps({
    "prefix": sys.prefix,
    "six": six.__file__,
    "speedups": _speedups.__file__,
    "escaped": str(markupsafe.escape("<a>")),
    "zlib": zlib.decompress(zlib.compress(b"round trip")).decode(),
    "lzma": lzma.decompress(lzma.compress(b"xz")).decode(),
    "int": ctypes.sizeof(ctypes.c_int),
    "decimal": str(decimal.Decimal(1) / 8),
}))
"""


def run_without_store(site, command, tmp_path, env=None, **kwargs):
    """``command`` in a private mount namespace where the store is an empty directory."""
    _require("unshare", "apt-get install util-linux (see .ci/run)")
    hide = 'mount -t tmpfs none "$0" && exec "$@"'
    environment = dict(os.environ, TMPDIR=str(tmp_path), **(env or {}))
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", hide, site.store,
         *map(str, command)],
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=120, **kwargs)


def build(site, env, output, *entries):
    site("appimage", *[a for e in entries for a in ("--entry", e)], "-o", str(output), env=env)
    return output


@pytest.fixture(scope="module")
def py_app(offline_site, offline_py, tmp_path_factory):
    return build(offline_site, offline_py, tmp_path_factory.mktemp("py") / "py.app", "python3",
                 "wheel")


def dry_run(site, env, *args):
    return json.loads(site("appimage", *args, "--dry-run", "--json", env=env).stdout)


@pytest.mark.parametrize("mode", ["mount", "extract"])
def test_python_runs_its_library_and_extensions_without_the_store(offline_site, py_app,
                                                                 tmp_path, mode):
    env = {"APPIMAGE_EXTRACT_AND_RUN": "1"} if mode == "extract" else {}
    run = run_without_store(offline_site, [py_app, "python3", "-c", PROBE], tmp_path, env)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["prefix"].startswith(str(tmp_path) + "/")  # inside the mount or extraction
    assert seen["prefix"].endswith("/opt/" + os.path.basename(seen["prefix"]))
    for module in ("six", "speedups"):
        assert seen[module].startswith(os.path.dirname(seen["prefix"]) + "/py-")
    assert seen["escaped"] == "&lt;a&gt;"
    assert (seen["zlib"], seen["lzma"], seen["int"], seen["decimal"]) == (
        "round trip", "xz", 4, "0.125")


def test_modules_load_from_bytecode_never_recompiled(offline_site, py_app, tmp_path):
    run = run_without_store(
        offline_site, [py_app, "python3", "-v", "-c", "import json, email.parser, six"],
        tmp_path)
    assert run.returncode == 0, run.stderr
    assert "bytecode is stale" not in run.stderr
    loaded = [line for line in run.stderr.splitlines() if line.startswith("# code object from")]
    assert len(loaded) > 10 and all(".pyc'" in line for line in loaded), run.stderr
    assert any("/py-six-" in line for line in loaded)


def test_bytecode_is_unchecked_hash_based_and_builds_are_identical(offline_site, offline_py,
                                                                   py_app, tmp_path):
    subprocess.run([py_app, "--appimage-extract"], cwd=tmp_path, check=True,
                   capture_output=True)
    flags = {}
    for root, _, names in os.walk(tmp_path / "squashfs-root" / "opt"):
        for name in names:
            if name.endswith(".pyc"):
                with open(os.path.join(root, name), "rb") as f:
                    flags[os.path.join(root, name)] = int.from_bytes(f.read(8)[4:], "little")
    assert len(flags) > 500
    assert set(flags.values()) == {1}  # PEP 552: hash-based, not checked against the source
    assert not any(".opt-1." in p or ".opt-2." in p for p in flags)
    # The same command twice (the manifest records it): the same bytes.
    output = tmp_path / "again.app"
    first = build(offline_site, offline_py, output, "python3", "wheel")
    first = first.rename(tmp_path / "first")
    assert build(offline_site, offline_py, output, "python3", "wheel").read_bytes() == \
        first.read_bytes()


def test_console_script_of_an_extension_runs_as_an_entry(offline_site, py_app, tmp_path):
    run = run_without_store(offline_site, [py_app, "wheel", "version"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"wheel {OFFLINE_PY_VERSIONS['py-wheel']}"


def test_what_interpreters_never_need_is_left_out(offline_site, py_app):
    manifest = json.loads(subprocess.run([py_app, "--appimage-manifest"], check=True,
                                         capture_output=True, text=True).stdout)
    paths = [f["path"] for f in manifest["files"]]
    tree = next(p.split("/lib/python3.11/")[0] for p in paths if "/lib/python3.11/os.py" in p)
    assert f"{tree}/lib/python3.11/json/__init__.py" in paths
    assert any(p.startswith(f"{tree}/lib/python3.11/lib-dynload/zlib.") for p in paths)
    for never in ("/lib/python3.11/test/", "/unittest/test/", "/idlelib/", "/tkinter/",
                  "/ensurepip/_bundled/", "/lib-dynload/_testcapi", ".opt-1.pyc",
                  "/config-3.11-x86_64-linux-gnu/libpython3.11.a"):
        assert not any(never in p for p in paths), never
    assert [c["name"] for c in manifest["run_environment"] if c["op"] == "prepend"].count(
        "PYTHONPATH") == 3  # six, markupsafe, wheel


def test_dry_run_lists_trees_environment_and_store_paths(offline_site, offline_py):
    report = dry_run(offline_site, offline_py, "--entry", "python3",
                     "--entry", "wheel")
    roles = {i["owner"].rsplit("-", 2)[0]: i for i in report["interpreters"]}
    assert roles["python"]["role"] == "interpreter"
    assert roles["python"]["trees"][0].endswith("/lib/python3.11")
    assert roles["python"]["bytes"] > 10_000_000
    assert {"py-six", "py-markupsafe", "py-wheel"} <= set(roles)
    assert roles["py-six"]["role"] == "extension of python"
    pythonpath = [c["value"] for c in report["run_environment"] if c["name"] == "PYTHONPATH"]
    assert all(v.startswith("${APPDIR}/opt/py-") for v in pythonpath) and len(pythonpath) == 3
    leaks = {entry["owner"].rsplit("-", 2)[0]: entry["paths"] for entry in report["store_paths"]}
    # sysconfig's build-time data names the store: reported, not hidden; the launcher of
    # the wheel entry names it only in its #! lines, which AppRun does not use
    assert any(p.endswith("_sysconfigdata__linux_x86_64-linux-gnu.py") for p in leaks["python"])
    assert not any(p.endswith("/bin/wheel") for p in leaks.get("py-wheel", []))
    text = offline_site("appimage", "--entry", "python3", "--dry-run",
                        env=offline_py).stdout
    assert "interpreters and extensions:" in text and "files that name the store" in text
    assert "paths of python-3.11.2-" in text  # the thousand .opt-N.pyc files, grouped


def test_exclude_spec_leaves_an_extension_out(offline_site, offline_py):
    report = dry_run(offline_site, offline_py, "--entry", "python3",
                     "--exclude-spec", "py-six")
    owners = [s["owner"] for s in report["specs"]]
    assert not any(o.startswith("py-six-") for o in owners)
    assert any(o.startswith("py-markupsafe-") for o in owners)


def test_build_says_which_files_name_the_store(offline_site, offline_py, tmp_path):
    """By default (--store-view auto) the image shows them at their store paths, and the
    build says so; without the view it warns."""
    build = offline_site("appimage", "--entry", "python3", "-o", str(tmp_path / "p.app"),
                         env=offline_py)
    said = build.stderr + build.stdout
    assert re.search(r"==> \d+ files of python-3\.11\.2-\w+ name the store: the image shows "
                     "them at their store paths where the node allows user namespaces", said)
    never = offline_site("appimage", "--entry", "python3", "-o", str(tmp_path / "n.app"),
                         "--store-view", "never", env=offline_py)
    assert re.search(r"==> Warning: \d+ files of python-3\.11\.2-\w+ name the store; programs "
                     "reading them may fail on other machines", never.stderr + never.stdout)


def test_an_extension_without_its_interpreter_is_an_error(offline_site, offline_py):
    failed = offline_site("appimage", "--entry", "xz", "--include", "py-six:lib/**",
                          "--dry-run", env=offline_py, check=False)
    assert failed.returncode == 1
    assert "py-six" in failed.stderr and "extends python" in failed.stderr
    assert "Traceback" not in failed.stderr


#: The bundled Open MPI's tests need its build (8 minutes per Spack version the first
#: time), so the matrix runs them with the first Spack only: the Spack interfaces they use
#: (specs, relocation, the closure) are those every test package uses on every version, and
#: what is Open MPI's own (OPAL_PREFIX, orted, text files naming the prefix) comes from
#: Open MPI 4.1.4's build, the same whichever Spack built it.
one_spack = pytest.mark.one_spack


@pytest.fixture(scope="module")
def mpi_app(offline_site, offline_mpi, tmp_path_factory):
    return build(offline_site, offline_mpi, tmp_path_factory.mktemp("mpi") / "mpi.app",
                 "mpi-hello", "mpirun")


@one_spack
def test_bundled_open_mpi_runs_as_singleton_without_the_store(offline_site, mpi_app,
                                                              tmp_path):
    run = run_without_store(offline_site, [mpi_app, "mpi-hello"], tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "rank 0 of 1 sum 1"


@one_spack
def test_bundled_open_mpi_runs_under_its_own_mpirun(offline_site, mpi_app, tmp_path):
    run = run_without_store(
        offline_site, [mpi_app, "mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2",
                       "mpi-hello"], tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(run.stdout.splitlines()) == ["rank 0 of 2 sum 3", "rank 1 of 2 sum 3"]


@one_spack
def test_open_mpi_is_relocated_and_its_daemon_bundled(offline_site, offline_mpi):
    report = dry_run(offline_site, offline_mpi, "--entry", "mpi-hello")
    opal = [c for c in report["run_environment"] if c["name"] == "OPAL_PREFIX"]
    assert len(opal) == 1 and opal[0]["value"].startswith("${APPDIR}/opt/openmpi-4.1.4-")
    assert any(i["path"].endswith("/bin/orted") for i in report["included"])
    # libnl-3, which a component of Open MPI loads from /usr/lib, belongs to no spec: it
    # is the host's (opt/host), not the glibc external's, though both live in /usr.
    owners = [o["owner"] for o in report["specs"]]
    assert "host" in owners and not any(o.startswith("glibc") for o in owners)


def set_prefix(spec, path):
    """Points ``spec`` at another prefix: ``Spec.set_prefix`` since Spack 1.0, the
    ``prefix`` property's setter before."""
    if hasattr(spec, "set_prefix"):
        spec.set_prefix(path)
    else:
        spec.prefix = path


def test_an_interpreter_without_its_library_tree_is_an_error(offline_site, offline_py,
                                                            tmp_path):
    """Said as what it is, a layout the extension does not know, not a broken install."""
    import spack.spec
    from spack.extensions.appimage import interpreters
    from spack.extensions.appimage.errors import AppImageError

    installed = offline_site("location", "-i", "python", env=offline_py).stdout
    python = spack.spec.Spec.from_specfile(os.path.join(installed.strip(), ".spack",
                                                        "spec.json"))
    copy = tmp_path / "python-copy"  # the install without lib/python3.11
    shutil.copytree(os.path.join(installed.strip(), "bin"), copy / "bin", symlinks=True)
    set_prefix(python, str(copy))
    with pytest.raises(AppImageError) as error:
        interpreters.check_library(python)
    assert str(error.value) == (
        f"python@3.11.2/{python.dag_hash(7)} has no library tree lib/python3.11 in {copy}, "
        "where Spack's python recipe puts it, and cannot start without it; its layout is not "
        "one spack-appimage knows (README, 'Interpreters'): leave python out of the entries")


def test_an_unreadable_library_tree_is_an_error(offline_site, offline_py, tmp_path):
    """As root, without the capabilities that let root read anything."""
    installed = offline_site("location", "-i", "python", env=offline_py).stdout
    copy = tmp_path / "python-copy"
    (copy / "lib" / "python3.11").mkdir(parents=True)
    os.chmod(copy / "lib" / "python3.11", 0)
    script = tmp_path / "check.py"
    script.write_text(
        "import spack.extensions, spack.spec\n"
        f"spack.extensions.ensure_extension_loaded('appimage', path={EXTENSION!r})\n"
        "from spack.extensions.appimage import interpreters\n"
        f"python = spack.spec.Spec.from_specfile({installed.strip()!r} + '/.spack/spec.json')\n"
        + inspect.getsource(set_prefix) +
        f"set_prefix(python, {str(copy)!r})\n"
        "interpreters.check_library(python)\n")
    result = subprocess.run(
        [shutil.which("setpriv"), "--bounding-set", "-dac_override,-dac_read_search",
         "spack", "python", str(script)],
        env=offline_site.env_vars, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0
    assert f"cannot read {copy}/lib/python3.11, the library tree of python@3.11.2/" in \
        result.stderr
    assert "make it readable by you, or reinstall the spec" in result.stderr
