"""Discovering entries: ``--list-entries``, ``--entry 'SPEC/*'``, and the errors of a
wrong ``--entry`` (did you mean, which specs have it, which spec is likely meant).

The session's environment has ai-hello in two specs (ai-cxx and ai-hello); a second
environment holds ai-junk, whose bin/ has two programs and a link to one among what is
no program (an executable libtool .la file, an ELF file without the executable bit, a
directory, a dangling link, a link out of the store) and a script of the host's
/bin/sh, and ai-script, with a script whose interpreter exists nowhere.
"""

import glob
import json
import os
import re
import subprocess
import tempfile

import pytest
from conftest import fails, readable_tmp_dir, store_renamed_away

#: What ai-junk and ai-script offer: the programs an image can run, and the others.
JUNK_LISTING = {
    "ai-junk": ["ai-junk", "run-junk",
                "(an image cannot run ai-junk-config: --entry NAME says why)"],
    "ai-script": ["say-hello", "say-sbang",
                  "(an image cannot run say-nowhere: --entry NAME says why)"],
}
JUNK_ENTRIES = ["ai-junk", "run-junk", "say-hello", "say-sbang"]


def list_command(env) -> str:
    return f"spack -e {os.path.realpath(env)} appimage --list-entries"


def listed(site, env):
    """``--list-entries`` run in an empty directory: (spec name -> (label, its lines), the
    ``==>`` notes at the end); the directory stays empty (no image is built)."""
    with tempfile.TemporaryDirectory() as cwd:
        result = site("appimage", "--list-entries", env=env, cwd=cwd)
        assert os.listdir(cwd) == []
    assert result.stderr == ""
    sections, notes = {}, []
    for line in result.stdout.splitlines():
        header = re.fullmatch(r"-- (\S+) -+", line)
        if header:
            lines = []
            sections[header.group(1).split("@")[0]] = (header.group(1), lines)
        elif line.startswith("==> "):
            notes.append(line)
        else:
            lines.append(line)
    return sections, notes


def installed(site, spec_label: str) -> str:
    """The store prefix that a label ``name@version/hash7`` names (one, or the test fails)."""
    name_version, hash7 = spec_label.split("/")
    # <store>/<arch>/<name>-<version>-<hash> since Spack 1.0, <arch>/<compiler>/... before
    prefixes = glob.glob(f"{site.store}/**/{name_version.replace('@', '-')}-{hash7}*",
                         recursive=True)
    assert len(prefixes) == 1, (spec_label, prefixes)
    return prefixes[0]


@pytest.fixture(scope="module")
def junk_env(site):
    env = site.make_env("entries", ["ai-junk", "ai-script"])
    site.install(env)
    return env


@pytest.fixture(scope="module")
def shared_dir():
    """The image and a link to it."""
    with readable_tmp_dir("entries-") as directory:
        yield directory


@pytest.fixture(scope="module")
def junk_image(site, junk_env, shared_dir):
    """Every program of ai-junk and ai-script, with the project's own runtime."""
    output = os.path.join(shared_dir, "junk.app")
    result = site("appimage", "--entry", "ai-junk/*", "--entry", "ai-script/*", "-o", output,
                  env=junk_env)
    return output, result


def test_list_entries_shows_the_programs_of_each_root_spec(site):
    sections, notes = listed(site, site.env)
    assert {name: lines for name, (_, lines) in sections.items()} == {
        "ai-cxx": ["ai-cxx", "ai-hello*"],
        "ai-gpu": ["gpu-app"],
        "ai-hello": ["ai-hello*", "hello-twin"],
        "ai-mpi": ["mpi-copy", "mpi-hello"],
        "ai-origin": ["ai-origin"],
        "ai-plugin": ["plugin-host"],
        "ai-runpath": ["ai-runpath"],
        "ai-script": JUNK_LISTING["ai-script"],
    }
    # Each header names the installed spec: name@version/hash7.
    for name, (spec_label, lines) in sections.items():
        for program in lines:
            if not program.startswith("("):
                assert os.path.isfile(
                    os.path.join(installed(site, spec_label), "bin", program.rstrip("*")))
    # ai-hello's data-exec (text), not-executable and escape (to /bin/true) are no programs.
    assert set(os.listdir(os.path.join(installed(site, sections["ai-hello"][0]), "bin"))) >= {
        "data-exec", "not-executable", "escape"}
    cxx, hello = sections["ai-cxx"][0], sections["ai-hello"][0]
    assert notes == [f"==> *ai-hello is in {cxx}, {hello}: pick one with --entry ai-hello=SPEC"]


