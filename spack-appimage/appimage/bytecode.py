"""Python bytecode that stays valid in the image.

CPython accepts a timestamp-based ``.pyc`` only while its source has the mtime and size
recorded in its header. mksquashfs gives every file one mtime (``SOURCE_DATE_EPOCH``,
for reproducible images), so every ``.pyc`` copied from the store would be stale in the
image, and since the mount is read-only, every start would compile every module again
(an import-heavy start: 386 ms instead of 135 ms).

So the staged ``.pyc`` files become *unchecked hash-based* ones (PEP 552): the header
carries flags ``0b01`` and the SipHash of the source in place of mtime and size, and the
interpreter loads them without looking at the source. Unchecked is right here because
the image is read-only: no source can change under its bytecode.

A ``.pyc`` that the store already holds and that matches its store source (mtime and
size as recorded) keeps its code and gets a new 16-byte header; any other staged source
(no ``.pyc``, or a stale one) is compiled; a file that is not valid Python for this
interpreter (templates, test data) is left as it is, since no import of it can work. Both happen in one run of the bundled
interpreter itself, from the store, because the magic number and the hash key must be
those of the interpreter that will read them.
"""

import json
import os
import subprocess
from typing import Dict, List, Tuple

from .errors import ToolError

#: Runs in the bundled interpreter: stdin is a JSON list of [store source, staged source].
#: Prints "<rewritten> <compiled>".
_CONVERT = r"""
import importlib.util, json, os, py_compile, sys
MAGIC = importlib.util.MAGIC_NUMBER
UNCHECKED = (1).to_bytes(4, "little")
rewritten = compiled = 0
for store_source, staged_source in json.load(sys.stdin):
    staged_pyc = importlib.util.cache_from_source(staged_source)
    with open(staged_source, "rb") as f:
        source = f.read()
    header = b""
    if os.path.exists(staged_pyc):
        with open(staged_pyc, "rb") as f:
            data = f.read()
        header, code = data[:16], data[16:]
        st = os.stat(store_source)
        fresh = (header[:4] == MAGIC and header[4:8] == bytes(4)
                 and int.from_bytes(header[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
                 and int.from_bytes(header[12:16], "little") == st.st_size & 0xFFFFFFFF)
        digest = importlib.util.source_hash(source)
        hashed = header[:4] == MAGIC and header[4:8] != bytes(4) and header[8:16] == digest
        if fresh or hashed:
            with open(staged_pyc, "wb") as f:
                f.write(MAGIC + UNCHECKED + digest + code)
            rewritten += 1
            continue
    try:
        py_compile.compile(staged_source, cfile=staged_pyc, dfile=store_source, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        compiled += 1
    except py_compile.PyCompileError:
        pass  # not valid Python for this interpreter (a template, test data): import fails anyway
print(rewritten, compiled)
"""


def python_sources(files: Dict[str, str], owners: Dict[str, str]) -> Dict[str, List[Tuple[str, str]]]:
    """interpreter executable -> [(store source, AppDir-relative source)] of the staged
    ``.py`` files of each Python stack. ``owners`` maps a prefix to its stack's python
    executable."""
    by_python: Dict[str, List[Tuple[str, str]]] = {}
    for dest, src in files.items():
        if not dest.endswith(".py"):
            continue
        for prefix, python in owners.items():
            if src.startswith(prefix + os.sep):
                by_python.setdefault(python, []).append((src, dest))
                break
    return by_python


def make_valid(appdir: str, by_python: Dict[str, List[Tuple[str, str]]]) -> Tuple[int, int]:
    """Rewrite or compile the bytecode of the staged sources; returns (rewritten, compiled)."""
    totals = [0, 0]
    for python, sources in sorted(by_python.items()):
        pairs = [[src, os.path.join(appdir, dest)] for src, dest in sorted(sources)]
        run = subprocess.run(
            [python, "-I", "-S", "-c", _CONVERT], input=json.dumps(pairs), capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["no message"])[-1]
            raise ToolError(
                f"{python} could not byte-compile the staged modules: {last}",
                "fix or leave out the module named (--exclude GLOB)",
            )
        for i, count in enumerate(run.stdout.split()):
            totals[i] += int(count)
    return totals[0], totals[1]
