"""Interpreted stacks: what an interpreter and its extensions need at run time.

The ELF closure sees an interpreter's executable and the libraries it links, not the
library tree it reads at start (CPython's ``lib/python3.X``: without ``encodings`` it
dies in ``init_fs_encoding``) nor the modules of the packages that extend it. Both are
bundled as data of their spec, under the spec's own ``opt/<label>`` directory, so the
interpreter finds its library relative to its executable (CPython's ``getpath`` looks
for ``lib/python3.X/os.py`` above ``bin/``; ``sys.prefix`` is then inside the image),
and every shared object in those trees (``lib-dynload/*.so``, an extension's C modules)
goes through the closure and relocation like a plugin.

Which specs: an interpreter is bundled when any of its files is (its executable is an
entry, a script entry runs with it, or a program links its library). Every node of the
environment that extends a bundled interpreter (``extends("python")``: Spack's
``extendee_spec``) comes along, as it would be importable from the environment's view,
except those the user leaves out by name (``--exclude-spec``).

What is never bundled (:func:`never_needed`), decided per language:

* CPython: the test suites (``test/``, ``*/test/``, ``*/tests/``, ``idlelib/idle_test``,
  and the C test modules ``lib-dynload/_test*``, ``_ctypes_test``, ``_xxtestfuzz``,
  ``xxlimited``), which are a third of the tree and which nothing imports at run time;
  the pip and setuptools wheels of ``ensurepip/_bundled`` (a virtual environment made
  with an image's interpreter points into a mount that is gone once the image exits, so
  ``python -m venv`` has no use there; ``--without-pip`` still works); ``idlelib``,
  ``tkinter`` and ``turtledemo`` when the interpreter is built ``~tkinter`` (they cannot
  import without ``_tkinter``); bytecode of optimization levels 1 and 2 (``*.opt-1.pyc``,
  ``*.opt-2.pyc``: read only under ``python -O``, which then compiles in memory). The
  level-0 bytecode is kept and made valid in the image (:mod:`bytecode`).
* ``--keep GLOB`` brings any of it back.

A new language is one more :data:`LANGUAGES` row: its package, its library trees and an
extension's module trees, as prefix-relative globs (``{version}`` is the interpreter's
version cut to ``version_parts`` components). Each row is the layout of a real Spack
build of that interpreter, checked by the tests: CPython (``lib/python3.11``) and Perl
(``lib/5.36.0``, ``lib/site_perl/5.36.0``; its extensions' ``lib/perl5``, which Spack's
Perl compiles into ``@INC`` as ``APPLLIB_EXP``). R, Lua, Ruby and Tcl get a row once a
test builds them; until then their trees come along only by ``--include``.
"""

import difflib
import fnmatch
import glob
import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Sequence, Tuple

from .errors import AppImageError, label


@dataclass(frozen=True)
class Language:
    #: the interpreter's package
    package: str
    #: its library trees, relative to its prefix
    library: Tuple[str, ...]
    #: an extension's module trees, relative to the extension's prefix
    modules: Tuple[str, ...]
    #: shared objects in those trees, loaded with dlopen by the interpreter
    shared_objects: Tuple[str, ...] = ("**/*.so",)
    #: how many components of the version ``{version}`` stands for
    version_parts: int = 2


LANGUAGES: Dict[str, Language] = {
    language.package: language
    for language in (
        Language("python", ("lib/python{version}",), ("lib/python{version}/site-packages",)),
        Language("perl", ("lib/{version}", "lib/site_perl/{version}"), ("lib/perl5",),
                 version_parts=3),
    )
}


def language_of(spec) -> "Language | None":
    return None if spec.external else LANGUAGES.get(spec.name)


def _format(patterns: Sequence[str], interpreter) -> Tuple[str, ...]:
    version = str(interpreter.version.up_to(LANGUAGES[interpreter.name].version_parts))
    return tuple(p.format(version=version) for p in patterns)


def library_trees(spec) -> Tuple[str, ...]:
    """The library trees of the interpreter ``spec`` that exist (prefix-relative)."""
    language = language_of(spec)
    if language is None:
        return ()
    return tuple(
        os.path.relpath(path, spec.prefix)
        for pattern in _format(language.library, spec)
        for path in sorted(glob.glob(os.path.join(spec.prefix, pattern)))
        if os.path.isdir(path)
    )


def extension_trees(extension, interpreter) -> Tuple[str, ...]:
    """The module trees of ``extension`` (a spec extending ``interpreter``) that exist."""
    patterns = _format(LANGUAGES[interpreter.name].modules, interpreter)
    return tuple(p for p in patterns if os.path.isdir(os.path.join(extension.prefix, p)))


def check_library(spec) -> None:
    """An interpreter whose (first) library tree is missing or unreadable would not start
    from the image: say so before anything is staged. A missing tree is a layout this
    extension does not know (another version's, another recipe's), not a broken install."""
    tree = os.path.join(spec.prefix, _format(language_of(spec).library, spec)[0])
    if not os.path.isdir(tree):
        raise AppImageError(
            f"{label(spec)} has no library tree {os.path.relpath(tree, spec.prefix)} in "
            f"{spec.prefix}, where Spack's {spec.name} recipe puts it, and cannot start "
            "without it",
            "its layout is not one spack-appimage knows (README, 'Interpreters'): leave "
            f"{spec.name} out of the entries",
        )
    if not os.access(tree, os.R_OK | os.X_OK):
        raise AppImageError(
            f"cannot read {tree}, the library tree of {label(spec)}",
            "make it readable by you, or reinstall the spec",
        )


