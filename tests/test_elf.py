"""Damaged ELF files give one-line errors naming the file, never a traceback.

The corpus is made here, the same every run, from gcc-built files: truncations, damaged
version sections (DT_VERNEED), dynamic strings that are not UTF-8, impossible headers,
and seeded random byte flips. Each is read by the extension's ELF reader in this process,
and a few go through ``spack appimage`` as included libraries of a real installed spec.
"""

import glob
import os
import random
import struct
import subprocess

import pytest
from conftest import cc, fails
from elftools.elf.elffile import ELFFile

from spack.extensions.appimage import elf, leaks
from spack.extensions.appimage.errors import AppImageError

LIBRARY = "#include <math.h>\ndouble f(double x) { return cos(x) + sqrt(x); }\n"


def _section(data: bytes, name: str):
    import io

    section = ELFFile(io.BytesIO(data)).get_section_by_name(name)
    return section["sh_offset"], section["sh_size"]


def _patched(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new):]


def corpus(directory) -> dict:
    """name -> path of each damaged file, made from a gcc-built library with an RPATH,
    NEEDED entries and glibc symbol versions."""
    os.makedirs(directory, exist_ok=True)
    source = cc(os.path.join(directory, "libgood.so"), LIBRARY, "-shared", "-fPIC", "-lm",
                "-Wl,-rpath,/opt/some/where", "-Wl,--disable-new-dtags")
    data = open(source, "rb").read()
    damaged = {}
    for cut in (5, 16, 40, 63, 64, 100, 0x200, len(data) // 4, len(data) // 2, len(data) - 1):
        damaged[f"truncated-at-{cut}"] = data[:cut]
    verneed, _ = _section(data, ".gnu.version_r")
    # Elf_Verneed: vn_version, vn_cnt (H H), vn_file, vn_aux, vn_next (I I I)
    damaged["verneed-aux-far"] = _patched(data, verneed + 8, struct.pack("<I", 0x7FFFFFF0))
    damaged["verneed-next-far"] = _patched(data, verneed + 12, struct.pack("<I", 0x7FFFFFF0))
    damaged["verneed-count-huge"] = _patched(data, verneed + 2, struct.pack("<H", 0xFFFF))
    dynstr, size = _section(data, ".dynstr")
    rpath = data.index(b"/opt/some/where", dynstr, dynstr + size)
    damaged["rpath-not-utf8"] = _patched(data, rpath + 1, b"\xff\xfe")
    needed = data.index(b"libm.so.6", dynstr, dynstr + size)
    damaged["needed-not-utf8"] = _patched(data, needed, b"\xc3\x28")
    damaged["class-invalid"] = _patched(data, 4, b"\x03")
    damaged["byte-order-swapped"] = _patched(data, 5, b"\x02")
    damaged["program-headers-beyond-end"] = _patched(data, 32, struct.pack("<Q", 1 << 40))
    damaged["program-header-count-huge"] = _patched(data, 56, struct.pack("<H", 0xFFFF))
    damaged["section-headers-beyond-end"] = _patched(data, 40, struct.pack("<Q", 1 << 40))
    shoff, = struct.unpack_from("<Q", data, 40)
    shstrndx, = struct.unpack_from("<H", data, 62)
    names_header = shoff + 64 * shstrndx
    damaged["section-names-size-huge"] = _patched(data, names_header + 32,
                                                  struct.pack("<Q", 1 << 62))
    damaged["section-names-index-beyond"] = _patched(data, 62, struct.pack("<H", 0xFFF0))
    flips = random.Random(20261128)
    for n in range(120):
        mutated = bytearray(data)
        for _ in range(8):
            mutated[flips.randrange(16, 4096)] = flips.randrange(256)
        damaged[f"flipped-{n}"] = bytes(mutated)
    paths = {}
    for name, content in damaged.items():
        paths[name] = os.path.join(directory, f"{name}.so")
        with open(paths[name], "wb") as f:
            f.write(content)
    return paths


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    return corpus(str(tmp_path_factory.mktemp("elf-corpus")))


def test_every_damaged_file_is_read_or_refused_in_one_line(damaged):
    refused = {}
    for name, path in damaged.items():
        # The search for files naming the store reads section tables too: never an error.
        assert leaks.names_store(path, b"/opt/some/where") in (True, False), name
        try:
            elf.read_elf(path)
        except AppImageError as e:
            message = str(e)
            assert "\n" not in message and message.startswith(f"{path} is not a readable ELF"), \
                (name, message)
            refused[name] = message
    # What the reader cannot make sense of is refused, naming the cause.
    assert "a NEEDED, RPATH, RUNPATH, SONAME or interpreter string is not UTF-8" in \
        refused["rpath-not-utf8"]
    assert "not UTF-8" in refused["needed-not-utf8"]
    assert "verneed-aux-far" in refused and "truncated-at-100" in refused
    assert len(refused) > 20


@pytest.mark.parametrize("name", ["verneed-aux-far", "rpath-not-utf8", "truncated-at-0x200"])
def test_spack_appimage_refuses_a_damaged_library_in_one_line(site, damaged, name, tmp_path):
    """A damaged library in a real installed prefix, included into an image."""
    name = name.replace("0x200", str(0x200))
    [prefix] = glob.glob(os.path.join(site.store, "**", "ai-plugin-*"), recursive=True)
    planted = os.path.join(prefix, "share", "damaged", "libdamaged.so")
    os.makedirs(os.path.dirname(planted))
    try:
        with open(damaged[name], "rb") as source, open(planted, "wb") as target:
            target.write(source.read())
        line = fails(site, "--entry", "plugin-host", "--include",
                     "ai-plugin:share/damaged/*.so", "-o", str(tmp_path / "x.app"),
                     env=site.env)
    finally:
        os.remove(planted)
        os.rmdir(os.path.dirname(planted))
    assert f"{planted} is not a readable ELF file (" in line
    assert line.endswith("reinstall the package that owns it: spack install --overwrite <spec>")
    assert not (tmp_path / "x.app").exists()


def test_loaded_sections_agree_with_pyelftools(tmp_path):
    """The leak search reads the section header table itself; pyelftools reads it too."""
    library = cc(str(tmp_path / "libgood.so"), LIBRARY, "-shared", "-fPIC", "-lm")
    # and a 32-bit one (gcc's i386 code generation and ld's elf_i386, no 32-bit libc)
    (tmp_path / "f32.c").write_text("int f(void) { return 1; }\n")
    subprocess.run(["gcc", "-m32", "-fPIC", "-c", "-o", str(tmp_path / "f32.o"),
                    str(tmp_path / "f32.c")], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-shared", "-o", str(tmp_path / "lib32.so"),
                    str(tmp_path / "f32.o")], check=True)
    for path in [library, str(tmp_path / "lib32.so"), "/bin/true", "/usr/bin/python3",
                 *glob.glob("/usr/lib/x86_64-linux-gnu/libstdc++.so.6")]:
        with open(os.path.realpath(path), "rb") as f:
            ours = elf.loaded_sections(f)
            theirs = [(s.name, s["sh_offset"], s["sh_size"]) for s in ELFFile(f).iter_sections()
                      if s["sh_flags"] & 0x2 and s["sh_type"] != "SHT_NOBITS"]
        assert ours == theirs and len(ours) > 5, path
