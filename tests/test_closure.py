"""The closure engine against gcc-built ELF trees, one test per loader rule.

The system directories are replaced by one directory of the test's own, so that what
the host has installed does not change the outcome. Where the loader itself can run the
tree, the test also runs it, so the model is checked against glibc's real behaviour.
"""

import os
import subprocess

import pytest
from conftest import cc
from elftools.elf.elffile import ELFFile

from spack.extensions.appimage import closure, elf
from spack.extensions.appimage.errors import ClosureError
from spack.extensions.appimage.policy import DEFAULT_POLICY


def lib(path, body, *flags):
    """A shared library at ``path`` whose SONAME is its file name."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return cc(path, body, "-shared", "-fPIC", f"-Wl,-soname,{os.path.basename(path)}", *flags)


def resolve(tmp_path, *exes):
    search = closure.LoaderSearch((str(tmp_path / "sys"),), "lib64", "x86_64")
    return closure.resolve([str(e) for e in exes], DEFAULT_POLICY, search)


def found(result, needer, needed):
    return result.links[os.path.realpath(str(needer))][needed].load_path


@pytest.fixture
def tree(tmp_path):
    """a/liba.so needs libb.so; b/libb.so and b2/libb.so are two different libb."""
    lib(str(tmp_path / "b" / "libb.so"), 'const char *b(void) { return "b"; }')
    lib(str(tmp_path / "b2" / "libb.so"), 'const char *b(void) { return "b2"; }')
    lib(
        str(tmp_path / "a" / "liba.so"),
        "const char *b(void); const char *a(void) { return b(); }",
        f"-L{tmp_path / 'b'}", "-lb",
    )
    return tmp_path


MAIN = '#include <stdio.h>\nconst char *a(void); int main(void) { puts(a()); return 0; }\n'


def run(exe):
    return subprocess.run([str(exe)], capture_output=True, text=True).stdout.strip()


def test_rpath_is_inherited_by_libraries_without_their_own(tree):
    exe = cc(str(tree / "main"), MAIN, f"-L{tree / 'a'}", "-la",
             f"-Wl,-rpath,{tree / 'a'}:{tree / 'b'}", "-Wl,--disable-new-dtags")
    result = resolve(tree, exe)
    assert found(result, tree / "a" / "liba.so", "libb.so") == str(tree / "b" / "libb.so")
    assert result.links[os.path.realpath(exe)]["liba.so"].found_via == \
        closure.Found("rpath", str(tree / "a"), "main")
    assert result.links[str(tree / "a" / "liba.so")]["libb.so"].found_via == \
        closure.Found("rpath", str(tree / "b"), "main")  # main's RPATH, inherited
    assert run(exe) == "b"


def test_runpath_is_not_inherited(tree):
    exe = cc(str(tree / "main"), MAIN, f"-L{tree / 'a'}", "-la",
             f"-Wl,-rpath,{tree / 'a'}:{tree / 'b'}", "-Wl,--enable-new-dtags")
    with pytest.raises(ClosureError, match=f"cannot find libb.so, needed by {tree}/a/liba.so"):
        resolve(tree, exe)
    assert subprocess.run([exe], capture_output=True).returncode != 0  # ld.so agrees


def test_runpath_of_a_library_shadows_inherited_rpath(tree):
    # liba's own RUNPATH (b2) wins: the executable's RPATH (b) is not searched for it.
    lib(str(tree / "a" / "liba.so"), "const char *b(void); const char *a(void) { return b(); }",
        f"-L{tree / 'b2'}", "-lb", f"-Wl,-rpath,{tree / 'b2'}", "-Wl,--enable-new-dtags")
    exe = cc(str(tree / "main"), MAIN, f"-L{tree / 'a'}", "-la",
             f"-Wl,-rpath,{tree / 'a'}:{tree / 'b'}", "-Wl,--disable-new-dtags")
    result = resolve(tree, exe)
    assert found(result, tree / "a" / "liba.so", "libb.so") == str(tree / "b2" / "libb.so")
    assert run(exe) == "b2"


def test_rpath_of_a_library_comes_before_inherited_rpath(tree):
    lib(str(tree / "a" / "liba.so"), "const char *b(void); const char *a(void) { return b(); }",
        f"-L{tree / 'b2'}", "-lb", f"-Wl,-rpath,{tree / 'b2'}", "-Wl,--disable-new-dtags")
    exe = cc(str(tree / "main"), MAIN, f"-L{tree / 'a'}", "-la",
             f"-Wl,-rpath,{tree / 'a'}:{tree / 'b'}", "-Wl,--disable-new-dtags")
    assert found(resolve(tree, exe), tree / "a" / "liba.so", "libb.so") == str(
        tree / "b2" / "libb.so"
    )
    assert run(exe) == "b2"


@pytest.mark.parametrize("token", ["$ORIGIN", "${ORIGIN}"])
def test_origin_in_rpath(tree, token):
    os.makedirs(tree / "bin")
    exe = cc(str(tree / "bin" / "main"), MAIN, f"-L{tree / 'a'}", "-la",
             f"-Wl,-rpath,{token}/../a:{token}/../b", "-Wl,--disable-new-dtags")
    result = resolve(tree, exe)
    assert found(result, exe, "liba.so") == f"{tree}/bin/../a/liba.so"
    assert run(exe) == "b"


def test_origin_of_the_executable_is_its_real_directory(tree):
    os.makedirs(tree / "bin")
    exe = cc(str(tree / "bin" / "main"), MAIN, f"-L{tree / 'a'}", "-la",
             "-Wl,-rpath,$ORIGIN/../a:$ORIGIN/../b", "-Wl,--disable-new-dtags")
    os.makedirs(tree / "elsewhere")
    os.symlink(exe, tree / "elsewhere" / "main")
    result = resolve(tree, tree / "elsewhere" / "main")
    assert result.entries == [os.path.realpath(exe)]
    assert run(tree / "elsewhere" / "main") == "b"


def test_lib_and_platform_tokens(tree):
    os.makedirs(tree / "x86_64" / "lib64")
    os.rename(tree / "a" / "liba.so", tree / "x86_64" / "lib64" / "liba.so")
    exe = cc(str(tree / "main"), MAIN, f"-L{tree / 'x86_64' / 'lib64'}", "-la",
             f"-Wl,-rpath,{tree}/$PLATFORM/$LIB:{tree}/b", "-Wl,--disable-new-dtags")
    result = resolve(tree, exe)
    assert found(result, exe, "liba.so") == f"{tree}/x86_64/lib64/liba.so"


def test_needed_with_a_slash_is_opened_as_a_path(tmp_path):
    # Without a SONAME, the linker records the path it was given as DT_NEEDED.
    cc(str(tmp_path / "libp.so"), "int p(void) { return 7; }", "-shared", "-fPIC")
    exe = cc(str(tmp_path / "main"), "int p(void); int main(void) { return p(); }",
             str(tmp_path / "libp.so"))
    result = resolve(tmp_path, exe)
    assert found(result, exe, str(tmp_path / "libp.so")) == str(tmp_path / "libp.so")
    assert subprocess.run([exe]).returncode == 7


def test_incompatible_machine_is_skipped(tree):
    # A copy of libb with another e_machine (aarch64) first in the search path.
    os.makedirs(tree / "foreign")
    data = bytearray((tree / "b" / "libb.so").read_bytes())
    data[18:20] = (183).to_bytes(2, "little")
    (tree / "foreign" / "libb.so").write_bytes(bytes(data))
    exe = cc(str(tree / "main"), MAIN, f"-L{tree / 'a'}", "-la",
             f"-Wl,-rpath,{tree / 'a'}:{tree / 'foreign'}:{tree / 'b'}",
             "-Wl,--disable-new-dtags")
    assert found(resolve(tree, exe), tree / "a" / "liba.so", "libb.so") == str(
        tree / "b" / "libb.so"
    )
    assert run(exe) == "b"
    os.remove(tree / "b" / "libb.so")  # only the foreign one is left: an error
    with pytest.raises(ClosureError, match="cannot find libb.so"):
        resolve(tree, exe)


def test_system_directories_come_last_and_nodeflib_skips_them(tree):
    os.makedirs(tree / "sys")
    os.rename(tree / "b" / "libb.so", tree / "sys" / "libb.so")
    exe = cc(str(tree / "main"), MAIN, f"-L{tree / 'a'}", "-la", f"-Wl,-rpath,{tree / 'a'}",
             f"-Wl,-rpath-link,{tree / 'sys'}")
    result = resolve(tree, exe)
    link = result.links[str(tree / "a" / "liba.so")]["libb.so"]
    assert (link.load_path, link.found_via) == (str(tree / "sys" / "libb.so"),
                                                closure.Found("system", str(tree / "sys")))

    # DF_1_NODEFLIB on the requesting object: libb is not looked for in the system
    # directories. GNU ld ignores -z nodeflib on x86_64, so the flag is set in place.
    main_b = 'const char *b(void); int main(void) { return b()[0] != 98; }'
    exe_b = cc(str(tree / "main_b"), main_b, f"-L{tree / 'sys'}", "-lb")
    assert found(resolve(tree, exe_b), exe_b, "libb.so") == str(tree / "sys" / "libb.so")
    set_nodeflib(exe_b)
    with pytest.raises(ClosureError, match="cannot find libb.so"):
        resolve(tree, exe_b)


def set_nodeflib(path):
    with open(path, "rb+") as f:
        segment = next(s for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_DYNAMIC")
        for index, tag in enumerate(segment.iter_tags()):
            if tag.entry.d_tag == "DT_FLAGS_1":
                f.seek(segment["p_offset"] + 16 * index + 8)
                f.write((tag.entry.d_val | elf.DF_1_NODEFLIB).to_bytes(8, "little"))
                return
    raise AssertionError("gcc wrote no DT_FLAGS_1")


def test_soname_already_loaded_is_reused(tmp_path):
    # main links libv.so (a symlink; SONAME libv.so.1); libw needs libv.so.1, which is
    # only reachable because the loaded object has that SONAME.
    lib(str(tmp_path / "v" / "libv.so.1"), "int v(void) { return 3; }")
    os.symlink("libv.so.1", tmp_path / "v" / "libv.so")
    lib(str(tmp_path / "w" / "libw.so"), "int v(void); int w(void) { return v(); }",
        f"-L{tmp_path / 'v'}", "-lv")
    exe = cc(str(tmp_path / "main"), "int w(void); int main(void) { return w(); }",
             f"-L{tmp_path / 'w'}", "-lw", f"-Wl,-rpath,{tmp_path / 'w'}:{tmp_path / 'v'}",
             "-Wl,--disable-new-dtags")
    result = resolve(tmp_path, exe)
    assert len(result.objects) == 3
    assert result.load_paths[str(tmp_path / "v" / "libv.so.1")] == [str(tmp_path / "v" / "libv.so.1")]


def test_glibc_family_stays_on_the_host_and_is_not_searched(tree):
    exe = cc(str(tree / "main"), MAIN + "#include <math.h>\ndouble f(double x) { return sin(x); }",
             f"-L{tree / 'a'}", "-la", f"-Wl,-rpath,{tree / 'a'}:{tree / 'b'}", "-lm",
             "-Wl,--disable-new-dtags")
    host = resolve(tree, exe).host_requirements()
    assert host == {"libc.so.6": "glibc family", "libm.so.6": "glibc family"}


def test_unresolvable_library_names_the_file_needing_it(tree):
    os.remove(tree / "b" / "libb.so")
    exe = cc(str(tree / "main"), MAIN, f"-L{tree / 'a'}", "-la",
             f"-Wl,-rpath,{tree / 'a'}:{tree / 'b'}", "-Wl,--disable-new-dtags",
             f"-Wl,-rpath-link,{tree / 'b2'}")
    with pytest.raises(ClosureError) as error:
        resolve(tree, exe)
    assert error.value.cause == f"cannot find libb.so, needed by {tree}/a/liba.so"
    assert error.value.long_message == f"searched: {tree}/a, {tree}/b, {tree}/sys"


def test_not_an_elf_file_is_an_error(tmp_path):
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(ClosureError, match="is not an ELF executable"):
        resolve(tmp_path, script)
