"""The store view (issue 21): AppRun shows the bundled prefixes at their store paths, in a
user and mount namespace (a mount namespace alone for root), for programs that compiled
those paths in. Every run here has the store hidden (renamed away) or another store at
the same path; the images are real Spack builds in a store of their own that every user
can reach (the session's is closed to the ordinary user).

What depends on Spack's version (the store's root and prefixes, the bundled specs, the
report and manifest) is tested with every version; the tests marked ``one_spack`` check
AppRun's namespaces and Perl's offline build, which do not change with it."""

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile

import pytest
from conftest import (_gone, readable_tmp_dir, renamed_away, store_renamed_away,
                      wait_nothing_left)

#: The Open MPI options that make ranks of one node copy large messages with CMA
#: (process_vm_readv) and nothing else.
CMA = ["--mca", "btl", "vader,self", "--mca", "btl_vader_single_copy_mechanism", "cma"]


class ViewStore:
    """An environment (``name``) of ``specs`` installed in a store under a 0755
    directory, with its images."""

    def __init__(self, site, directory, name="store-view", specs=("ai-datadir", "ai-mpi")):
        self.site, self.directory = site, str(directory)
        self.store = os.path.join(self.directory, "store")
        self.env = os.path.join(site.root, "envs", name)
        os.makedirs(self.env)
        with open(os.path.join(self.env, "spack.yaml"), "w") as f:
            f.write(f"spack:\n  specs: {list(specs)}\n  view: false\n"
                    f"  config:\n    install_tree:\n      root: {self.store}\n")
        site.install(self.env)

    def prefix(self, name: str) -> str:
        found = self.site("location", "-i", name, env=self.env).stdout.strip()
        assert found.startswith(self.store + "/"), found
        return found

    def build(self, name: str, *args: str):
        output = os.path.join(self.directory, name)
        result = self.site("appimage", "-o", output, *args, env=self.env)
        return output, result

    @contextlib.contextmanager
    def hidden(self):
        """The store renamed away for the block (``store_renamed_away``)."""
        with store_renamed_away(self):
            yield

    @contextlib.contextmanager
    def other_store(self, files):
        """The store hidden, and another at its path for the block: ``files`` maps paths
        (under the store's prefixes) to their content."""
        with self.hidden():
            for path, text in files.items():
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
            subprocess.run(["chmod", "-R", "a+rX", self.store], check=True)
            try:
                yield
            finally:
                shutil.rmtree(self.store)


@pytest.fixture(scope="module")
def view(site):
    with readable_tmp_dir("store-view-") as directory:
        yield ViewStore(site, directory)


@pytest.fixture(scope="module")
def datadir(view):
    """ai-datadir's image (--store-view auto, the default), what its build said, and the
    first lines its program prints from the store."""
    image, built = view.build("datadir.app", "--entry", "ai-datadir")
    prefix, leaf = view.prefix("ai-datadir"), view.prefix("ai-leaf")
    with open(os.path.join(prefix, "share", "ai-datadir", "basis.txt")) as f:
        basis = f.read().strip()
    expected = [f"read: {basis}", "read: leaf data", "linked: leaf-1.0"]
    return image, built, prefix, leaf, expected


def lines_of(run, cwd):
    """The program's lines, checked to end with the working directory it was started in."""
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[-1] == f"cwd: {cwd}", run.stdout
    return lines[:-1]


def cwd_of(user):
    """A directory of ``user``'s own to start in (``env -C``: the ordinary user's commands
    enter their mount namespace with nsenter, which starts them in /)."""
    return getattr(user, "home", "/root")


def test_build_reports_and_records_the_view(view, datadir):
    image, built, prefix, leaf, _ = datadir
    assert re.search(r"==> \d+ files of ai-datadir-1\.0-\w+ name the store: the image shows "
                     "them at their store paths", built.stdout + built.stderr), built.stderr
    assert "Warning" not in built.stderr
    report = json.loads(view.site("appimage", "--entry", "ai-datadir", "--dry-run", "--json",
                                  env=view.env).stdout)
    shown = {p["prefix"] for p in report["store_view"]["prefixes"]}
    assert report["store_view"]["applies"] and report["store_view"]["mode"] == "auto"
    assert report["store_view"]["root"] == view.store
    assert {prefix, leaf} <= shown and all(p.startswith(view.store) for p in shown)
    text = view.site("appimage", "--entry", "ai-datadir", "--dry-run", env=view.env).stdout
    assert f"store view: {len(shown)} bundled prefixes shown at their store paths " \
           "(--store-view auto), where the node allows user namespaces" in text
    manifest = json.loads(subprocess.run([image, "--appimage-manifest"], capture_output=True,
                                         text=True, check=True).stdout)
    del report["store_view"]["summary"]
    assert manifest["store_view"] == report["store_view"]


