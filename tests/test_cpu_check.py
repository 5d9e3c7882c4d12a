"""The CPU an image needs, checked at launch (apprun/cpu.c) and shown by --appimage-doctor.

Real images: the project's runtime and AppRun, a gcc-built entry, and an entry table
whose cpu lines name real targets of this host's family with their real flags (archspec's,
spelled as the kernel spells them: appimage.cpu). The flags this CPU lacks are taken from
its own /proc/cpuinfo, so the tests hold on any x86_64 or aarch64 host: on an Intel host
an AMD target (zen3: sse4a, clzero) is the one it cannot run. Every launch is the ordinary
user's, in mount and in extract mode. On x86_64 AppRun asks the CPU itself (apprun/cpuid.c)
and reads /proc/cpuinfo only for a flag its table lacks: a program built with that file
shows each of the table's answers equal to what this host's /proc/cpuinfo says.
"""

import os
import shutil
import subprocess
import tempfile

import pytest
from conftest import cc, make_image

from spack.extensions.appimage import apprun, cpu
from spack.extensions.appimage.compat import archspec_cpu


MODES = {"mount": {}, "extract": {"APPIMAGE_EXTRACT_AND_RUN": "1"}}

APPRUN_SOURCES = os.path.dirname(apprun.SOURCES[0])
#: A flag name no kernel prints, so no CPU has it: cpuid.c's table cannot answer for it,
#: and AppRun reads /proc/cpuinfo to find it missing.
OFF_TABLE = "flag_of_no_cpu"

#: The bundled specs the cpu lines name.
SPECS = "fftw@3.3.10"
SEVERAL_SPECS = "fftw@3.3.10,zlib@1.3.1"

ENTRY = """
    #include <stdio.h>
    int main(int argc, char **argv) {
        printf("entry ran");
        for (int i = 1; i < argc; i++) printf(" %s", argv[i]);
        printf("\\n");
        return 0;
    }
"""


def first_processor_block():
    """(flags, model name) of the first processor of /proc/cpuinfo."""
    with open("/proc/cpuinfo") as f:
        block = f.read().split("\n\n")[0]
    fields = dict((k.strip(), v.strip()) for k, _, v in
                  (line.partition(":") for line in block.splitlines()))
    flags = fields.get("flags", fields.get("Features"))
    if flags is None:
        pytest.fail("/proc/cpuinfo lists no flags: the CPU check needs an x86_64 or aarch64 "
                    "host", pytrace=False)
    return set(flags.split()), fields.get("model name")


HOST_FLAGS, MODEL = first_processor_block()
FAMILY = archspec_cpu.host().family
#: The family's generic levels as the table lists them, lowest first.
LEVELS = [(t.name, cpu.kernel_flags(t)) for t in cpu.generic_levels(FAMILY)]


def lacking(flags):
    return [f for f in flags if f not in HOST_FLAGS]


def family_targets():
    return [t for t in archspec_cpu.TARGETS.values() if t.family == FAMILY]


def foreign_target():
    """The newest real target of another vendor among those this CPU lacks the fewest
    flags of (one at least): an AMD target (zen4: clzero, sse4a) on an Intel host."""
    vendor = archspec_cpu.host().vendor
    candidates = [t for t in family_targets()
                  if t.vendor not in (vendor, "generic") and lacking(cpu.kernel_flags(t))]
    if not candidates:
        pytest.fail(f"this CPU has every flag of the other vendors' {FAMILY} targets "
                    "archspec knows: run the test on a host of another vendor", pytrace=False)
    return min(candidates, key=lambda t: (len(lacking(cpu.kernel_flags(t))), -len(t.ancestors)))


def highest_level():
    """What the refusal suggests: the highest generic level this CPU has, else the family."""
    had = [name for name, flags in LEVELS if not lacking(flags)]
    return had[-1] if had else FAMILY.name


def listed(missing):
    """The missing flags as AppRun's line lists them: six, then "and N more"."""
    return ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")


def refusal(image, target, missing, specs, level):
    return (f"{os.path.basename(image)}: this CPU lacks {listed(missing)}, which the image's "
            f"{target} build of {specs.replace(',', ', ')} needs; rebuild for a target this "
            f"node has (e.g. target={level}), or set APPIMAGE_IGNORE_CPU=1 to run anyway\n")