def extendee(spec):
    """The interpreter spec that ``spec`` extends, or None."""
    if spec.external or not any(dep.name in LANGUAGES for dep in spec.dependencies()):
        return None  # no package class needed for the common case
    return spec.package.extendee_spec


def check_left_out(left_out: Sequence[str], nodes: Sequence) -> None:
    """Each name or glob of ``--exclude-spec`` (and ``config:appimage:exclude_specs``)
    names a spec of the environment: a misspelt one would otherwise leave nothing out, and
    say nothing."""
    names = sorted({node.name for node in nodes})
    for pattern in left_out:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.75)
            hint = f"did you mean {' or '.join(close)}?" if close else \
                "`spack -e ENV find` lists the environment's specs"
            raise AppImageError(f"--exclude-spec {pattern} names no spec of the environment",
                                hint)


def extensions(interpreters: Iterable, nodes: Sequence, left_out: Sequence[str] = ()) -> List:
    """Nodes that extend one of the (bundled) ``interpreters``, minus the package names
    or globs in ``left_out``."""
    hashes = {s.dag_hash() for s in interpreters}
    found = []
    for node in nodes:
        if any(fnmatch.fnmatchcase(node.name, p) for p in left_out):
            continue
        target = extendee(node)
        if target is not None and target.dag_hash() in hashes:
            found.append(node)
    return found


def stacks(bundled: Iterable, nodes: Sequence, left_out: Sequence[str] = ()) -> Dict:
    """spec -> the interpreter it belongs to, for every bundled interpreter and each of
    its extensions. Their library or module trees are bundled, and the closure takes in
    the shared objects of those trees."""
    interpreters = [s for s in bundled if language_of(s) is not None]
    result = {s: s for s in interpreters}
    by_hash = {s.dag_hash(): s for s in interpreters}
    for extension in extensions(interpreters, nodes, left_out):
        result[extension] = by_hash[extendee(extension).dag_hash()]
    return result


def is_interpreter(spec, interpreter) -> bool:
    """Whether the entry ``spec -> interpreter`` of a stacks dict is the interpreter's own."""
    return spec.dag_hash() == interpreter.dag_hash()


def trees(spec, interpreter) -> Tuple[str, ...]:
    """The prefix-relative trees of ``spec`` bundled for ``interpreter``."""
    if is_interpreter(spec, interpreter):
        return library_trees(spec)
    return extension_trees(spec, interpreter)


def shared_object_globs(spec, interpreter) -> Tuple[str, ...]:
    """Prefix-relative globs of the shared objects ``interpreter`` may dlopen from the
    trees of ``spec`` (the interpreter itself or one of its extensions)."""
    language = LANGUAGES[interpreter.name]
    return tuple(os.path.join(t, so) for t in trees(spec, interpreter)
                 for so in language.shared_objects)


def never_needed(spec) -> Tuple[str, ...]:
    """Prefix-relative globs of the interpreter ``spec``'s trees that no program needs at
    run time (the module docstring says why each)."""
    if spec.name != "python":
        return ()
    tree = f"lib/python{spec.version.up_to(2)}"
    dynload = f"{tree}/lib-dynload"
    globs = [f"{tree}/test", f"{tree}/*/test", f"{tree}/*/tests", f"{tree}/idlelib/idle_test",
             f"{dynload}/_test*", f"{dynload}/_ctypes_test*", f"{dynload}/_xxtestfuzz*",
             f"{dynload}/xxlimited*", f"{tree}/ensurepip/_bundled",
             "*.opt-1.pyc", "*.opt-2.pyc"]
    if not spec.satisfies("+tkinter"):
        globs += [f"{tree}/idlelib", f"{tree}/tkinter", f"{tree}/turtledemo"]
    return tuple(globs)


def never_needed_in(stacks: Dict) -> Tuple[str, ...]:
    """:func:`never_needed` of every interpreter of ``stacks``."""
    return tuple(dict.fromkeys(
        g for spec, interpreter in stacks.items()
        if is_interpreter(spec, interpreter) for g in never_needed(spec)))


def python_executables(stacks: Dict) -> Dict[str, str]:
    """prefix -> the python executable of its stack, for the Python stacks in ``stacks``
    (their bytecode is made valid by that interpreter, see :mod:`bytecode`)."""
    return {
        os.path.realpath(spec.prefix): os.path.join(
            interpreter.prefix, "bin", f"python{interpreter.version.up_to(2)}")
        for spec, interpreter in stacks.items() if interpreter.name == "python"
    }


def check(stacks: Dict, included: Iterable) -> None:
    """Errors before anything is staged: a bundled interpreter whose library tree is
    missing or unreadable (:func:`check_library`), and an extension in ``included`` (by
    ``--include``) whose interpreter is not in the image, which nothing there could
    import it with."""
    for spec, interpreter in stacks.items():
        if is_interpreter(spec, interpreter):
            check_library(spec)
    bundled = {spec.dag_hash() for spec in stacks}
    for spec in included:
        target = extendee(spec)
        if target is not None and spec.dag_hash() not in bundled:
            raise AppImageError(
                f"{label(spec)} extends {label(target)}, which is not in the image",
                f"add an entry of {target.name} (e.g. --entry {_program(target)}) or leave "
                f"{spec.name} out",
            )


def _program(interpreter) -> str:
    return {"python": "python3"}.get(interpreter.name, interpreter.name)