def test_compiled_in_paths_read_the_image_with_the_store_hidden(view, datadir, user):
    image, _, _, _, expected = datadir
    with view.hidden():
        run = user.run(["env", "-C", cwd_of(user), image], env={"VERBOSE": "1"})
    assert lines_of(run, cwd_of(user)) == expected
    assert "showing the bundled prefixes at their store paths" in run.stderr
    assert user.wait_nothing_left(image)


@pytest.mark.one_spack
def test_another_store_at_the_same_path_is_not_read(view, datadir, user):
    image, _, prefix, leaf, expected = datadir
    planted = {os.path.join(prefix, "share", "ai-datadir", "basis.txt"): "another store\n",
               os.path.join(leaf, "share", "leaf", "leaf.dat"): "another store\n"}
    with view.other_store(planted):
        run = user.run(["env", "-C", cwd_of(user), image])
    assert lines_of(run, cwd_of(user)) == expected
    assert user.wait_nothing_left(image)


@pytest.fixture(scope="module")
def top_store(site):
    """ai-datadir installed in a store directly under / (a directory made there for the
    module), its image (kept elsewhere) and what its program reads from the store."""
    directory = tempfile.mkdtemp(prefix="ai-store-", dir="/")
    os.chmod(directory, 0o755)
    try:
        with readable_tmp_dir("top-store-images-") as images:
            view = ViewStore(site, directory, "top-store", ["ai-datadir"])
            image = os.path.join(images, "datadir.app")
            site("appimage", "-o", image, "--entry", "ai-datadir", env=view.env)
            with open(os.path.join(view.prefix("ai-datadir"), "share", "ai-datadir",
                                   "basis.txt")) as f:
                expected = [f"read: {f.read().strip()}", "read: leaf data", "linked: leaf-1.0"]
            yield directory, image, expected
    finally:
        shutil.rmtree(directory)


@pytest.mark.one_spack
def test_a_store_directly_under_the_root_gets_a_new_root(top_store, user):
    """No directory of the store exists on the node, not even its top one under /: the
    view's root is a tmpfs mirroring / (pivot_root), with the rest of the node as it
    is (the working directory, home, /tmp, /proc)."""
    directory, image, expected = top_store
    with renamed_away(directory):
        run = user.run(["env", "-C", cwd_of(user), image, "pid"], env={"VERBOSE": "1"})
    lines = lines_of(run, cwd_of(user))
    assert lines[:3] == expected and lines[3].startswith("ns: ")
    assert "showing the bundled prefixes at their store paths" in run.stderr
    assert user.wait_nothing_left(image)


@pytest.mark.one_spack
def test_no_view_over_the_directory_a_user_works_in(view, datadir, ordinary_user):
    """With the store gone, its parent is the directory the view would freeze read-only;
    a user working in it (or whose home it is) would lose new files there: the image runs
    as relocated and says how to get the view. Once the store's root exists, it has it."""
    image, _, prefix, leaf, expected = datadir
    with view.hidden():
        refused = ordinary_user.run(["env", "-C", view.directory, image],
                                    env={"VERBOSE": "1"})
        os.mkdir(view.store, 0o755)
        try:
            shown = ordinary_user.run(["env", "-C", view.directory, image])
        finally:
            os.rmdir(view.store)
    assert lines_of(refused, view.directory)[:2] == [
        f"missing: {prefix}/share/ai-datadir/basis.txt", f"missing: {leaf}/share/leaf/leaf.dat"]
    assert (f"not showing the store paths (running as relocated): the store {view.store} is "
            f"not on this node, and showing it would make {view.directory} read-only (it is "
            f"the working directory): create the store's directory (mkdir -p {view.store}) to "
            "get the view") in refused.stderr
    assert lines_of(shown, view.directory) == expected
    assert ordinary_user.wait_nothing_left(image)


@pytest.mark.one_spack
def test_never_and_its_run_time_override_read_as_relocated(view, datadir, ordinary_user):
    """``--store-view never`` writes no view; ``APPIMAGE_STORE_VIEW=never`` turns an
    image's off for one run and says so: the compiled-in paths then name a hidden store."""
    image, _, prefix, leaf, _ = datadir
    never, _ = view.build("datadir-never.app", "--entry", "ai-datadir", "--store-view", "never")
    manifest = json.loads(subprocess.run([never, "--appimage-manifest"], capture_output=True,
                                         text=True, check=True).stdout)
    assert manifest["store_view"] == {"mode": "never", "applies": False, "root": None,
                                      "prefixes": []}
    missing = [f"missing: {prefix}/share/ai-datadir/basis.txt",
               f"missing: {leaf}/share/leaf/leaf.dat", "linked: leaf-1.0"]
    home = ordinary_user.home
    with view.hidden():
        off = ordinary_user.run(["env", "-C", home, never], env={"VERBOSE": "1"})
        overridden = ordinary_user.run(["env", "-C", home, image],
                                       env={"VERBOSE": "1", "APPIMAGE_STORE_VIEW": "never"})
    assert lines_of(off, home) == missing and "store paths" not in off.stderr
    assert lines_of(overridden, home) == missing
    assert "not showing the store paths: APPIMAGE_STORE_VIEW=never" in overridden.stderr
    assert ordinary_user.wait_nothing_left(image)