def cpu_lines(target, specs, flags, levels=None):
    return [("cpu", target, specs, " ".join(flags))] + [
        ("cpu-level", name, " ".join(level_flags))
        for name, level_flags in (LEVELS if levels is None else levels)]


def appdir_with(work, name, lines):
    """An AppDir with the project's AppRun, a gcc-built entry and a table with ``lines``;
    a random file makes the image's ID (and so its mount and cache) this session's own."""
    appdir = os.path.join(work, name)
    os.makedirs(os.path.join(appdir, "bin"))
    cc(os.path.join(appdir, "bin", "probe"), ENTRY)
    os.remove(os.path.join(appdir, "bin", "probe.c"))
    apprun.write_table(appdir, [apprun.EntryPoint("probe", "bin/probe")], None, ["bin"],
                       cpu=lines)
    shutil.copy(apprun.build(), os.path.join(appdir, "AppRun"))
    with open(os.path.join(appdir, "session"), "wb") as f:
        f.write(os.urandom(16))
    return appdir


@pytest.fixture(scope="module")
def images(our_runtime):
    """name -> (image, what its refusal says or None), world-readable (the ordinary user
    runs them):

    own: the host's own target (archspec's detection): it has every flag;
    generic: no cpu line (a build for the family's base: no cpu-level line either);
    foreign: a real target this CPU lacks some flags of;
    many: more than six lacking flags (every flag of the family's targets this CPU
      lacks), built for several specs;
    no level: the foreign target, in a table whose only level this CPU lacks too;
    off table: the foreign target's flags and a flag only /proc/cpuinfo can answer for,
      which this CPU lacks as well."""
    foreign = foreign_target()
    every_lacking = sorted(set().union(*(lacking(cpu.kernel_flags(t))
                                         for t in family_targets())))
    if len(every_lacking) < 7:
        pytest.fail(f"this CPU lacks only {every_lacking} of the {FAMILY} targets' flags: "
                    "'and N more' needs seven; run on a host of another vendor",
                    pytrace=False)
    own = archspec_cpu.host()
    flags = cpu.kernel_flags(foreign)
    kinds = {
        "own": (cpu_lines(own.name, SPECS, cpu.kernel_flags(own)), None),
        "generic": ([], None),
        "foreign": (cpu_lines(foreign.name, SPECS, flags),
                    (foreign.name, lacking(flags), SPECS, highest_level())),
        "many": (cpu_lines(foreign.name, SEVERAL_SPECS, sorted(HOST_FLAGS)[:5] + every_lacking),
                 (foreign.name, every_lacking, SEVERAL_SPECS, highest_level())),
        "no level": (cpu_lines(foreign.name, SPECS, flags, levels=[(foreign.name, flags)]),
                     (foreign.name, lacking(flags), SPECS, FAMILY.name)),
        "off table": (cpu_lines(foreign.name, SPECS, sorted(flags + (OFF_TABLE,))),
                      (foreign.name, lacking(sorted(flags + (OFF_TABLE,))), SPECS,
                       highest_level())),
    }
    work = tempfile.mkdtemp(prefix="cpu-test-")  # not pytest's: closed to others
    try:
        os.chmod(work, 0o755)
        made = {}
        for name, (lines, refused) in kinds.items():
            image = os.path.join(work, name.replace(" ", "-") + ".app")
            make_image(our_runtime, appdir_with(work, name, lines), image)
            made[name] = (image, refusal(image, *refused) if refused else None)
        yield made
    finally:
        shutil.rmtree(work)


def launch(user, image, mode, env=None):
    result = user.run([image, "a", "b"], env=dict(MODES[mode], **(env or {})))
    assert user.wait_nothing_left(image), user.leftovers(image)
    return result


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["foreign", "many", "no level", "off table"])
def test_a_cpu_lacking_flags_is_refused_in_one_line_before_the_entry_runs(
        images, ordinary_user, mode, kind):
    image, expected = images[kind]
    result = launch(ordinary_user, image, mode)
    assert (result.returncode, result.stderr, result.stdout) == (127, expected, "")


