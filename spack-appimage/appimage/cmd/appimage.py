"""``spack appimage``: bundle programs of an environment into one executable file."""

import argparse
import contextlib
import os
import sys
from typing import Iterator

import spack.cmd
from spack.cmd.common import arguments

from .. import entries, prerequisites, version
from ..compat import require_supported_spack, tty
from ..gnupg import PASSPHRASE
from ..squashfs import COMPRESSIONS
from ..storeview import MODES as STORE_VIEW_MODES

try:
    from .. import build, manifest, runtime, settings, signing
except ImportError as error:  # the pipeline reads ELF files with pyelftools
    if not (error.name or "").startswith("elftools"):
        raise
    build = manifest = runtime = settings = signing = None

description = "bundle programs of an environment into one executable AppImage file"
section = "environments"
level = "long"

epilog = """examples:
  spack -e sirius appimage --entry sirius.scf --entry atom
      -> sirius.app; run ./sirius.app sirius.scf ARGS, or ln -s sirius.app atom; ./atom ARGS
  spack -e myenv appimage --entry mpi-app --include 'mypkg:lib/plugins/*.so'
      (an external MPI stays on the host; dlopen'ed plugins come along)
  spack -e pyenv appimage --entry python3 --entry wheel
      (python with its library and the environment's py-* packages; a console script)
  spack -e myenv appimage --list-entries    (the programs --entry can name, by spec)
  spack -e myenv appimage --entry tool=mypkg@2.1 -o tool.app   (tool of one spec)
  spack -e myenv appimage --entry 'mypkg/*'  (every program of mypkg's bin/; quote the *)
  spack -e myenv appimage --entry libexec/helper --dry-run     (show what would be bundled)
  spack -e myenv appimage --entry tool --dry-run --json        (the same, for scripts)
  spack -e myenv appimage --entry tool --sbom tool.cdx.json    (and a CycloneDX SBOM)
  ./tool.app --appimage-manifest      (what an image holds: specs, files, sha256, command)
  spack -e myenv appimage --entry tool --sign   (signed with Spack's signing key)
  spack appimage --verify tool.app    (signed by a key spack gpg trust trusts, unchanged?)
  spack appimage --print-runtime      (build the runtime once, e.g. for a site's config)
  spack appimage --version            (the extension's version and git commit)
"""


#: The options that may be given several times, each adding a pattern: (flag, metavar,
#: help). Each also has a config:appimage list (settings.py).
REPEATABLE = (
    ("--include", "SPEC:GLOB", "also bundle files of SPEC matching the prefix-relative GLOB, "
     "e.g. plugins a program dlopens (shared libraries get their own closure)"),
    ("--exclude", "GLOB", "leave out data files matching the prefix-relative GLOB"),
    ("--keep", "GLOB", "keep data files matching GLOB that the default rules leave out"),
    ("--exclude-spec", "NAME", "do not bundle the extension NAME (a package name or glob) "
     "with its interpreter"),
    ("--host-lib", "PATTERN", "take libraries whose name matches PATTERN from the host"),
    ("--bundle-lib", "PATTERN", "bundle libraries whose name matches PATTERN even if the "
     "host policy would keep them on the host (never the glibc family)"),
)


def setup_parser(subparser: argparse.ArgumentParser) -> None:
    subparser.epilog = epilog
    subparser.formatter_class = argparse.RawDescriptionHelpFormatter
    what = subparser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--entry", action="append", metavar="NAME[=SPEC]",
        help="program to run from the image: bin/NAME of an environment spec, or a "
        "prefix-relative path; =SPEC picks the spec; 'SPEC/*' takes every program of "
        "SPEC's bin/ (repeatable)",
    )
    what.add_argument(
        "--list-entries", action="store_true",
        help="list the programs each root spec of the environment offers as --entry, "
        "and exit",
    )
    what.add_argument(
        "--print-runtime", action="store_true",
        help="build the project's runtime if it is not cached, print its path and exit "
        "(for sites that pre-build it; see config:appimage:runtime)",
    )
    what.add_argument(
        "--verify", nargs="+", metavar="FILE",
        help="check that each image is signed by a key Spack's keyring trusts (spack gpg "
        "trust) and unchanged since; a line per file, exit 1 if any fails",
    )
    what.add_argument(
        "--version", action="store_true", dest="show_version",  # `version`: Spack's own
        help="print the extension's version and git commit (', dirty' when its files "
        "differ from it) and exit",
    )
    subparser.add_argument(
        "--default-entry", metavar="NAME",
        help="entry to run when the first argument names no entry",
    )
    subparser.add_argument(
        "-o", "--output", metavar="FILE", help="output file (default: <environment>.app)"
    )
    subparser.add_argument(
        "-f", "--force", action="store_true", help="replace an existing output file"
    )
    subparser.add_argument(
        "--runtime", metavar="FILE",
        help="AppImage type-2 runtime to put in front (default: config:appimage:runtime, "
        "else the project's own, built on first use)",
    )
    subparser.add_argument(
        "--compression", choices=COMPRESSIONS,
        help="squashfs compression (default: config:appimage:compression, else zstd)",
    )
    for flag, metavar, text in REPEATABLE:
        subparser.add_argument(flag, action="append", metavar=metavar,
                               help=f"{text} (repeatable)")
    subparser.add_argument(
        "--store-view", choices=STORE_VIEW_MODES,
        help="show the bundled prefixes at their store paths when the image runs (a user "
        "namespace), for programs that compiled them in: auto (default: when a file of "
        "the image names the store), always or never (default: config:appimage:store_view)",
    )
    subparser.add_argument(
        "--sign", nargs="?", const=True, metavar="KEY",
        help="sign the image with a key of Spack's keyring (spack gpg list --signing): "
        "the only one, or KEY (fingerprint, key ID or e-mail); a passphrase comes from "
        f"${PASSPHRASE} "
        "(default: config:appimage:sign)",
    )
    subparser.add_argument(
        "--bundle-externals", action="store_true", default=None,
        help="bundle the libraries of external specs instead of taking them from the host",
    )
    subparser.add_argument(
        "--install", action="store_true",
        help="concretize and install what the environment is missing first",
    )
    subparser.add_argument(
        "--keep-appdir", metavar="DIR", help="stage the AppDir in DIR and keep it"
    )
    subparser.add_argument(
        "--dry-run", action="store_true",
        help="show what would be bundled (per entry a library tree, bytes per spec, host "
        "needs, what is left out); write nothing but the --sbom file",
    )
    subparser.add_argument(
        "--json", action="store_true", help="with --dry-run: print the report as JSON"
    )
    subparser.add_argument(
        "--sbom", metavar="FILE",
        help="also write a CycloneDX 1.5 JSON SBOM of the bundled specs to FILE",
    )
    arguments.add_common_arguments(subparser, ["jobs"])


