"""The CPU an image needs: said by the build and the dry run, recorded in the manifest and
the entry table, and checked by AppRun before anything of the image runs.

Real Spack builds of ai-hello (and its libraries) in stores of their own, once for a
target whose flags this host lacks (chosen from this host's own /proc/cpuinfo: an AMD one
on an Intel host, an Intel one on an AMD host; gcc compiles for it with -march, the host
cannot be trusted to run it) and once for ``x86_64_v3``; real images of both, run as an
ordinary user through the project's runtime.
"""

import json
import os

import pytest

import spack
from conftest import readable_tmp_dir
from spack.extensions.appimage import cpu
from spack.extensions.appimage.compat import archspec_cpu

#: Targets an image may be built for on a host that cannot run it: one per vendor, known
#: to every tested Spack's archspec and to gcc >= 10.3 (-march=znver3, -march=icelake-server).
FOREIGN_CANDIDATES = ("zen3", "icelake")


def host_flags():
    """The flags of the first processor of /proc/cpuinfo, as AppRun reads them."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return set(value.split())
    pytest.fail("/proc/cpuinfo lists no flags: the CPU tests need an x86_64 or aarch64 "
                "Linux host", pytrace=False)


def foreign_target():
    """A target whose flags this host lacks, and those flags."""
    flags = host_flags()
    for name in FOREIGN_CANDIDATES:
        missing = set(cpu.kernel_flags(archspec_cpu.TARGETS[name])) - flags
        if missing:
            return name, missing
    pytest.fail(f"this host has every flag of {', '.join(FOREIGN_CANDIDATES)}: add a target "
                "it lacks to FOREIGN_CANDIDATES", pytrace=False)


def install_for(site, target: str) -> str:
    """An environment of ai-hello with every spec built for ``target``, installed in a
    store of its own: tests of the session's store expect one ai-hello there.
    ``host_compatible: false`` lets the concretizer pick a target this host cannot run
    (Spack 0.23 and 1.x alike)."""
    path = os.path.join(site.root, "envs", f"cpu-{target}")
    os.makedirs(path)
    with open(os.path.join(path, "spack.yaml"), "w") as f:
        f.write("spack:\n  specs: [ai-hello]\n  view: false\n"
                f"  config:\n    install_tree:\n      root: {path}/store\n"
                "  concretizer:\n    targets:\n      host_compatible: false\n"
                f"  packages:\n    all:\n      require: target={target}\n")
    installed = site.install(path, check=False)
    if installed.returncode != 0:
        pytest.fail(f"Spack {spack.spack_version} could not build ai-hello for "
                    f"target={target} on this host:\n{installed.stdout}\n{installed.stderr}",
                    pytrace=False)
    return path


#: The builds for other targets cost 3 minutes per Spack version, so the matrix runs the
#: tests of their images with the first Spack only (README, Tests); what changes with
#: Spack's version (archspec's targets and flag names, a spec's target) is tested with
#: every version on the session's own environment and on real Spec objects below.
one_spack = pytest.mark.one_spack


@pytest.fixture(scope="module")
def images_dir():
    with readable_tmp_dir("cpu-images-") as directory:
        yield directory


def built(site, env, images_dir, name):
    """The image of ai-hello of ``env`` (the project's runtime) and what the build said."""
    output = os.path.join(images_dir, name)
    result = site("appimage", "-o", output, "--entry", "ai-hello=ai-hello", env=env)
    return output, result.stdout


@pytest.fixture(scope="module")
def foreign(site, images_dir):
    target, missing = foreign_target()
    env = install_for(site, target)
    image, said = built(site, env, images_dir, "foreign.app")
    return target, missing, env, image, said


@pytest.fixture(scope="module")
def v3(site, images_dir):
    env = install_for(site, "x86_64_v3")
    image, said = built(site, env, images_dir, "v3.app")
    return env, image, said


def manifest_of(image, user):
    run = user.run([image, "--appimage-manifest"])
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def table_of(image, mount):
    """The entry table's cpu lines: target -> (specs, flags); cpu-level lines: name ->
    flags, in their order."""
    needs, levels = {}, {}
    with open(os.path.join(mount(image), ".appimage", "entries")) as f:
        for line in f.read().splitlines():
            fields = line.split("\t")
            if fields[0] == "cpu":
                needs[fields[1]] = (fields[2].split(","), set(fields[3].split()))
            elif fields[0] == "cpu-level":
                levels[fields[1]] = set(fields[2].split())
    return needs, levels


@one_spack
def test_build_and_manifest_say_what_a_foreign_target_needs(foreign, ordinary_user, mount):
    target, missing, _, image, said = foreign
    lines = [line for line in said.splitlines() if "-compatible CPU" in line]
    assert len(lines) == 1, said
    generic = archspec_cpu.TARGETS[target].generic.name
    assert f"the image needs a{'n' if target[0] in 'aeiox' else ''} {target}-compatible CPU " \
           f"({generic}: " in lines[0]
    assert "spack config add" not in said  # not this host's CPU: nothing to suggest
    needs, levels = table_of(image, mount)
    assert list(needs) == [target]
    specs, flags = needs[target]
    assert "ai-hello@1.0" in specs and "ai-leaf@1.0" in specs
    assert missing <= flags  # the flags this host lacks are what AppRun checks
    assert list(levels)[0] == "x86_64_v2" and all(
        set(levels[a]) < set(levels[b]) for a, b in zip(levels, list(levels)[1:]))
    record = manifest_of(image, ordinary_user)["cpu"]
    assert record["family"] == "x86_64" and record["most_demanding"] == [target]
    assert record["level"] == generic
    assert [(t["name"], set(t["flags"])) for t in record["targets"]] == [(target, flags)]
    assert set(record["flags"]) == flags


@one_spack
def test_foreign_image_refuses_with_one_line_and_runs_with_the_override(foreign,
                                                                         ordinary_user, mount):
    target, missing, _, image, _ = foreign
    refused = ordinary_user.run([image, "x"])
    assert refused.returncode == 127, refused.stdout + refused.stderr
    assert refused.stdout == ""
    [line] = refused.stderr.splitlines()
    assert "this CPU lacks " in line and all(flag in line for flag in sorted(missing)[:6])
    assert f"the image's {target} build of " in line and "ai-hello@1.0" in line
    assert "APPIMAGE_IGNORE_CPU=1" in line
    flags = host_flags()
    best = [name for name, level_flags in table_of(image, mount)[1].items()
            if level_flags <= flags]
    assert f"target={best[-1] if best else 'x86_64'}" in line
    ran = ordinary_user.run([image, "x"], env={"APPIMAGE_IGNORE_CPU": "1"})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("hello: ") and "greeting=bonjour args=x" in ran.stdout
    ordinary_user.wait_nothing_left(image)


@one_spack
def test_dry_run_json_says_the_need(site, foreign):
    target, missing, env, _, _ = foreign
    run = site("appimage", "--dry-run", "--json", "-o", "x.app", "--entry",
               "ai-hello=ai-hello", env=env)
    record = json.loads(run.stdout)["cpu"]
    assert record["most_demanding"] == [target] and missing <= set(record["flags"])
    assert record["summary"].startswith(f"needs a{'n' if target[0] in 'aeiox' else ''} "
                                        f"{target}-compatible CPU")
    assert record["hint"] is None


@one_spack
def test_x86_64_v3_image_records_no_more_than_v3_and_runs(v3, ordinary_user, mount):
    _, image, said = v3
    assert "the image needs an x86_64_v3-compatible CPU (x86_64_v3: avx, " in said
    needs, levels = table_of(image, mount)
    assert list(needs) == ["x86_64_v3"]
    assert needs["x86_64_v3"][1] == levels["x86_64_v3"]
    assert levels["x86_64_v3"] <= host_flags()  # spelled as the kernel spells them
    assert set(manifest_of(image, ordinary_user)["cpu"]["flags"]) == levels["x86_64_v3"]
    ran = ordinary_user.run([image, "y"])
    assert ran.returncode == 0, ran.stderr
    assert "greeting=bonjour args=y" in ran.stdout
    ordinary_user.wait_nothing_left(image)


@one_spack
def test_dry_run_text_says_a_generic_need(site, v3):
    env, _, _ = v3
    [line] = [line for line in dry_run_text(site, env) if "-compatible CPU" in line]
    assert line.split()[0] == "CPU"
    assert "needs an x86_64_v3-compatible CPU (x86_64_v3: " in line


def test_dry_run_text_says_the_need_and_the_portable_choice_for_the_host_cpu(site):
    """With every Spack: the session's environment, built for Spack's default target
    (this host's own), through that Spack's archspec and its flag names."""
    host = archspec_cpu.host()
    lines = dry_run_text(site, site.env)  # the session's environment: Spack's default target
    if host.vendor == "generic":
        assert not any("spack config add" in line for line in lines)
        return
    [need] = [line for line in lines if f"{host.name}-compatible CPU" in line]
    [hint] = [line for line in lines if "spack config add" in line]
    assert lines.index(hint) == lines.index(need) + 1
    assert f"{host.name} is this host's own CPU" in hint
    portable = "x86_64_v3" if archspec_cpu.TARGETS["x86_64_v3"] in host.ancestors \
        else host.generic.name
    assert f'spack config add "packages:all:require:target={portable}"' in hint


def dry_run_text(site, env):
    return site("appimage", "--dry-run", "-o", "x.app", "--entry", "ai-hello=ai-hello",
                env=env).stdout.splitlines()


def test_specs_of_a_family_base_need_nothing_and_incomparable_targets_are_all_named():
    from spack.spec import Spec

    assert cpu.of_specs([Spec("ai-hello@=1.0 target=x86_64"),
                         Spec("ai-leaf@=1.0 target=x86_64")]) is None
    need = cpu.of_specs([Spec("ai-hello@=1.0 target=zen3"), Spec("ai-leaf@=1.0 target=icelake"),
                         Spec("ai-mid@=1.0 target=x86_64_v3"), Spec("ai-side@=1.0 target=x86_64")])
    assert need.most_demanding == ("icelake", "zen3") and need.level == "x86_64_v4"
    assert [t.name for t in need.targets] == ["icelake", "x86_64_v3", "zen3"]
    assert set(need.flags) == set(need.targets[0].flags) | set(need.targets[2].flags)
    assert cpu.summary(need).startswith(
        "needs a CPU compatible with each of icelake, zen3 (x86_64_v4: avx512")