@pytest.mark.parametrize("mode", MODES)
def test_apprun_ignore_cpu_runs_it_anyway(images, ordinary_user, mode):
    image, _ = images["foreign"]
    result = launch(ordinary_user, image, mode, {"APPIMAGE_IGNORE_CPU": "1"})
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "entry ran a b\n")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["own", "generic"])
def test_a_cpu_with_every_flag_runs_it(images, ordinary_user, mode, kind):
    image, _ = images[kind]
    result = launch(ordinary_user, image, mode)
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "entry ran a b\n")


def doctor_cpu_lines(user, image):
    result = user.run([image, "--appimage-doctor"])
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines()
            if line.startswith(("cpu:", "image needs:"))]


def test_doctor_shows_this_cpu_and_what_the_image_needs(images, ordinary_user):
    model = MODEL or "model not named by the kernel"
    level = f" (highest generic level: {highest_level()})"
    foreign = foreign_target()
    assert doctor_cpu_lines(ordinary_user, images["foreign"][0]) == [
        f"cpu: {model}{level}",
        f"image needs: {foreign.name} CPU (for {SPECS}): this CPU lacks "
        f"{', '.join(lacking(cpu.kernel_flags(foreign)))} (the image refuses to start here; "
        "APPIMAGE_IGNORE_CPU=1 runs it anyway)"]
    own = archspec_cpu.host().name
    assert doctor_cpu_lines(ordinary_user, images["own"][0]) == [
        f"cpu: {model}{level}", f"image needs: {own} CPU (for {SPECS}): this CPU has it"]
    assert doctor_cpu_lines(ordinary_user, images["generic"][0]) == [
        f"cpu: {model}", f"image needs: any {FAMILY.name} CPU"]


#: Prints cpuid.c's table (its names, in its order) without arguments, else cpuid_has's
#: answer for each argument, asked in the order given (cpuid.c resumes each lookup where
#: the previous one stopped, so the order is part of what is tested).
ANSWERS = """
    #include <stdio.h>
    #include "cpuid.c"
    int main(int argc, char **argv) {
    #if defined(__x86_64__)
        if (argc == 1)
            for (size_t i = 0; i < sizeof FLAGS / sizeof *FLAGS; i++) puts(FLAGS[i].name);
    #endif
        for (int i = 1; i < argc; i++)
            printf("%s %d\\n", argv[i], cpuid_has(argv[i], strlen(argv[i])));
        return 0;
    }
"""


@pytest.fixture(scope="module", params=["glibc's copy", "CPUID instruction"])
def cpuid_program(request, tmp_path_factory):
    """The answers program built with the project's cpuid.c, reading glibc's copy of the
    CPUID leaves (as AppRun does with glibc >= 2.33) or asking the CPU itself (musl, older
    glibc, a vendor glibc does not know)."""
    flags = ["-DCPUID_NOT_FROM_GLIBC"] if request.param == "CPUID instruction" else []
    return cc(str(tmp_path_factory.mktemp("cpuid") / "answers"), ANSWERS,
              f"-I{APPRUN_SOURCES}", "-Wall", "-Werror", *flags)


def answers(program, *names):
    out = subprocess.run([program, *names], capture_output=True, text=True, check=True).stdout
    return [tuple(line.split()) for line in out.splitlines()] if names else out.split()


def test_the_cpus_own_answers_are_what_this_hosts_proc_cpuinfo_says(cpuid_program):
    """Every flag of cpuid.c's table, asked in the table's order, backwards, and among
    names it has no answer for (-1: AppRun reads /proc/cpuinfo for those): the CPU's
    answer is whether the first processor block of /proc/cpuinfo lists the flag."""
    table = answers(cpuid_program)
    if FAMILY.name != "x86_64":
        assert table == [] and answers(cpuid_program, "fp", "sve") == [("fp", "-1"),
                                                                      ("sve", "-1")]
        return
    assert table == sorted(table) and len(table) == len(set(table)) > 60
    expected = {name: str(int(name in HOST_FLAGS)) for name in table}
    unknown = {name: "-1" for name in ("avx5", "ibrs_enhanced", "zzz", "a", OFF_TABLE)}
    interleaved = [name for pair in zip(reversed(table), list(unknown) * len(table))
                   for name in pair]
    for order in (table, table[::-1], interleaved):
        assert dict(answers(cpuid_program, *order)) == dict(expected, **{
            name: unknown[name] for name in order if name in unknown})


