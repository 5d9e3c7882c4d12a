"""spack-appimage: turn executables of a Spack environment into one AppImage file.

The pipeline runs one stage per module, each taking and returning plain data:

    entries   which programs (or scripts) of the environment the image runs
    elf       what the loader needs of each ELF file, with one error rule
    closure   which shared libraries they load, resolved the way glibc's ld.so does
    policy    which of those stay on the host (glibc family, GPU drivers, externals)
    extras    what the closure cannot see (--include files, plugin rules), and the
              closure run with them until nothing new comes in
    interpreters  the library trees of bundled interpreters and their extensions
    layout    where each host file goes in the AppDir: one directory per spec
    stage     the AppDir, holding only what is needed
    runenv    the run environment `spack load` would set, rewritten into the image
    leaks     staged files that still name the store
    bytecode  Python bytecode made valid in the image (hash-based .pyc)
    relocate  $ORIGIN-relative DT_RPATHs, then an audit of the whole AppDir
    apprun    the compiled dispatcher at the AppDir root and its entry table
    desktop   the .desktop file and icon that AppImage tools look for
    manifest  the provenance manifest inside the image, and the CycloneDX SBOM
    squashfs  mksquashfs of the AppDir
    assemble  runtime + squashfs, written atomically to the output path
    signing   the AppImage signature sections filled with Spack's GnuPG (gnupg),
              and --verify

``runtime`` and ``toolchain`` build the C programs (runtime, AppRun) and cache them;
``version`` says which copy of the extension runs (version, git commit, dirty);
``prerequisites`` names the install command of each tool a build needs on this system,
and ``installed`` finds installed tools by name; ``scratch`` places the temporary
AppDir and removes what killed builds left; ``settings`` reads ``config:appimage``; ``compat`` names the Spack APIs that moved
between the releases the extension supports (0.23 to 1.x); ``build`` runs the stages in
order; ``report`` shows a dry run; ``cmd/appimage.py`` parses arguments (and installs the
environment with ``--install``).
"""

import os

#: The extension's version (with the clone's commit: :func:`version.identity`); the file
#: is also what pip's metadata reads (pyproject.toml).
with open(os.path.join(os.path.dirname(__file__), "VERSION")) as _file:
    __version__ = _file.read().strip()
