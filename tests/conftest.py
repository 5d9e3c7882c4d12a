"""Shared fixtures: a real Spack with the test packages installed once per session.

The Spack on PATH (set up by ../shared/setup-spack, see README) runs every ``spack``
command of the tests in a subprocess, with an isolated user scope (its own install tree,
caches, the test package repository and this extension in ``config:extensions``); the
Spack installation's own scopes (compilers, builtin repo) still apply. Library-level
tests import the extension into this interpreter from the same Spack.
"""

import atexit
import contextlib
import fnmatch
import getpass
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXTENSION = os.path.join(ROOT, "spack-appimage")
OFFLINE = os.path.join(HERE, "offline")

#: The test package repositories. Each has its packages in Spack 1.x's layout
#: (``spack_repo/<namespace>/packages/<name_with_underscores>``) and, for Spack before
#: 1.0, a ``legacy`` repository of links in the older layout (``packages/<name-with-dashes>``)
#: to the same files.
REPOS = {
    "appimage_test": os.path.join(HERE, "repo"),
    "appimage_offline": os.path.join(OFFLINE, "repo"),
}

#: What the test environment holds; one concretization and install for the whole session.
ENV_SPECS = ["ai-hello", "ai-cxx", "ai-origin", "ai-runpath", "ai-mpi", "ai-gpu", "ai-plugin",
             "ai-script"]

#: Debian's OpenMPI as a site's MPI: a non-buildable external, as packages.yaml has it.
PACKAGES_YAML = """\
packages:
  openmpi:
    externals:
    - spec: openmpi@4.1.4
      prefix: /usr
    buildable: false
  mpi:
    require: openmpi
"""