def appimage(parser, args):
    if args.show_version:  # needs neither an environment nor pyelftools
        print(version.identity())
        return
    require_supported_spack()
    if build is None:
        tty.die(f"spack appimage needs pyelftools in the Python that runs Spack "
                f"({sys.executable}); {prerequisites.pyelftools_advice()}")
    if args.print_runtime:  # stdout is the path alone: admins run "$(... --print-runtime)"
        with _stdout_to_stderr():
            path = runtime.build()
        print(path)
        return
    if args.verify:  # needs no environment
        return _verify(args.verify)
    if args.json and not args.dry_run:
        tty.die("--json is for the --dry-run report; add --dry-run")
    env = spack.cmd.require_active_env(cmd_name="appimage")
    settings.check_known_keys()
    if args.install:
        with _stdout_to_stderr() if args.json else contextlib.nullcontext():
            _install_environment(env)
    if args.list_entries:
        entries.show(env)
        return
    env_name = os.path.basename(os.path.normpath(env.name))
    output = args.output or f"{env_name}.app"
    options = build.Options(
        entries=args.entry,
        output=output,
        runtime=settings.get("runtime", args.runtime),
        default_entry=args.default_entry,
        force=args.force,
        compression=settings.get("compression", args.compression) or "zstd",
        jobs=args.jobs,
        keep_appdir=args.keep_appdir,
        dry_run=args.dry_run,
        include=settings.get("include", args.include),
        exclude=settings.get("exclude", args.exclude),
        keep=settings.get("keep", args.keep),
        exclude_specs=settings.get("exclude_specs", args.exclude_spec),
        host_libs=settings.get("host_libs", args.host_lib),
        bundle_libs=settings.get("bundle_libs", args.bundle_lib),
        bundle_externals=bool(settings.get("bundle_externals", args.bundle_externals)),
        store_view=settings.get("store_view", args.store_view) or "auto",
        sign=settings.get("sign", args.sign),
        sbom=args.sbom,
        json=args.json,
        command=manifest.command_line(_actions(), args, env.path, output),
        environment=env.path,
    )
    result = build.run(env, options)
    tty.verbose("seconds per stage: " + ", ".join(
        f"{stage} {seconds:.2f}" for stage, seconds in result.timings.items()))
    if result.output:
        tty.msg(build.describe(result))


def _verify(paths) -> int:
    """A line per image, said as it is checked; exit status 1 if any fails."""
    failed = 0
    for path in paths:
        verdict = signing.verify(path)
        (tty.msg if verdict.ok else tty.error)(verdict.line)
        failed += not verdict.ok
    return 1 if failed else 0


def _actions():
    """This command's argparse actions (``parser`` is Spack's, not the subcommand's)."""
    parser = argparse.ArgumentParser()
    setup_parser(parser)
    return parser._actions


def _install_environment(env) -> None:
    """Concretize and install what is missing, as `spack install` in an environment does.
    Its line comes first: concretizing and building can take minutes before Spack says
    anything."""
    tty.msg(f"Concretizing and installing what environment {env.name} is missing (--install)")
    with env.write_transaction():
        concretized = env.concretize()
        if concretized:
            tty.msg(f"Concretized {len(concretized)} specs")
        env.write(regenerate=False)
    env.install_all()
    with env.write_transaction():
        env.write(regenerate=True)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what is written to stdout (Spack's install messages, build tools run by it)
    to stderr, so that stdout holds only the JSON report."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