@pytest.mark.one_spack
def test_refused_user_namespaces_run_as_relocated_and_say_why(view, datadir, ordinary_user):
    """In a user namespace whose limit of user namespaces is 0 (as on a node where they
    are disabled), the image runs as relocated and VERBOSE says why, in one line."""
    image, _, prefix, leaf, _ = datadir
    argv = ordinary_user.argv([image])
    # Into the test's mount namespace first (as root), then a user namespace of its own
    # whose ids root maps from outside (the ordinary user's as they are), then, as that
    # namespace's root (a new exec once mapped), its limit set to 0.
    argv = argv[:5] + ["unshare", "--user", "--", "sh", "-c", 'echo ready; read -r _; exec "$@"',
                       "sh", "sh", "-c",
                       'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"', "sh"] + argv[5:]
    with view.hidden():
        process = subprocess.Popen(argv, env=ordinary_user.env({"VERBOSE": "1"}),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, cwd="/")
        assert process.stdout.readline() == "ready\n"
        for kind in ("uid", "gid"):
            with open(f"/proc/{process.pid}/{kind}_map", "w") as f:
                f.write("0 0 65536\n")
        out, err = process.communicate("\n", timeout=120)
    assert process.returncode == 0, out + err
    assert out.splitlines()[:2] == [f"missing: {prefix}/share/ai-datadir/basis.txt",
                                    f"missing: {leaf}/share/leaf/leaf.dat"]
    assert ("not showing the store paths (running as relocated): this node refuses user "
            "namespaces (user.max_user_namespaces is reached or 0)") in err


def namespaces_of(pid: int):
    return tuple(os.readlink(f"/proc/{pid}/ns/{kind}") for kind in ("user", "mnt"))


def processes_in(namespace: str):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/ns/user") == namespace:
                found.append(int(pid))
    return found