def _require(tool: str, how: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.fail(f"{tool} is not on PATH: {how}", pytrace=False)
    return path


SPACK_MISSING = (
    "spack is not on PATH: run ../shared/setup-spack SPACK_GIT PACKAGES_GIT (see README, 'Tests')"
)

#: Spack's misc cache (repository indexes), shared with the user's Spack: the test scopes
#: are otherwise isolated, but rebuilding the tag index of the ~8,000 builtin packages
#: (which every compiler lookup needs) costs about two minutes per scope. The indexes are
#: keyed by the repositories' state, so sharing them is safe.
MISC_CACHE = os.path.join(
    os.environ.get("SPACK_USER_CACHE_PATH") or os.path.expanduser("~/.spack"), "cache")


def _user_config(directory: str, **entries: str) -> str:
    """A user config scope in ``directory`` with the shared misc cache, a build stage
    beside it (Spack's default, ``$tempdir/$user/spack-stage``, would stay in /tmp) and
    ``entries``."""
    os.makedirs(directory, exist_ok=True)
    stage = os.path.join(os.path.dirname(directory), "stage")
    with open(os.path.join(directory, "config.yaml"), "w") as f:
        f.write(f"config:\n  misc_cache: {MISC_CACHE}\n  build_stage:\n  - {stage}\n")
        for key, value in entries.items():
            f.write(f"  {key}:{value}\n")
    return directory


# Import Spack and the extension into this interpreter, as `spack python` would, with
# user config and cache scopes of its own (the compilers come from Spack's own scopes).
_IN_PROCESS = tempfile.mkdtemp(prefix="spack-appimage-tests-")
os.environ["SPACK_USER_CONFIG_PATH"] = _user_config(os.path.join(_IN_PROCESS, "config"))
os.environ["SPACK_USER_CACHE_PATH"] = os.path.join(_IN_PROCESS, "cache")
atexit.register(shutil.rmtree, _IN_PROCESS, ignore_errors=True)
_SPACK_BIN = shutil.which("spack")
if _SPACK_BIN:
    _spack_root = os.path.dirname(os.path.dirname(os.path.realpath(_SPACK_BIN)))
    _lib = os.path.join(_spack_root, "lib", "spack")
    # Before Spack 1.0, its dependencies sat beside it in lib/spack/external (bin/spack
    # put them on the path); since 1.0 they are inside the spack package.
    sys.path[:0] = [p for p in (os.path.join(_lib, "external"),
                                os.path.join(_lib, "external", "_vendoring"), _lib)
                    if os.path.isdir(p)]
try:
    import spack.extensions  # noqa: E402
    import spack.main  # noqa: E402,F401  (sets up Spack's module state)

    spack.extensions.ensure_extension_loaded("appimage", path=EXTENSION)
except ImportError:
    spack = None


def repos_config(*namespaces: str, indent: str = "") -> str:
    """``repos:`` naming the test repositories ``namespaces``, first first, in the form the
    Spack under test reads: a mapping of new-layout repositories since Spack 1.0, a list
    of legacy-layout ones before."""
    if spack.spack_version_info < (1,):  # legacy layout
        lines = [f"- {os.path.join(REPOS[n], 'legacy')}" for n in namespaces]
    else:
        lines = [f"  {n}: {os.path.join(REPOS[n], 'spack_repo', n)}" for n in namespaces]
    return "".join(f"{indent}{line}\n" for line in ["repos:"] + lines)


#: The shared temporary directories, where the suite must leave nothing new.
SHARED_TMP = ("/tmp", "/var/tmp", "/dev/shm")

#: Entries there that the development machines' own agent tooling makes while a session
#: runs (a shell tool's job and output files): never the suite's.
NOT_THE_SUITES = ("bash_tool_*", "bash_jobs.*")


def _is_runtime_dir(path: str) -> bool:
    """Whether ``path`` is one of the runtime's per-user directories
    (``spack-appimage-<uid>``, or a fallback ``spack-appimage-<uid>.<suffix>``)."""
    name = os.path.basename(path)
    return (name.startswith("spack-appimage-") and name[15:].split(".")[0].isdigit()
            and os.path.isdir(path) and not os.path.islink(path))


def _listing(directory: str):
    """The paths in ``directory``; none if it went meanwhile."""
    try:
        return [os.path.join(directory, name) for name in os.listdir(directory)]
    except FileNotFoundError:
        return []


def _left_in_memory_and_tmp():
    """Every entry of /tmp, /var/tmp and /dev/shm, and every entry of the runtime's per-user
    directories there (mounts, extracted copies and their directories, which must go with
    their last user), but pytest's own ``pytest-of-<user>``: pytest keeps it by its
    retention policy (``tmp_path_retention_policy``, "all" by default: the base
    directories of the last ``tmp_path_retention_count`` sessions, for looking into
    failures), and removes the older ones itself; nor :data:`NOT_THE_SUITES`."""
    found = set()
    for directory in SHARED_TMP:
        for path in _listing(directory):
            name = os.path.basename(path)
            if name == f"pytest-of-{getpass.getuser()}" or any(
                    fnmatch.fnmatchcase(name, pattern) for pattern in NOT_THE_SUITES):
                continue
            found.add(path)
            if _is_runtime_dir(path):
                found.update(_listing(path))
    return found


def _runtime_dirs_left_empty(new):
    """The runtime's per-user directories among ``new`` that are empty: the runtime
    keeps a user's directory from one launch to the next (as tmux keeps
    /tmp/tmux-<uid>), whatever it removes inside."""
    return {path for path in new if _is_runtime_dir(path) and not _listing(path)}


def _left_since(before):
    """What the suite added to what :func:`_left_in_memory_and_tmp` found in ``before``."""
    new = _left_in_memory_and_tmp() - before
    return new - _runtime_dirs_left_empty(new)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """The suite leaves nothing new in /tmp, /var/tmp or /dev/shm, nor in the runtime's
    per-user directories there, whatever its tests killed: every test removes what it
    made, and the runtime (or the next build) must have removed what it made. Only a
    per-user directory of the runtime that it made empty is removed here (see
    :func:`_runtime_dirs_left_empty`). It sees the whole machine: run one session at a
    time, as CI does (another session's, or anyone's, new files count too)."""
    before = _left_in_memory_and_tmp()
    yield
    assert _gone(_left_since, before, 10), sorted(_left_since(before))
    for path in _runtime_dirs_left_empty(_left_in_memory_and_tmp() - before):
        os.rmdir(path)


def pytest_collection_modifyitems(session, config, items):
    if spack is None:
        pytest.exit(SPACK_MISSING, returncode=1)


def wait_for_line(process, text: str, seconds: float = 60) -> str:
    """The first line of ``process.stdout`` containing ``text``. A process that does not
    print it within ``seconds`` is killed and the test fails, instead of hanging."""
    timer = threading.Timer(seconds, process.kill)
    timer.start()
    try:
        for line in process.stdout:
            if text in line:
                return line
    finally:
        timer.cancel()
    pytest.fail(f"{process.args} printed no line with {text!r} (waited up to {seconds}s)")


#: Debian's own Python, which refuses pip (PEP 668); Spack runs on it with SPACK_PYTHON.
SYSTEM_PYTHON = "/usr/bin/python3"


def externally_managed_python_without_pyelftools() -> str:
    """:data:`SYSTEM_PYTHON`, which the tests of the install advice for an externally
    managed Python run Spack with; it must lack pyelftools, as a fresh Debian 12's has."""
    marker = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import os, sysconfig; print(os.path.exists(os.path.join("
         "sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))"],
        capture_output=True, text=True)
    if marker.stdout.strip() != "True":
        pytest.fail(f"{SYSTEM_PYTHON} is not an externally managed Python (PEP 668): this "
                    "test needs Debian 12's or Ubuntu 24.04's system python3", pytrace=False)
    if subprocess.run([SYSTEM_PYTHON, "-c", "import elftools"],
                      capture_output=True).returncode == 0:
        pytest.fail(f"{SYSTEM_PYTHON} has pyelftools: this test needs it without "
                    "(apt remove python3-pyelftools)", pytrace=False)
    return SYSTEM_PYTHON


def cc(out: str, source: str, *flags: str) -> str:
    """Compile C ``source`` (text) to ``out`` with gcc and ``flags``."""
    src = out + ".c"
    with open(src, "w") as f:
        f.write(textwrap.dedent(source))
    subprocess.run(["gcc", "-o", out, src, *flags], check=True)
    return out


def fails(site, *args, env=None, cwd=None, code=1, spack_options=()):
    """Run `spack [spack_options] appimage ARGS`, expect failure; return the error line."""
    result = site(*spack_options, "appimage", *args, env=env, cwd=cwd, check=False)
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "Error:" in line]
    assert len(errors) == 1, result.stderr
    return errors[0]


@contextlib.contextmanager
def readable_tmp_dir(prefix: str):
    """A directory every user can read (pytest's ``tmp_path`` is closed to others, and
    tests run images as an ordinary user), removed after the block."""
    directory = tempfile.mkdtemp(prefix=prefix)
    os.chmod(directory, 0o755)
    try:
        yield pathlib.Path(directory)
    finally:
        shutil.rmtree(directory)


@contextlib.contextmanager
def renamed_away(path: str):
    """``path`` renamed away for the block: any path into it fails."""
    away = path + ".away"
    os.rename(path, away)
    try:
        yield
    finally:
        os.rename(away, path)


def store_renamed_away(site):
    """The session's store renamed away for the block (:func:`renamed_away`)."""
    return renamed_away(site.store)


class Spack:
    """Runs ``spack`` in a subprocess inside the isolated session site."""

    def __init__(self, root: str):
        self.root = root
        self.store = os.path.join(root, "store")
        self.env_vars = dict(
            os.environ,
            SPACK_USER_CONFIG_PATH=os.path.join(root, "config"),
            SPACK_USER_CACHE_PATH=os.path.join(root, "cache"),
        )
        self.env_vars.pop("SPACK_ENV", None)

    def __call__(self, *args, env=None, cwd=None, check=True, variables=None, **kwargs):
        command = ["spack"] + (["-e", env] if env else []) + list(args)
        result = subprocess.run(
            command, cwd=cwd or self.root, env=dict(self.env_vars, **(variables or {})),
            capture_output=True, text=True, **kwargs,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def install(self, env: str, *args, **kwargs):
        """``spack install ARGS`` in ``env``, with :data:`INSTALL_TIMEOUT` and its temporary
        files in the site: Spack leaves a directory of every autotools package's ``.la``
        files in ``$TMPDIR`` (llnl.util.filesystem's removal by renaming into a
        ``mkdtemp``), and the suite leaves nothing in /tmp (:func:`nothing_left_behind`)."""
        tmp = os.path.join(self.root, "tmp")
        os.makedirs(tmp, exist_ok=True)
        return self("install", *args, env=env, timeout=INSTALL_TIMEOUT,
                    variables={"TMPDIR": tmp}, **kwargs)

    def make_env(self, name: str, specs, concretize=False) -> str:
        path = os.path.join(self.root, "envs", name)
        os.makedirs(path)
        with open(os.path.join(path, "spack.yaml"), "w") as f:
            f.write(f"spack:\n  specs: {list(specs)}\n  view: false\n")
        if concretize:
            self("concretize", env=path)
        return path


#: How long one ``spack install`` of a session fixture may take. Fixtures are outside
#: pytest-timeout's limit (``timeout_func_only``, pyproject.toml): on a machine with nothing
#: cached, the offline builds of CPython and Open MPI alone take 12-20 minutes on 2 cores.
INSTALL_TIMEOUT = 3600


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """Spack with the test packages installed in a session-wide temporary store."""
    root = str(tmp_path_factory.mktemp("site"))
    config = _user_config(
        os.path.join(root, "config"),
        install_tree=f"\n    root: {root}/store",
        extensions=f"\n  - {EXTENSION}",
    )
    with open(os.path.join(config, "repos.yaml"), "w") as f:
        f.write(repos_config("appimage_test"))
    with open(os.path.join(config, "packages.yaml"), "w") as f:
        f.write(PACKAGES_YAML)
    _require("patchelf", "apt-get install patchelf (see .ci/run)")
    _require("mpicc", "apt-get install openmpi-bin libopenmpi-dev (see .ci/run)")
    spack_ = Spack(root)
    spack_.env = spack_.make_env("main", ENV_SPECS)
    spack_.install(spack_.env)
    return spack_


#: Where real software built from offline sources is kept across test runs (a source
#: mirror and a Spack store): building it costs minutes, reusing it seconds.
CACHE = os.environ.get("SPACK_APPIMAGE_TEST_CACHE") or os.path.expanduser(
    "~/.cache/spack-appimage-tests")
#: Debian's build tools and libraries that the offline builds take as externals, with
#: the versions Debian 12 ships.
DEBIAN_EXTERNALS = {
    "gettext": "0.21", "libffi": "3.4.4", "pkgconf": "1.8.1", "perl": "5.36.0",
    "autoconf": "2.71", "automake": "1.16.5", "libtool": "2.4.7", "m4": "1.4.19",
    "findutils": "4.9.0", "diffutils": "3.8",
    # what Spack's Perl links (libgdbm-dev, libdb-dev, libbz2-dev)
    "gdbm": "1.23", "berkeley-db": "5.3.28", "bzip2": "1.0.8",
}

#: Versions the offline sources exist for (tests/offline/fetch-sources), and Open MPI as
#: the MPI.
OFFLINE_REQUIREMENTS = {"zlib-api": "zlib", "zlib": "'@1.2.13'", "xz": "'@5.4.1'",
                        "numactl": "'@2.0.16'", "mpi": "openmpi"}

OFFLINE_PACKAGES_YAML = "packages:\n" + "".join(
    f"  {name}:\n    externals: [{{spec: {name}@{version}, prefix: /usr}}]\n"
    "    buildable: false\n" for name, version in DEBIAN_EXTERNALS.items()
) + "".join(f"  {name}:\n    require: {value}\n" for name, value in OFFLINE_REQUIREMENTS.items())

#: The py-* versions of the offline builds (fetch-sources has the files of both): those of
#: spack-packages 2025-2026, or of the builtin repository inside Spack before 1.0.
OFFLINE_PY_VERSIONS = (
    {"py-six": "1.17.0", "py-wheel": "0.45.1"}
    if spack is None or spack.spack_version_info >= (1,)
    else {"py-six": "1.16.0", "py-wheel": "0.41.2"}
)

#: The offline environments: real CPython with py-* packages (a pure-Python one, one
#: with a C module, one with a console script), built from Debian's and PyPI's files;
#: an MPI program with a Spack-built Open MPI (about 8 more minutes); Spack's Perl
#: (about 5 minutes), whose @INC is compiled in as store paths.
OFFLINE_ENVS = {
    "perl": ["perl@5.36.0 ~cpanm"],
    "mpi": [
        "ai-mpi ^openmpi@4.1.4 +internal-hwloc +internal-libevent +internal-pmix ~rsh "
        "fabrics=none schedulers=none",
    ],
    "py": [
        "python@3.11.2 ~ssl ~sqlite3 ~dbm ~readline ~uuid ~crypt ~bz2 ~pyexpat ~tkinter "
        "+zlib +lzma +ctypes",
        f"py-six@{OFFLINE_PY_VERSIONS['py-six']}",
        "py-markupsafe@2.1.3",  # a version every tested package repository has
        f"py-wheel@{OFFLINE_PY_VERSIONS['py-wheel']}",
    ],
}


#: An environment's own packages settings: the Perl environment builds Perl, which the
#: others take from Debian ("::" replaces the site's external).
OFFLINE_ENV_PACKAGES = {"perl": "  packages:\n    perl::\n      buildable: true\n"}


@pytest.fixture(scope="session")
def offline_site():
    """Spack configured to build real software from Debian's and PyPI's files
    (tests/offline) into a store under :data:`CACHE` (one per Spack version) that later
    runs reuse; the first run fetches the sources (tests/offline/fetch-sources). Each
    environment of :data:`OFFLINE_ENVS` is installed by its own fixture (``offline_py``,
    ``offline_mpi``), so a run that deselects a stack's tests does not build it."""
    mirror = os.path.join(CACHE, "mirror")
    fetched = subprocess.run([sys.executable, os.path.join(OFFLINE, "fetch-sources"), mirror],
                             capture_output=True, text=True)
    if fetched.returncode != 0:
        pytest.fail("tests/offline/fetch-sources could not get the sources of the offline "
                    f"builds (it needs apt-get and PyPI):\n{fetched.stderr}", pytrace=False)
    # One per Spack version: each concretizes (and so hashes and builds) on its own.
    root = os.path.join(CACHE, f"offline-site-{spack.spack_version}")
    config = _user_config(
        os.path.join(root, "config"),
        install_tree=f"\n    root: {root}/store",
        extensions=f"\n  - {EXTENSION}",
    )
    with open(os.path.join(config, "mirrors.yaml"), "w") as f:
        f.write(f"mirrors:\n  offline:\n    url: file://{mirror}\n    source: true\n"
                "    binary: false\n")
    with open(os.path.join(config, "packages.yaml"), "w") as f:
        f.write(OFFLINE_PACKAGES_YAML)
    return Spack(root)


def _offline_env(site, name: str) -> str:
    """The offline environment ``name`` of :data:`OFFLINE_ENVS`, installed."""
    path = os.path.join(site.root, "envs", name)
    os.makedirs(path, exist_ok=True)
    # The overlay comes first (an environment's repos precede the site's builtin).
    with open(os.path.join(path, "spack.yaml"), "w") as f:
        f.write(f"spack:\n  specs: {OFFLINE_ENVS[name]}\n  view: false\n"
                + repos_config("appimage_offline", "appimage_test", indent="  ")
                + OFFLINE_ENV_PACKAGES.get(name, ""))
    site.install(path, "--fail-fast", f"-j{os.cpu_count()}")
    return path


@pytest.fixture(scope="session")
def offline_py(offline_site):
    """The offline CPython environment, installed (about 6 minutes the first time)."""
    return _offline_env(offline_site, "py")


@pytest.fixture(scope="session")
def offline_perl(offline_site):
    """The offline Perl environment, installed (about 5 minutes the first time)."""
    return _offline_env(offline_site, "perl")


@pytest.fixture(scope="session")
def offline_mpi(offline_site):
    """The offline Open MPI environment, installed (about 8 minutes the first time)."""
    return _offline_env(offline_site, "mpi")


#: The AppRun of the probe image: prints its arguments, environment and working directory,
#: then, as its first argument asks, exits with a code, kills itself with a signal, or
#: waits for a signal (printing "ready").
PROBE_APPRUN = r"""
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static void on_signal(int s) { printf("got signal %d\n", s); fflush(stdout); _exit(99); }
int main(int argc, char **argv) {
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) return 3;
    printf("argv:");
    for (int i = 0; i < argc; i++) printf(" %s", argv[i]);
    printf("\n");
    const char *names[] = {"APPIMAGE", "APPDIR", "ARGV0", "OWD", "HOME"};
    for (int i = 0; i < 5; i++) printf("%s=%s\n", names[i], getenv(names[i]) ? getenv(names[i]) : "-");
    printf("cwd=%s\n", cwd);
    fflush(stdout);
    const char *what = argc > 1 ? argv[1] : "";
    if (!strcmp(what, "exit")) return atoi(argv[2]);
    if (!strcmp(what, "kill")) raise(atoi(argv[2]));
    if (!strcmp(what, "wait")) {
        int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT};
        for (int i = 0; i < 7; i++) signal(sigs[i], on_signal);
        printf("ready\n");
        fflush(stdout);
        for (;;) pause();
    }
    return 0;
}
"""


@pytest.fixture(scope="session")
def our_runtime():
    from spack.extensions.appimage import runtime

    return runtime.build()


@pytest.fixture(scope="session")
def probe_image(our_runtime):
    """An image of :data:`PROBE_APPRUN` with the project's runtime, world-readable (tests
    also run it as other users). Its AppRun carries a build ID of this session's own:
    images of the same content share an ID, and so a mount or an extracted copy, which
    another session running at the same time would hold or remove under our tests."""
    work = tempfile.mkdtemp(prefix="runtime-test-")  # not pytest's: closed to others
    try:
        os.chmod(work, 0o755)
        appdir = os.path.join(work, "AppDir")
        os.makedirs(os.path.join(appdir, "data"))
        cc(os.path.join(appdir, "AppRun"), PROBE_APPRUN,
           f"-Wl,--build-id=0x{os.urandom(20).hex()}")
        os.remove(os.path.join(appdir, "AppRun.c"))
        with open(os.path.join(appdir, "data", "x.txt"), "w") as f:
            f.write("x\n")
        yield make_image(our_runtime, appdir, os.path.join(work, "t.app"))
    finally:
        shutil.rmtree(work)


def make_image(runtime_file, appdir, output):
    """An image of ``appdir`` at ``output`` with ``runtime_file``, as the pipeline's last
    stages make it."""
    from spack.extensions.appimage import assemble, runtime, squashfs

    mksquashfs = squashfs.find_mksquashfs([])
    with assemble.output_file(output, force=True) as partial:
        squashfs.make(mksquashfs, appdir, partial, offset=os.path.getsize(runtime_file),
                      compression="zstd", jobs=None, progress=False)
        assemble.write_runtime(runtime_file, partial)
        assemble.stamp_image_id(partial, runtime_file, runtime.ID_SECTION, 4 << 20)
    return output



def mounts_of(image):
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if image in line]


def _gone(what, image, seconds):
    """Whether ``what(image)`` becomes empty within ``seconds`` (a server outlives its
    last user by its idle time, then unmounts and cleans up asynchronously)."""
    deadline = time.time() + seconds
    while what(image) and time.time() < deadline:
        time.sleep(0.1)
    return not what(image)


def mount_dirs_in(tmpdir):
    """The mount directories (``<build id>-<launch id>-<mount namespace>``, three parts;
    an extraction cache's ``<build id>-<launch id>`` has two) of the runtime's per-user
    directories (``spack-appimage-<uid>``, or a fallback ``spack-appimage-<uid>.<random>``)
    in ``tmpdir``."""
    found = []
    for base in os.scandir(tmpdir):
        if base.name.startswith("spack-appimage-") and base.is_dir(follow_symlinks=False):
            found += [os.path.join(base.path, name) for name in os.listdir(base.path)
                      if name.count("-") == 2]
    return found


def wait_unmounted(image, seconds=10):
    return _gone(mounts_of, image, seconds)


def servers_of(image):
    found = subprocess.run(["pgrep", "-f", image], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]


def wait_no_server(image, seconds=10):
    return _gone(servers_of, image, seconds)


def leftovers(image, uid=None):
    """What of the image is left in the runtime's directory of user ``uid`` (the test
    process's by default): mount directories (``<id>-<mount namespace>``, with their lock
    files) and extracted trees (``<id>/root``). The lock files of ``<id>`` are not counted
    here, as they go a moment after the copy; the session's :func:`nothing_left_behind`
    fails on any that stay."""
    doctor = subprocess.run([image, "--appimage-doctor"], capture_output=True, text=True)
    image_id = doctor.stdout.split("image id: ")[1].split()[0]
    base = f"/tmp/spack-appimage-{os.getuid() if uid is None else uid}"
    if not os.path.isdir(base):
        return []
    mounts = [name for name in os.listdir(base) if name.startswith(image_id + "-")]
    extracted = os.path.join(base, image_id)
    return mounts + [p for p in os.listdir(extracted) if p not in ("lock", "users")] \
        if os.path.isdir(extracted) else mounts


def wait_nothing_left(image, seconds=10, uid=None):
    return _gone(lambda image: leftovers(image, uid), image, seconds)


def server_of(image):
    """The pid of the image's FUSE server: a process of the image's runtime (not an app
    it runs) whose parent, the server's guardian, is one too."""
    runtime = os.path.realpath(image)

    def runs_it(pid):
        try:
            return os.readlink(f"/proc/{pid}/exe") == runtime
        except OSError:  # gone, or a zombie
            return False

    pids = [pid for pid in servers_of(image) if runs_it(pid)]
    parents = {pid: int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
               for pid in pids}
    [server] = [pid for pid in pids if parents[pid] in pids]
    return server


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Slurm:
    """A real one-node Slurm (Debian's slurmctld, slurmd and munged) in a directory of
    its own: the node is this machine, declared with 8 CPUs so that 8 ranks fit on 2
    cores; ``env`` points srun, salloc, squeue and scancel at it."""

    def __init__(self, root: str):
        self.root = root
        self.conf = os.path.join(root, "slurm.conf")
        self.env = dict(os.environ, SLURM_CONF=self.conf, OMPI_ALLOW_RUN_AS_ROOT="1",
                        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        self.daemons = []

    def write_config(self) -> None:
        host = subprocess.run(["hostname", "-s"], capture_output=True, text=True,
                              check=True).stdout.strip()
        r = self.root
        with open(self.conf, "w") as f:
            f.write(textwrap.dedent(f"""\
                ClusterName=spackappimage
                SlurmctldHost={host}
                SlurmUser=root
                SlurmdUser=root
                AuthType=auth/munge
                AuthInfo=socket={r}/munge.sock
                StateSaveLocation={r}/state
                SlurmdSpoolDir={r}/spool
                SlurmctldPidFile={r}/slurmctld.pid
                SlurmdPidFile={r}/slurmd.pid
                SlurmctldPort={_free_port()}
                SlurmdPort={_free_port()}
                SlurmctldLogFile={r}/slurmctld.log
                SlurmdLogFile={r}/slurmd.log
                ProctrackType=proctrack/linuxproc
                TaskPlugin=task/none
                JobAcctGatherType=jobacct_gather/none
                MpiDefault=none
                SelectType=select/cons_tres
                SelectTypeParameters=CR_Core
                ReturnToService=2
                SlurmdParameters=config_overrides
                NodeName={host} CPUs=8 Boards=1 SocketsPerBoard=1 CoresPerSocket=8 ThreadsPerCore=1 RealMemory=1000 State=UNKNOWN
                PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
                """))

    def start(self) -> None:
        for directory in ("state", "spool"):
            os.makedirs(os.path.join(self.root, directory))
        key = os.path.join(self.root, "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o600)
        self.write_config()
        subprocess.run(["munged", "--force", f"--socket={self.root}/munge.sock",
                        f"--key-file={key}", f"--log-file={self.root}/munged.log",
                        f"--pid-file={self.root}/munged.pid",
                        f"--seed-file={self.root}/munged.seed"], check=True)
        for daemon in ("slurmctld", "slurmd"):
            log = open(os.path.join(self.root, f"{daemon}.out"), "w")
            self.daemons.append(subprocess.Popen([daemon, "-D", "-f", self.conf], stdout=log,
                                                 stderr=subprocess.STDOUT, env=self.env))
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True,
                                   text=True, env=self.env).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.2)
        pytest.fail(f"the test Slurm did not come up (node state {state!r}); see "
                    f"{self.root}/slurmctld.log and slurmd.log", pytrace=False)

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "-u", "root"], env=self.env, capture_output=True)
        for daemon in reversed(self.daemons):
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        subprocess.run(["munged", "--stop", f"--socket={self.root}/munge.sock"],
                       capture_output=True)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real one-node Slurm, started for the session and stopped after."""
    for tool, package in (("slurmctld", "slurmctld"), ("slurmd", "slurmd"),
                          ("munged", "munge"), ("srun", "slurm-client")):
        _require(tool, f"apt-get install {package} (see .ci/run)")
    cluster = Slurm(str(tmp_path_factory.mktemp("slurm")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


class Root:
    """Commands as the test process's own user, root, in this mount namespace: the
    counterpart of :class:`OrdinaryUser`, so a test can run for both."""

    uid = 0

    def run(self, argv, env=None, **kwargs):
        return subprocess.run(argv, env=dict(os.environ, **(env or {})), capture_output=True,
                              text=True, **kwargs)

    def popen(self, argv, env=None, **kwargs):
        return subprocess.Popen(argv, env=dict(os.environ, **(env or {})), **kwargs)

    def mounts_of(self, image):
        return mounts_of(image)

    def wait_unmounted(self, image, seconds=10):
        return wait_unmounted(image, seconds)

    def leftovers(self, image):
        return leftovers(image)

    def wait_nothing_left(self, image, seconds=10):
        return wait_nothing_left(image, seconds)


@pytest.fixture(params=["root", "ordinary user"])
def user(request):
    """Root, then the ordinary user: a test of what users run, as both."""
    return Root() if request.param == "root" else request.getfixturevalue("ordinary_user")


class OrdinaryUser:
    """A real user of this machine, whose commands run as on a shared cluster node: without
    root, mounting through the setuid ``fusermount3``.

    Debian's ``/dev/fuse`` is root's alone (0600), while cluster nodes open it to all:
    commands run inside a private mount namespace (kept alive by a holder process) where a
    0666 node of the same device is bound over ``/dev/fuse``; the host's stays as it is.
    The FUSE mounts a user makes live in that namespace: read them with
    :meth:`mounts_of` (the root namespace does not see them). Files are shared with the
    host (the namespace only has other mounts), so a test may plant or inspect files from
    the test process as root."""

    def __init__(self, name: str, namespace: "FuseNamespace"):
        self.name = name
        if subprocess.run(["id", "-u", name], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
        import pwd

        entry = pwd.getpwnam(name)
        self.uid, self.gid, self.home = entry.pw_uid, entry.pw_gid, entry.pw_dir
        self.namespace = namespace

    def argv(self, argv):
        """``argv`` as this user in the namespace (no supplementary groups of root's)."""
        return ["nsenter", "-t", str(self.namespace.pid), "-m", "--",
                "setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
                "--", *argv]

    def env(self, env=None):
        """A login-like environment: nothing of root's, plus ``env``."""
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": self.home, "USER": self.name,
                "LOGNAME": self.name, "LANG": "C.UTF-8", **(env or {})}

    def run(self, argv, env=None, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("cwd", "/")
        return subprocess.run(self.argv(argv), env=self.env(env), **kwargs)

    def popen(self, argv, env=None, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("cwd", "/")
        return subprocess.Popen(self.argv(argv), env=self.env(env), **kwargs)

    def mounts_of(self, image):
        """Lines of the namespace's mount table that name ``image``."""
        return self.namespace.mounts_of(image)

    def wait_unmounted(self, image, seconds=10):
        return _gone(self.mounts_of, image, seconds)

    def leftovers(self, image):
        """What of ``image`` this user's runtime directory still holds (:func:`leftovers`)."""
        return leftovers(image, self.uid)

    def wait_nothing_left(self, image, seconds=10):
        return _gone(self.leftovers, image, seconds)


class FuseNamespace:
    """A private mount namespace in which ``/dev/fuse`` is usable by every user (see
    :class:`OrdinaryUser`), held open by a process until :meth:`stop`."""

    #: The new namespace starts with a copy of every mount, FUSE ones included: a copy
    #: would keep a server's connection alive after the server unmounted its own (it
    #: would then never see the end of its session), so the FUSE copies are detached.
    #: Then its mounts are made shared (new peer groups, inside it only), as systemd makes
    #: a node's: unmounts reach the namespaces made from it (the store view's, AppRun's).
    SCRIPT = """
        set -e
        findmnt -rn -o TARGET,FSTYPE | awk '$2 ~ /^fuse/ {print $1}' | while read -r m; do
            umount -l "$(printf '%b' "$m")" || true
        done
        mount -t tmpfs -o mode=0755,size=64k tmpfs "$1"
        mknod -m 0666 "$1/fuse" c 10 229
        mount --bind "$1/fuse" /dev/fuse
        mount --make-rshared /
        echo ready
        exec sleep infinity
    """

    def __init__(self):
        _require("fusermount3", "apt-get install fuse3 (see .ci/run)")
        self.node_dir = tempfile.mkdtemp(prefix="fuse-node-")
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", self.SCRIPT, "sh",
             self.node_dir], stdout=subprocess.PIPE, text=True)
        wait_for_line(self.holder, "ready", seconds=30)
        self.pid = self.holder.pid

    def mounts_of(self, image):
        with open(f"/proc/{self.pid}/mountinfo") as f:
            return [line for line in f if image in line]

    def stop(self):
        self.holder.kill()
        self.holder.wait()
        os.rmdir(self.node_dir)


