"""What users see: the dry-run report, the manifest inside the image, the SBOM, the
desktop entry, progress lines and help. Real builds of the session's environment, the
image's own runtime reading its manifest, the official CycloneDX 1.5 JSON schema and
freedesktop's desktop-file-validate."""

import glob
import hashlib
import json
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import zlib

import pytest
from elftools.elf.elffile import ELFFile

from conftest import _require, fails

ENTRIES = ["--entry", "ai-hello=ai-hello", "--entry", "mpi-hello"]


@pytest.fixture(scope="module")
def dry_run(site, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("dry")
    text = site("appimage", *ENTRIES, "--dry-run", env=site.env, cwd=cwd).stdout
    as_json = site("appimage", *ENTRIES, "--dry-run", "--json", env=site.env, cwd=cwd).stdout
    assert os.listdir(cwd) == []
    return text, json.loads(as_json)


@pytest.fixture(scope="module")
def built(site, tmp_path_factory):
    """An image with the project's runtime, its SBOM, and the build's output."""
    work = tmp_path_factory.mktemp("built")
    result = site("appimage", *ENTRIES, "-o", str(work / "hello.app"), "--sbom",
                  str(work / "hello.cdx.json"), env=site.env)
    return work / "hello.app", work / "hello.cdx.json", result


def manifest_of(image):
    run = subprocess.run([image, "--appimage-manifest"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_dry_run_tree(dry_run):
    text, _ = dry_run
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ai-hello  ai-hello@1.0/"))
    # libtree-like: libmid under ai-hello, libleaf under libmid, each with owner and via.
    assert re.match(r"├── libmid\.so\.1  ai-mid-1\.0-\w{7}  opt/ai-mid-1\.0-\w{7}/lib/"
                    r"libmid\.so\.1  \[RPATH of ai-hello: .*/ai-mid-1\.0-\w+/lib\]$",
                    lines[start + 1]), lines[start + 1]
    assert re.match(r"│   └── libleaf\.so\.1  ai-leaf-1\.0-\w{7}  .*\[RPATH of libmid\.so\.1: ",
                    lines[start + 2]), lines[start + 2]
    assert "└── libmpi.so.40  (host: external openmpi@4.1.4)" in lines
    assert not any("libc.so.6  (host" in line for line in lines)  # glibc: in "from the host"
    assert re.search(r"^  libc\.so\.6 +glibc family$", text, re.MULTILINE)
    assert re.search(r"^  \S+/share/man  \[share/man\]$", text, re.MULTILINE)
    total = re.search(r"^total: (\d+) files and \d+ links?, [\d,]+ bytes from 5 specs; "
                      r"2 libraries from the host; (\d+) paths? and (\d+) links? left out$",
                      text, re.MULTILINE)
    assert total, text
    _, report = dry_run
    # the counts are those of the lists shown
    assert int(total.group(1)) == report["totals"]["files"]
    assert int(total.group(2)) == len(report["excluded"])
    assert int(total.group(3)) == len(report["skipped_links"])


def test_dry_run_table_columns_line_up(dry_run):
    """Each number ends where its column's header ends."""
    text, _ = dry_run
    lines = text.splitlines()
    at = lines.index("bundled bytes per spec:")
    header, rows = lines[at + 1], lines[at + 2:]
    rows = rows[:next(i for i, line in enumerate(rows) if line.startswith("  total ")) + 1]
    ends = [m.end() for m in re.finditer(r"\S+", header)]
    assert len(ends) == 4
    for row in rows:
        assert [m.end() for m in re.finditer(r"\S+", row)][-4:] == ends, (header, row)


def test_dry_run_json(dry_run):
    _, report = dry_run
    hello = next(t for t in report["entries"] if t["entry"] == "ai-hello")
    [mid] = [n for n in hello["loads"] if n["needed"] == "libmid.so.1"]
    assert [n["needed"] for n in mid["loads"]] == ["libleaf.so.1"]
    assert mid["found_via"]["kind"] == "rpath" and mid["found_via"]["object"] == "ai-hello"
    assert mid["found_via"]["directory"].endswith("/lib") and "/ai-mid-1.0-" in \
        mid["found_via"]["directory"]
    specs = {s["owner"].rsplit("-", 2)[0]: s for s in report["specs"]}
    assert set(specs) == {"ai-hello", "ai-mid", "ai-leaf", "ai-side", "ai-mpi"}
    assert specs["ai-hello"]["binaries"] > 0 and specs["ai-hello"]["libraries"] == 0
    assert specs["ai-leaf"]["libraries"] > 0 and specs["ai-leaf"]["data"] > 0
    totals = report["totals"]
    assert totals["bytes"] == sum(s["total"] for s in report["specs"]) == sum(
        totals[k] for k in ("binaries", "libraries", "data"))
    assert {"library": "libmpi.so.40", "reason": "external openmpi@4.1.4"} in report["host"]
    assert {e["rule"]: e["owner"].rsplit("-", 2)[0] for e in report["excluded"]}[
        "share/man"] == "ai-leaf"
    assert totals["excluded"] == len(report["excluded"])


def test_json_with_install_keeps_stdout_for_the_report(site, tmp_path):
    result = site("appimage", *ENTRIES, "--install", "--dry-run", "--json", env=site.env,
                  cwd=tmp_path)
    assert json.loads(result.stdout)["entries"][0]["entry"] == "ai-hello"
    assert "[+] " in result.stderr  # spack install's lines, on stderr


def test_install_says_what_it_does_before_spack_install_does(site, tmp_path):
    """--install announces itself before concretizing and installing, which can take
    minutes before Spack prints a line (here all is installed: Spack's "[+]" lines)."""
    result = site("appimage", *ENTRIES, "--install", "--dry-run", env=site.env, cwd=tmp_path)
    lines = result.stdout.splitlines()
    announced = [i for i, line in enumerate(lines) if line.startswith(
        "==> Concretizing and installing what environment ") and line.endswith(
        " is missing (--install)")]
    installed = [i for i, line in enumerate(lines) if line.startswith("[+] ")]
    assert len(announced) == 1 and installed, result.stdout
    assert announced[0] < installed[0], result.stdout


def test_json_needs_dry_run(site, tmp_path):
    line = fails(site, *ENTRIES, "--json", env=site.env, cwd=tmp_path)
    assert line == "==> Error: --json is for the --dry-run report; add --dry-run"
    assert os.listdir(tmp_path) == []


def test_manifest_lists_every_file_with_its_hash(built, tmp_path):
    image, _, _ = built
    manifest = json.loads(manifest_of(image))
    subprocess.run([image, "--appimage-extract"], cwd=tmp_path, check=True,
                   capture_output=True)
    root = tmp_path / "squashfs-root"
    on_disk = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                on_disk[os.path.relpath(path, root)] = open(path, "rb").read()
    # The manifest describes every file but itself; extracting it gives the same bytes.
    assert on_disk.pop(".appimage/manifest.json").decode() == manifest_of(image)
    # Extracting just that path gives it too.
    alone = tmp_path / "alone"
    alone.mkdir()
    subprocess.run([image, "--appimage-extract", ".appimage/manifest.json"], cwd=alone,
                   check=True, capture_output=True)
    assert (alone / "squashfs-root/.appimage/manifest.json").read_text() == manifest_of(image)
    assert {f["path"]: (f["size"], f["sha256"]) for f in manifest["files"]} == {
        path: (len(data), hashlib.sha256(data).hexdigest()) for path, data in on_disk.items()}
    assert {"path": ".DirIcon", "target": "hello.png"} in manifest["links"]


def test_manifest_provenance_comes_from_the_installed_specfiles(site, built):
    image, _, _ = built
    text = manifest_of(image)
    manifest = json.loads(text)
    assert manifest["format"] == "spack-appimage-manifest/1"
    assert manifest["tool"]["name"] == "spack-appimage"  # the rest: test_provenance.py
    version = site("--version").stdout.split()[0]
    assert manifest["spack"]["version"].startswith(version)
    # Normalized: --sbom does not change the image (test_provenance.py)
    assert manifest["command"][:2] == ["spack", "-e"] and "--sbom" not in manifest["command"]
    assert [e["name"] for e in manifest["entries"]] == ["ai-hello", "mpi-hello"]
    assert manifest["host"]["libraries"]["libmpi.so.40"] == "external openmpi@4.1.4"
    assert re.fullmatch(r"2\.\d+", manifest["host"]["glibc"])
    bundled = [s for s in manifest["specs"] if s["in_image"]]
    assert sorted(s["name"] for s in bundled) == [
        "ai-hello", "ai-leaf", "ai-mid", "ai-mpi", "ai-side"]
    for record in bundled:
        [prefix] = [os.path.join(d, n) for d, names, _ in os.walk(site.store) for n in names
                    if n.endswith(record["hash"])]
        with open(os.path.join(prefix, ".spack", "spec.json")) as f:
            nodes = {n["hash"]: n for n in json.load(f)["spec"]["nodes"]}
        node = nodes[record["hash"]]
        assert (record["name"], record["version"], record["variants"]) == (
            node["name"], str(node["version"]), node["parameters"])
        assert record["compiler"] and record["compiler"][0].startswith("gcc@")
    [mpi] = [s for s in manifest["specs"] if s["name"] == "openmpi"]
    assert not mpi["in_image"] and mpi["external"] == {"prefix": "/usr"}
    # The build environment (spack-build-env.txt) never enters.
    assert "SPACK_CC" not in text and "spack-build-env" not in text
    entries = {e["spec"] for e in manifest["entries"]}
    assert entries <= {s["hash"] for s in bundled}


def test_manifest_flag_on_an_image_without_one(tmp_path):
    from conftest import make_image
    from spack.extensions.appimage import runtime

    appdir = tmp_path / "AppDir"
    appdir.mkdir()
    (appdir / "AppRun").write_text("#!/bin/sh\n")
    image = make_image(runtime.build(), str(appdir), str(tmp_path / "plain.app"))
    run = subprocess.run([image, "--appimage-manifest"], capture_output=True, text=True)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr == ("plain.app: no .appimage/manifest.json in the image "
                          "(not built by spack appimage?)\n")


#: Validates the SBOM file argv[1] with the official CycloneDX 1.5 schema. In a Python of
#: its own: Spack before 1.0 puts its vendored attrs first on this one's path, too old for
#: the schema library.
VALIDATE_CYCLONEDX = """
import sys
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(open(sys.argv[1]).read())
sys.exit(str(error) if error else 0)
"""


def test_sbom_is_valid_cyclonedx_with_every_bundled_spec(built):
    image, sbom_path, result = built
    validated = subprocess.run([sys.executable, "-c", VALIDATE_CYCLONEDX, str(sbom_path)],
                               capture_output=True, text=True)
    assert validated.returncode == 0, validated.stderr
    text = sbom_path.read_text()
    sbom = json.loads(text)
    assert (sbom["bomFormat"], sbom["specVersion"], sbom["version"]) == ("CycloneDX", "1.5", 1)
    assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", sbom["serialNumber"])
    assert sbom["metadata"]["component"]["name"] == "hello.app"
    manifest = json.loads(manifest_of(image))
    components = {c["bom-ref"]: c for c in sbom["components"]}
    for spec in manifest["specs"]:
        component = components[spec["hash"]]
        assert (component["name"], component["version"]) == (spec["name"], spec["version"])
        assert component["scope"] == ("required" if spec["in_image"] else "excluded")
        assert component["purl"].startswith(f"pkg:spack/{spec['name']}@{spec['version']}")
    assert len(components) == len(manifest["specs"])
    refs = set(components) | {sbom["metadata"]["component"]["bom-ref"]}
    for dependency in sbom["dependencies"]:
        assert dependency["ref"] in refs and set(dependency["dependsOn"]) <= refs
    hello = next(c for c in components.values() if c["name"] == "ai-hello")
    hello_deps = next(d for d in sbom["dependencies"] if d["ref"] == hello["bom-ref"])
    assert {components[h]["name"] for h in hello_deps["dependsOn"]} >= {"ai-mid", "ai-side"}
    assert f"SBOM (CycloneDX 1.5): {sbom_path}" in result.stdout
    assert oct(sbom_path.stat().st_mode & 0o777) == "0o644"


def test_sbom_is_not_clobbered_without_force(site, tmp_path):
    sbom = tmp_path / "s.json"
    sbom.write_text("mine")
    line = fails(site, *ENTRIES, "--dry-run", "--sbom", str(sbom), env=site.env)
    assert line == (f"==> Error: {sbom} already exists; pass --force to replace it, or "
                    "choose another --sbom")
    assert sbom.read_text() == "mine"


def test_sbom_and_image_need_two_names(site, tmp_path):
    same = tmp_path / "x.app"
    line = fails(site, *ENTRIES, "-o", str(same), "--sbom", str(same), env=site.env)
    assert line == (f"==> Error: --sbom {same} is also the image's output; give the SBOM "
                    "another file name")
    assert os.listdir(tmp_path) == []


def test_damaged_specfile_is_a_clear_error(site, tmp_path):
    [specfile] = glob.glob(os.path.join(site.store, "**", "ai-origin-*", ".spack", "spec.json"),
                           recursive=True)
    saved = open(specfile).read()
    try:
        with open(specfile, "w") as f:
            f.write("{ not json")
        line = fails(site, "--entry", "ai-origin", "--dry-run", "--sbom",
                     str(tmp_path / "s.json"), env=site.env)
    finally:
        with open(specfile, "w") as f:
            f.write(saved)
    assert line.startswith(f"==> Error: {specfile} is not a Spack specfile (")
    assert re.search(r"; reinstall ai-origin@1.0/\w{7}$", line), line
    assert os.listdir(tmp_path) == []


def test_desktop_entry_and_icon(built, tmp_path):
    validate = _require("desktop-file-validate", "apt-get install desktop-file-utils "
                                                 "(see .ci/run)")
    image, _, _ = built
    subprocess.run([image, "--appimage-extract"], cwd=tmp_path, check=True,
                   capture_output=True)
    root = tmp_path / "squashfs-root"
    desktop = root / "hello.desktop"
    check = subprocess.run([validate, str(desktop)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    fields = dict(line.split("=", 1) for line in desktop.read_text().splitlines()[1:])
    assert fields["Terminal"] == "true"
    assert fields["Categories"] == "Science;Development;"
    assert fields["Icon"] == "hello"
    # Integrators replace Exec's first word with the image; the rest picks the entry.
    assert fields["Exec"] == "AppRun ai-hello"
    launched = subprocess.run([image, *fields["Exec"].split()[1:]], capture_output=True,
                              text=True)
    assert launched.returncode == 0 and launched.stdout.startswith("hello:"), launched.stderr
    png = (root / "hello.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    assert struct.unpack(">II", png[16:24]) == (256, 256)
    pixels = zlib.decompress(png[png.index(b"IDAT") + 4:png.index(b"IEND") - 8])
    assert len(pixels) == 256 * (1 + 256 * 4)  # 256 rows: filter byte + RGBA pixels
    assert os.readlink(root / ".DirIcon") == "hello.png"


def test_progress_lines_and_the_last_line(built):
    _, _, result = built
    lines = result.stdout.splitlines()
    stages = [line for line in lines if re.match(r"==> \[\d/9\] ", line)]
    assert [line.split("]")[0] for line in stages] == [f"==> [{i}/9" for i in range(1, 10)]
    assert "\r" not in result.stdout and "\x1b" not in result.stdout  # not a TTY
    assert re.fullmatch(r"==> \S+/hello\.app: \d+\.\d MiB, entries: ai-hello, mpi-hello; "
                        r"5 specs, \d+ files in \d+\.\ds", lines[-1]), lines[-1]


def test_progress_is_redrawn_on_a_tty(site, tmp_path):
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        ["spack", "-e", site.env, "appimage", "--entry", "ai-origin", "-o",
         str(tmp_path / "t.app")],
        stdout=terminal, stderr=terminal, env=site.env_vars, cwd=site.root)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal's last writer is gone
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(timeout=60) == 0
    text = output.decode()
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)  # Spack colors "==>" on a terminal
    from spack.extensions.appimage.build import STAGES

    first = rf"==> \[1/{len(STAGES)}\] {re.escape(STAGES['closure'])}"
    assert re.search(rf"{first} \.\.\.\r\x1b\[K{first} \(\d+\.\ds\)", plain), plain
    # mksquashfs draws its bar; its summary (which names the temporary file) is dropped.
    assert re.search(r"\r\[=+[|/\\-]?\] +\d+/\d+ +100%", plain)
    assert "Exportable Squashfs" not in plain


def test_site_prebuilt_runtime(site, tmp_path):
    """The README's recipe for site admins: build the runtime once, point config at it."""
    from spack.extensions.appimage import runtime

    built = site("appimage", "--print-runtime").stdout.strip()
    assert os.path.basename(built).startswith("runtime-")
    shared = tmp_path / "runtime"
    shutil.copy(built, shared)
    image = tmp_path / "o.app"
    result = site("-c", f"config:appimage:runtime:{shared}", "appimage", "--entry",
                  "ai-origin", "-o", str(image), "--compression", "xz", env=site.env)
    assert "Warning" not in result.stderr  # it is the project's runtime, which reads xz
    # The image starts with that runtime, whose ID and build sections the build fills in.
    runtime_bytes = bytearray(shared.read_bytes())
    head = bytearray(image.read_bytes()[:len(runtime_bytes)])
    with open(shared, "rb") as f:
        for name in (runtime.ID_SECTION, runtime.BUILD_SECTION):
            section = ELFFile(f).get_section_by_name(name)
            start, end = section["sh_offset"], section["sh_offset"] + section["sh_size"]
            head[start:end] = runtime_bytes[start:end] = bytes(end - start)
    assert head == runtime_bytes
    run = subprocess.run([image], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout == "origin: priv-via-origin\n", run.stderr


def test_config_example_lists_every_key():
    from spack.extensions.appimage import settings

    with open(os.path.join(os.path.dirname(__file__), "..", "config.yaml.example")) as f:
        text = f.read()
    for key in settings.KEYS:
        assert re.search(rf"^    #? ?{key}:", text, re.MULTILINE), key


def test_help_has_examples(site):
    text = site("help", "appimage").stdout
    assert "examples:" in text
    for flag in ("--dry-run --json", "--sbom", "--appimage-manifest", "--include"):
        assert flag in text