@pytest.mark.one_spack
def test_launches_of_one_image_share_one_namespace_until_the_last_leaves(view, datadir,
                                                                         ordinary_user):
    """A second launch while the first runs joins the first's namespace (one per image
    per node: what lets MPI ranks read each other's memory); when both have left, its
    holder is gone and nothing of the image is left."""
    image, *_ = datadir
    with view.hidden():
        first = ordinary_user.popen([image, "wait"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
        assert first.stdout.readline().startswith("read: basis set")
        while not (line := first.stdout.readline()).startswith("ready"):
            assert line, "the first launch ended early"
        program = int(line.split()[1])
        second = ordinary_user.run([image, "pid"])
        first_ns = namespaces_of(program)
        first.communicate("", timeout=60)
    assert second.returncode == 0, second.stderr
    assert first.returncode == 0
    assert f"ns: {first_ns[0]} {first_ns[1]}" in second.stdout.splitlines()
    assert first_ns != namespaces_of(os.getpid())
    assert ordinary_user.wait_nothing_left(image)
    assert _gone(processes_in, first_ns[0], 10), processes_in(first_ns[0])


@pytest.fixture(scope="module")
def mpicopy(view):
    """mpi-copy (built with the host's Open MPI) in an image with the view."""
    image, _ = view.build("mpicopy.app", "--entry", "mpi-copy", "--store-view", "always")
    return image


@pytest.mark.one_spack
@pytest.mark.parametrize("ranks", ["2", "8"])
def test_ranks_in_the_view_copy_with_cma_under_mpirun(view, mpicopy, ordinary_user, ranks):
    """The host's Open MPI runs the image's ranks with CMA single copy between them; the
    same ranks in one user namespace each (``unshare -c``) cannot, which is why the
    image's processes share one."""
    image = mpicopy
    mpirun = ["mpirun", "--oversubscribe", "-np", ranks, *CMA]
    with view.hidden():
        run = ordinary_user.run([*mpirun, image, "mpi-copy"], timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines() == [f"{ranks} ranks copied 4194304 bytes: ok"]
    apart = ordinary_user.run([*mpirun, "unshare", "-c",
                               os.path.join(view.prefix("ai-mpi"), "bin", "mpi-copy")],
                              timeout=300)
    assert apart.returncode != 0, apart.stdout  # Open MPI refuses CMA between namespaces
    assert ordinary_user.wait_nothing_left(image)


@pytest.mark.one_spack
def test_ranks_in_the_view_copy_with_cma_under_srun(view, mpicopy, slurm):
    image = mpicopy
    env = dict(slurm.env, OMPI_MCA_btl="vader,self",
               OMPI_MCA_btl_vader_single_copy_mechanism="cma")
    with view.hidden():
        step = subprocess.run(["srun", "--mpi=pmix", "-n", "8", image], capture_output=True,
                              text=True, env=env, timeout=300)
    assert step.returncode == 0, step.stdout + step.stderr
    assert step.stdout.splitlines() == ["8 ranks copied 4194304 bytes: ok"]
    assert wait_nothing_left(image)


# -------------------------------------------------------------------------------- Perl

#: A script of core modules, one of them with a C part (POSIX), printing where Perl
#: found POSIX.pm: a path in its compiled-in @INC, the store's.
PERL_SCRIPT = r"""use POSIX qw(floor);
use Data::Dumper;
$Data::Dumper::Terse = 1;
$Data::Dumper::Indent = 0;
print "floor: ", floor(3.7), "\n";
print "dumper: ", Dumper({a => [1, 2]}), "\n";
print "POSIX from: $INC{'POSIX.pm'}\n";
"""


@pytest.fixture(scope="module")
def perl(offline_site, offline_perl):
    """Spack's Perl (built offline) in an image, the script, Perl's prefix and what
    Perl's own run of the script prints from the store."""
    with readable_tmp_dir("perl-view-") as directory:
        image = os.path.join(directory, "perl.app")
        offline_site("appimage", "--entry", "perl", "-o", image, env=offline_perl)
        script = os.path.join(directory, "core.pl")
        with open(script, "w") as f:
            f.write(PERL_SCRIPT)
        prefix = offline_site("location", "-i", "perl", env=offline_perl).stdout.strip()
        expected = subprocess.run([os.path.join(prefix, "bin", "perl"), script],
                                  capture_output=True, text=True, check=True).stdout
        yield image, script, prefix, expected


@pytest.mark.one_spack
def test_perl_runs_core_modules_from_the_image_with_the_store_hidden(offline_site, perl):
    image, script, prefix, expected = perl
    assert expected.splitlines()[:2] == ["floor: 3", "dumper: {'a' => [1,2]}"]
    assert expected.splitlines()[2].startswith(f"POSIX from: {prefix}/lib/5.36.0/")
    with store_renamed_away(offline_site):
        run = subprocess.run([image, script], capture_output=True, text=True)
    assert (run.returncode, run.stdout, run.stderr) == (0, expected, "")
    assert wait_nothing_left(image)


@pytest.mark.one_spack
def test_perl_does_not_read_another_store_at_its_path(offline_site, perl):
    image, script, prefix, expected = perl
    posix = expected.splitlines()[2].split(": ", 1)[1]
    dumper = os.path.join(os.path.dirname(posix), "Data", "Dumper.pm")
    with store_renamed_away(offline_site):
        for path in (posix, dumper):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write('die "another store\\n";\n')
        try:
            run = subprocess.run([image, script], capture_output=True, text=True)
        finally:
            shutil.rmtree(offline_site.store)
    assert (run.returncode, run.stdout, run.stderr) == (0, expected, "")


@pytest.mark.one_spack
def test_perl_without_the_view_looks_for_its_modules_in_the_store(offline_site,
                                                                   offline_perl, perl):
    """What the view is for: relocated only, Perl's compiled-in @INC names the store."""
    _, script, prefix, _ = perl
    with readable_tmp_dir("perl-never-") as directory:
        image = os.path.join(directory, "perl.app")
        offline_site("appimage", "--entry", "perl", "-o", image, "--store-view", "never",
                     env=offline_perl)
        with store_renamed_away(offline_site):
            run = subprocess.run([image, script], capture_output=True, text=True)
    assert run.returncode != 0
    assert "Can't locate POSIX.pm in @INC" in run.stderr and f"{prefix}/lib/5.36.0" in run.stderr


@pytest.mark.one_spack
def test_perl_row_of_the_interpreters_table_is_its_real_layout(offline_site, offline_perl):
    report = json.loads(offline_site("appimage", "--entry", "perl", "--dry-run", "--json",
                                     env=offline_perl).stdout)
    perl_stack, = [i for i in report["interpreters"] if i["owner"].startswith("perl-5.36.0-")]
    owner = perl_stack["owner"]
    assert perl_stack["role"] == "interpreter" and perl_stack["bytes"] > 10 * 2**20
    assert perl_stack["trees"] == [f"opt/{owner}/lib/5.36.0",
                                   f"opt/{owner}/lib/site_perl/5.36.0"]