@pytest.fixture(scope="session")
def fuse_namespace():
    namespace = FuseNamespace()
    yield namespace
    namespace.stop()


@pytest.fixture(scope="session")
def ordinary_user(fuse_namespace):
    """A real, non-root user (``aitest``) whose commands mount through the setuid
    fusermount3 (:class:`OrdinaryUser`)."""
    return OrdinaryUser("aitest", fuse_namespace)


@pytest.fixture(scope="session")
def other_user(fuse_namespace):
    """A second real user (``aiother``) on the same node: the one who plants things."""
    return OrdinaryUser("aiother", fuse_namespace)


@pytest.fixture(scope="session")
def stub_runtime(tmp_path_factory):
    """A stand-in type-2 runtime (see tests/data/stub_runtime.c), built with gcc."""
    out = str(tmp_path_factory.mktemp("runtime") / "runtime")
    subprocess.run(
        ["gcc", "-O2", "-s", "-o", out, os.path.join(HERE, "data", "stub_runtime.c")],
        check=True,
    )
    from spack.extensions.appimage import assemble

    assemble.stamp_magic(out)
    return out


@pytest.fixture
def mount(tmp_path):
    """mount(image) -> mount point of the image's squashfs (squashfuse), unmounted after."""
    _require("squashfuse", "apt-get install squashfuse fuse3 (see .ci/run)")
    mounted = []

    def _mount(image: str) -> str:
        offset = subprocess.run(
            [image, "--appimage-offset"], capture_output=True, text=True, check=True
        ).stdout.strip()
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        subprocess.run(["squashfuse", "-o", f"offset={offset}", image, str(point)], check=True)
        mounted.append(str(point))
        return str(point)

    yield _mount
    for point in mounted:
        subprocess.run(["fusermount3", "-u", point], check=False)