def test_the_cpu_answers_every_flag_of_archspecs_targets_but_one(cpuid_program):
    """AppRun reads no /proc/cpuinfo for any x86_64 target of archspec but zen5, whose
    ibrs_enhanced Intel reports in a model-specific register only the kernel can read
    (the archspec of Spack 0.23 has no zen5)."""
    if FAMILY.name != "x86_64":
        pytest.skip("cpuid.c answers on x86_64 only (aarch64 reads /proc/cpuinfo)")
    needed = set().union(*(cpu.kernel_flags(t) for t in family_targets()))
    assert needed - set(answers(cpuid_program)) <= {"ibrs_enhanced"}


def test_apprun_reads_cpuinfo_only_for_a_flag_the_cpu_cannot_answer(images, tmp_path):
    """The check costs no file read where the CPU answers (x86_64, every flag of the
    image's table in cpuid.c's): AppRun opens /proc/cpuinfo only for a flag it cannot
    answer for (off table), or on another family, and never for an image without cpu
    lines (the system calls, seen by strace)."""
    strace = shutil.which("strace")
    if not strace:
        pytest.fail("strace is not on PATH: apt-get install strace", pytrace=False)
    env = {k: v for k, v in os.environ.items() if k != "APPIMAGE_IGNORE_CPU"}
    opened = {}
    for kind in ("generic", "own", "foreign", "off table"):
        appdir = os.path.join(os.path.dirname(images[kind][0]), kind)
        trace = tmp_path / f"{kind}.trace"
        subprocess.run([strace, "-f", "-e", "trace=open,openat", "-o", str(trace),
                        os.path.join(appdir, "AppRun")], capture_output=True, env=env)
        opened[kind] = "/proc/cpuinfo" in trace.read_text()
    answers_all = FAMILY.name == "x86_64" and "ibrs_enhanced" not in cpu.kernel_flags(
        archspec_cpu.host()) and "ibrs_enhanced" not in cpu.kernel_flags(foreign_target())
    assert opened == {"generic": False, "own": not answers_all, "foreign": not answers_all,
                      "off table": True}


@pytest.mark.parametrize("cpuinfo", ["/dev/null", "/proc/version"])
def test_a_flag_nothing_answers_for_never_refuses(images, cpuinfo):
    """/proc/cpuinfo empty or without a flags line (here: another file bound over it in a
    mount namespace of the test's own): a flag only it could answer for is not counted
    missing, so the off-table image is refused for the CPU's answers alone, and on
    x86_64, where the CPU answers, the foreign image is refused as ever and the doctor
    shows the same (the model alone is unknown); elsewhere nothing is refused and the
    doctor says the CPU is unknown."""
    hidden = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
              f'mount --bind {cpuinfo} /proc/cpuinfo && exec "$@"', "sh"]

    def apprun_of(kind):
        appdir = os.path.join(os.path.dirname(images[kind][0]), kind)
        return subprocess.run(hidden + [os.path.join(appdir, "AppRun"), "a"],
                              capture_output=True, text=True)

    foreign = foreign_target()
    flags = cpu.kernel_flags(foreign)
    doctor = subprocess.run(hidden + [images["foreign"][0], "--appimage-doctor"],
                            capture_output=True, text=True).stdout
    results = {kind: apprun_of(kind) for kind in ("foreign", "off table")}
    if FAMILY.name != "x86_64":
        for result in results.values():
            assert (result.returncode, result.stderr, result.stdout) == (0, "", "entry ran a\n")
        assert "cpu: unknown (/proc/cpuinfo is unreadable or lists no flags)\n" in doctor
        assert (f"image needs: {foreign.name} CPU (for {SPECS}): not checked (this "
                "CPU's flags are unknown)\n" in doctor)
        return
    for result in results.values():  # AppRun run from its AppDir calls the image "AppRun"
        assert (result.returncode, result.stdout, result.stderr) == (127, "", refusal(
            "AppRun", foreign.name, lacking(flags), SPECS, highest_level()))
    assert (f"cpu: model not named by the kernel (highest generic level: {highest_level()})\n"
            in doctor)
    assert (f"image needs: {foreign.name} CPU (for {SPECS}): this CPU lacks "
            f"{', '.join(lacking(flags))} (the image refuses to start here" in doctor)
