"""`spack appimage` end to end: a real Spack, real installs, real images, real runs.

Images are run as users run them (``./test.app ENTRY ARGS``, with the project's own
runtime), from another directory, with the Spack store renamed away so that any path
into it would fail. Images made with ``--runtime`` (a stand-in runtime) are opened with
squashfuse at the runtime's offset and their AppRun is run directly.
"""

import os
import subprocess

import pytest

import spack.util.elf as elf
from conftest import ENV_SPECS, store_renamed_away

ENTRIES = ["ai-hello=ai-hello", "ai-cxx", "ai-origin", "ai-runpath"]


def build(site, runtime, output, *args, env=None, check=True):
    return site(
        "appimage", "--runtime", runtime, "-o", str(output), *args, env=env or site.env,
        check=check,
    )


def direct_outputs(site, names, args):
    """What each program prints when run from the store, by name."""
    outputs = {}
    for root, _, files in os.walk(site.store):
        if os.path.basename(root) == "bin" and "ai-" in root:
            for name in names:
                if name in files and name not in outputs and os.path.basename(
                    os.path.dirname(root)).startswith(name):
                    outputs[name] = subprocess.run(
                        [os.path.join(root, name), *args], capture_output=True, text=True
                    ).stdout
    return outputs


@pytest.fixture(scope="module")
def image(site, stub_runtime, tmp_path_factory):
    output = tmp_path_factory.mktemp("image") / "test.app"
    result = build(site, stub_runtime, output, *[a for e in ENTRIES for a in ("--entry", e)])
    return output, result


@pytest.fixture(scope="module")
def app(site, tmp_path_factory):
    """The same entries with the project's own runtime (built on first use)."""
    output = tmp_path_factory.mktemp("app") / "test.app"
    site("appimage", "-o", str(output), *[a for e in ENTRIES for a in ("--entry", e)],
         env=site.env)
    return output


def test_app_runs_from_anywhere_without_the_store(site, app, tmp_path):
    names = [e.split("=")[0] for e in ENTRIES]
    expected = direct_outputs(site, names, ["x", "y z"])
    assert set(expected) == set(names)
    os.symlink(app, tmp_path / "ai-cxx")
    with store_renamed_away(site):
        for mode in ({}, {"APPIMAGE_EXTRACT_AND_RUN": "1"}):
            environment = dict(os.environ, **mode)
            for name in names:
                run = subprocess.run([str(app), name, "x", "y z"], cwd=tmp_path,
                                     capture_output=True, text=True, env=environment)
                assert run.returncode == 0, run.stderr
                assert run.stdout == expected[name]
            by_link = subprocess.run([str(tmp_path / "ai-cxx"), "x", "y z"], env=environment,
                                     capture_output=True, text=True)
            assert by_link.stdout == expected["ai-cxx"]


def test_image_with_a_given_runtime_runs_without_the_store(site, image, mount, tmp_path):
    output, _ = image
    names = [e.split("=")[0] for e in ENTRIES]
    expected = direct_outputs(site, names, ["x", "y z"])
    point = mount(str(output))
    with store_renamed_away(site):
        for name in names:
            run = subprocess.run([f"{point}/AppRun", name, "x", "y z"], cwd=tmp_path,
                                 capture_output=True, text=True)
            assert run.returncode == 0, run.stderr
            assert run.stdout == expected[name]
    assert "greeting=bonjour" in expected["ai-hello"]  # ../share lookup works in the image
    assert "libstdc++ ok" in expected["ai-cxx"]


def test_image_file_is_runtime_then_squashfs(image, stub_runtime):
    output, result = image
    data = output.read_bytes()
    runtime = open(stub_runtime, "rb").read()
    assert data[: len(runtime)] == runtime
    assert data[len(runtime): len(runtime) + 4] == b"hsqs"
    assert os.stat(output).st_mode & 0o777 == 0o755
    assert f"{output}:" in result.stdout and "entries: ai-hello, ai-cxx" in result.stdout


def test_appdir_holds_only_the_closure_and_data(image, mount):
    point = mount(str(image[0]))
    files = {
        os.path.relpath(os.path.join(root, name), point)
        for root, dirs, names in os.walk(point)
        for name in names + dirs
    }
    opt = {f.split(os.sep)[1] for f in files if f.startswith("opt/")}
    assert {o.rsplit("-", 2)[0] for o in opt} == {
        "ai-hello", "ai-cxx", "ai-origin", "ai-runpath", "ai-mid", "ai-leaf", "ai-side",
        "gcc-runtime",
    }
    by_name = {os.path.basename(f): f for f in files}
    for kept in ("libleaf.so.1", "libleaf.so.1.0.0", "leaf.dat", "greeting.txt",
                 "libstdc++.so.6", "libgcc_s.so.1", "libpriv.so", "AppRun", "entries"):
        assert kept in by_name, kept
    assert os.path.islink(os.path.join(point, by_name["libleaf.so.1"]))
    for pruned in ("leaf.h", "libleaf.a", "leaf.pc", "leafConfig.cmake", "leaf.1",
                   "libleaf.so", "spec.json", "not-executable", "libasan.so.8", "libc.so.6"):
        assert pruned not in by_name, pruned
    assert not any(".spack" in f.split(os.sep) for f in files)


