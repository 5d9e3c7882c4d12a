"""spack-appimage: turn executables of a Spack environment into one AppImage file.

The pipeline runs one stage per module, each taking and returning plain data:

    entries   which programs (or scripts) of the environment the image runs
    closure   which shared libraries they load, resolved the way glibc's ld.so does
    policy    which of those stay on the host (glibc family, GPU drivers, externals)
    extras    what the closure cannot see: --include files and plugin rules
    interpreters  the library trees of bundled interpreters and their extensions
    stage     an AppDir with one directory per spec, holding only what is needed
    runenv    the run environment `spack load` would set, rewritten into the image
    leaks     staged files that still name the store
    bytecode  Python bytecode made valid in the image (hash-based .pyc)
    relocate  $ORIGIN-relative DT_RPATHs, then an audit of the whole AppDir
    apprun    the compiled dispatcher at the AppDir root and its entry table
    desktop   the .desktop file and icon that AppImage tools look for
    manifest  the provenance manifest inside the image, and the CycloneDX SBOM
    squashfs  mksquashfs of the AppDir
    assemble  runtime + squashfs, written atomically to the output path

``runtime`` and ``toolchain`` build the C programs (runtime, AppRun) and cache them;
``settings`` reads ``config:appimage``; ``compat`` names the Spack APIs that moved
between the releases the extension supports (0.23 to 1.x); ``build`` runs the stages in
order; ``report`` shows a dry run; ``cmd/appimage.py`` only parses arguments.
"""

#: The extension's version (also in pyproject.toml), recorded in every manifest.
__version__ = "0.1.0"