def test_list_entries_leaves_out_what_is_no_program(site, junk_env):
    sections, notes = listed(site, junk_env)
    assert {name: lines for name, (_, lines) in sections.items()} == JUNK_LISTING
    assert notes == []
    junk_bin = os.path.join(installed(site, sections["ai-junk"][0]), "bin")
    assert sorted(os.listdir(junk_bin)) == [
        "ai-junk", "ai-junk-config", "dangling", "host-true", "libjunk.la", "not-runnable",
        "plugins.d", "run-junk"]


@pytest.mark.parametrize("entry, messages", [
    # a typo: the close names, and where the list is
    ("ai-helo", ["--entry ai-helo: no bin/ai-helo in the environment's installed specs; "
                 "did you mean ai-hello", "LIST"]),
    ("no-such-program", ["no bin/no-such-program in the environment's installed specs; "
                         "`LIST` lists the programs"]),
    # =SPEC names a spec without it: the specs that have it, the one named like it first
    ("ai-hello=ai-side", ["--entry ai-hello=ai-side: no bin/ai-hello in the environment's "
                          "specs matching ai-side; it is in ai-cxx@1.0/",
                          "e.g. --entry ai-hello=ai-hello"]),
    # two specs have it: ai-cxx comes first by name, ai-hello is named like it
    ("ai-hello", ["bin/ai-hello is in several specs: ai-cxx@1.0/",
                  "say which with --entry ai-hello=SPEC, e.g. --entry ai-hello=ai-hello"]),
    ("nothing/*", ["--entry nothing/*: no installed spec of the environment matches "
                   "nothing (specs are matched by their own name: for a virtual, name its "
                   "provider); `LIST` lists its root specs"]),
    ("ai-side/*", ["--entry ai-side/*: ai-side@2.0/", "has no programs in bin/ that an "
                   "image can run; `LIST` lists the programs of each root spec"]),
    ("/*", ["--entry /*: no spec given; name one"]),
    ("ai-*/*", ["--entry ai-*/*: 'ai-*' is not a spec ("]),
])
def test_wrong_entries_say_what_exists(site, entry, messages):
    line = fails(site, "--entry", entry, "--dry-run", env=site.env)
    for message in messages:
        assert message.replace("LIST", list_command(site.env)) in line
    assert "location -i" not in line


def test_every_program_of_a_spec_in_the_report(site, junk_env):
    result = site("appimage", "--entry", "ai-junk/*", "--dry-run", "--json", env=junk_env)
    report = json.loads(result.stdout)
    assert [(e["entry"], e["path"].split("/bin/")[1]) for e in report["entries"]] == [
        ("ai-junk", "ai-junk"), ("run-junk", "run-junk")]
    assert ("--entry ai-junk/* (ai-junk-config): " in result.stderr
            and "is a script of the host's /bin/sh" in result.stderr)


def test_every_program_of_a_spec_runs_from_the_image(site, junk_image, ordinary_user):
    """The image of ``--entry 'ai-junk/*' --entry 'ai-script/*'`` runs each program as
    the store's copy does, by name and through a link named like it, as an ordinary
    user, with the store renamed away."""
    image, result = junk_image
    for left_out in ("ai-junk/* (ai-junk-config)", "ai-script/* (say-nowhere)"):
        assert f"==> Warning: --entry {left_out}: " in result.stderr
    args = ["a b", "c"]
    expected = {}
    for name in JUNK_ENTRIES:
        program, = glob.glob(f"{site.store}/**/ai-*/bin/{name}", recursive=True)
        expected[name] = subprocess.run([program, *args], capture_output=True, text=True,
                                        check=True).stdout
    link = os.path.join(os.path.dirname(image), "run-junk")
    os.symlink(os.path.basename(image), link)
    with store_renamed_away(site):
        manifest = ordinary_user.run([image, "--appimage-manifest"])
        runs = {name: ordinary_user.run([image, name, *args]) for name in JUNK_ENTRIES}
        by_link = ordinary_user.run([link, *args])
    assert manifest.returncode == 0, manifest.stderr
    assert [e["name"] for e in json.loads(manifest.stdout)["entries"]] == JUNK_ENTRIES
    for name, run in runs.items():
        assert (run.returncode, run.stdout, run.stderr) == (0, expected[name], ""), name
    assert (by_link.returncode, by_link.stdout) == (0, expected["run-junk"])
    assert expected["ai-junk"] == "junk: [a b] [c]\n"
    assert ordinary_user.wait_nothing_left(image)