def test_every_elf_has_an_origin_relative_rpath(image, mount):
    point = mount(str(image[0]))
    checked = 0
    for root, _, names in os.walk(point):
        for name in names:
            path = os.path.join(root, name)
            if os.path.islink(path) or name == "AppRun":
                continue
            with open(path, "rb") as f:
                try:
                    parsed = elf.parse_elf(f, dynamic_section=True)
                except elf.ElfParsingError:
                    continue
            checked += 1
            if parsed.has_rpath:
                assert not parsed.is_runpath, path
                assert all(e.startswith(b"$ORIGIN") for e in parsed.dt_rpath_str.split(b":"))
    assert checked == 11


def test_dispatch_rules(image, mount):
    apprun = os.path.join(mount(str(image[0])), "AppRun")
    listing = subprocess.run([apprun], capture_output=True, text=True)
    assert listing.returncode == 2
    assert "entries:\n  ai-hello\n  ai-cxx\n  ai-origin\n  ai-runpath\n" in listing.stderr
    unknown = subprocess.run([apprun, "ls"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "'ls' is not an entry" in unknown.stderr
    # A symlink named like an entry: the runtime passes its name in ARGV0.
    by_name = subprocess.run([apprun, "q"], env=dict(os.environ, ARGV0="/x/ai-cxx"),
                             capture_output=True, text=True)
    assert by_name.stdout == "cxx: libstdc++ ok args=q\n"


def test_single_entry_gets_all_arguments_and_default_entry(site, stub_runtime, mount, tmp_path):
    single = tmp_path / "single.app"
    build(site, stub_runtime, single, "--entry", "ai-origin")
    run = subprocess.run([f"{mount(str(single))}/AppRun", "ai-origin", "a"],
                         capture_output=True, text=True)
    assert run.stdout == "origin: priv-via-origin\n"

    default = tmp_path / "default.app"
    build(site, stub_runtime, default, "--entry", "ai-cxx", "--entry", "ai-origin",
          "--default-entry", "ai-cxx")
    apprun = f"{mount(str(default))}/AppRun"
    assert subprocess.run([apprun, "a"], capture_output=True, text=True).stdout == \
        "cxx: libstdc++ ok args=a\n"
    assert subprocess.run([apprun, "ai-origin"], capture_output=True, text=True).stdout == \
        "origin: priv-via-origin\n"


def test_dry_run_writes_nothing(site, tmp_path):
    result = site("appimage", "--entry", "ai-hello=ai-hello", "--dry-run", env=site.env,
                  cwd=tmp_path)
    assert "libmid.so.1" in result.stdout and "glibc family" in result.stdout
    assert "libleaf.so.1" in result.stdout and "[RPATH of " in result.stdout
    assert os.listdir(tmp_path) == []


def test_keep_appdir(site, stub_runtime, tmp_path):
    keep = tmp_path / "appdir"
    build(site, stub_runtime, tmp_path / "k.app", "--entry", "ai-origin", "--keep-appdir",
          str(keep))
    assert (keep / "AppRun").exists()
    assert subprocess.run([keep / "AppRun"], capture_output=True, text=True).stdout == \
        "origin: priv-via-origin\n"


def test_force_replaces_an_existing_output(site, stub_runtime, tmp_path):
    output = tmp_path / "o.app"
    output.write_text("old")
    build(site, stub_runtime, output, "--entry", "ai-origin", "--force")
    assert output.read_bytes()[:4] == b"\x7fELF"


def test_runtime_and_compression_from_config(site, stub_runtime, tmp_path):
    env = site.make_env("configured", ENV_SPECS)
    with open(os.path.join(env, "spack.yaml"), "a") as f:
        f.write(f"  config:\n    appimage:\n      runtime: {stub_runtime}\n"
                "      compression: gzip\n")
    with open(os.path.join(env, "spack.lock"), "w") as f:
        f.write(open(os.path.join(site.env, "spack.lock")).read())
    site("appimage", "--entry", "ai-origin", env=env, cwd=tmp_path)
    image = (tmp_path / "configured.app").read_bytes()
    superblock = image.index(b"hsqs")
    assert int.from_bytes(image[superblock + 20: superblock + 22], "little") == 1  # gzip


def test_compression_the_official_runtime_cannot_read_warns(site, stub_runtime, tmp_path):
    result = build(site, stub_runtime, tmp_path / "xz.app", "--entry", "ai-origin",
                   "--compression", "xz")
    assert "Warning: the official AppImage runtime cannot read xz images" in result.stderr
    image = (tmp_path / "xz.app").read_bytes()
    superblock = image.index(b"hsqs")
    assert int.from_bytes(image[superblock + 20: superblock + 22], "little") == 4  # xz
