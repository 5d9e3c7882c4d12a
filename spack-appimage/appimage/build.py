"""The pipeline: from an environment and options to one output file.

Each stage is a function of plain data from its own module; this module only orders
them, reports progress, times them, and owns the temporary AppDir. Every check that
does not need the closure (output path, runtime file, mksquashfs and its compression)
runs before any file is copied, so a doomed build fails in seconds.
"""

import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Union

from . import apprun, assemble, bytecode, closure, cpu, desktop, entries, extras, interpreters
from . import gnupg, leaks, manifest, relocate, report, runenv
from . import runtime, scratch, signing, squashfs, stage, storeview
from .compat import tty
from .errors import INTERRUPT_SIGNALS, EntryError, Interrupted, OutputError, Terminated
from .errors import full_disk_names
from . import policy as host_policy
from .layout import Layout, owner_of_dest


@dataclass
class Options:
    entries: Sequence[str]
    output: str
    runtime: Optional[str] = None
    default_entry: Optional[str] = None
    force: bool = False
    compression: str = "zstd"
    jobs: Optional[int] = None
    keep_appdir: Optional[str] = None
    dry_run: bool = False
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    keep: Sequence[str] = ()
    host_libs: Sequence[str] = ()
    bundle_libs: Sequence[str] = ()
    bundle_externals: bool = False
    #: package names (or globs) of extensions not to bundle with their interpreter
    exclude_specs: Sequence[str] = ()
    #: write a CycloneDX SBOM here
    sbom: Optional[str] = None
    #: the dry-run report as JSON
    json: bool = False
    #: the command line, recorded in the manifest (normalized: manifest.command_line)
    command: Sequence[str] = ()
    #: the environment's directory, recorded in the manifest with its spack.lock's digest
    environment: Optional[str] = None
    #: when AppRun shows the bundled prefixes at their store paths (:mod:`storeview`)
    store_view: str = "auto"
    #: sign the image (:mod:`signing`): True with the one signing key, a string with the
    #: key it names; None or False: unsigned
    sign: Union[bool, str, None] = None


@dataclass
class Result:
    """What a build produced, for the last message and for callers."""

    output: Optional[str]
    entries: List[entries.Entry]
    closure: closure.Closure
    plan: stage.Plan
    timings: Dict[str, float] = field(default_factory=dict)
    included: List[extras.Included] = field(default_factory=list)
    manifest: Optional[dict] = None
    #: interpreted stacks: spec -> its interpreter (see :mod:`interpreters`)
    stacks: Dict = field(default_factory=dict)
    run_environment: runenv.RunEnvironment = field(default_factory=runenv.RunEnvironment)
    #: owner label -> AppDir paths of files that still name the store (:mod:`leaks`)
    store_paths: Dict[str, List[str]] = field(default_factory=dict)
    #: when the command started (perf_counter), for the last line's elapsed time
    started: float = 0.0
    layout: Optional[Layout] = None
    #: the entries' AppDir paths, and the specs with files in the image
    points: List[apprun.EntryPoint] = field(default_factory=list)
    bundled: List = field(default_factory=list)
    #: the CPU the bundled specs were built for (None: any CPU of their family)
    cpu_need: Optional[cpu.Need] = None
    store_view: storeview.StoreView = field(default_factory=lambda: storeview.StoreView("auto"))


#: The stages of a build, in order, with what their progress lines say (``{...}`` filled
#: when the stage starts); ``[i/N]`` counts them. A dry run has its own, shorter list.
STAGES = {
    "closure": "closure: resolving shared libraries",
    "plan": "plan: what the AppDir holds",
    "stage": "stage: copying {files} files",
    "relocate": "relocate: $ORIGIN-relative RPATHs",
    "apprun": "apprun: dispatcher, entry table, desktop file",
    "audit": "audit: every RPATH and NEEDED inside the AppDir",
    "manifest": "manifest: provenance and file hashes",
    "squashfs": "squashfs: {compression}",
    "assemble": "assemble: runtime + squashfs",
}
#: The last stage of a signed build.
SIGN_STAGE = {"sign": "sign: with key {key}"}
DRY_RUN_STAGES = {"closure": STAGES["closure"], "plan": STAGES["plan"],
                  "report": "dry run: nothing written"}


class Progress:
    """``==> [i/N] stage`` lines, as ``spack install`` prints them, with timings.

    On a terminal the line of the running stage is redrawn in place with its time when
    the stage ends; in a log (not a TTY) each line is printed once, without control
    characters. A stage that prints (``draws``) gets its line printed whole first.
    ``quiet`` keeps stdout for a machine-readable report. ``checkpoint`` runs before and
    after each stage, so an interrupt that was swallowed stops the build there."""

    def __init__(self, stages: Dict[str, str], checkpoint: Callable[[], None],
                 quiet: bool = False):
        self.stages, self.done, self.timings, self.quiet = stages, 0, {}, quiet
        self.checkpoint = checkpoint
        #: messages go to a terminal: lines are redrawn, mksquashfs draws its bar
        self.terminal = sys.stdout.isatty() and tty.msg_enabled() and not quiet
        self.redraw = self.terminal and not tty.is_debug()

    @contextlib.contextmanager
    def stage(self, name: str, draws: bool = False, **fields) -> Iterator[None]:
        self.checkpoint()
        self.done += 1
        line = f"[{self.done}/{len(self.stages)}] {self.stages[name].format(**fields)}"
        redraw = self.redraw and not draws
        if not self.quiet:
            tty.msg(line + (" ..." if redraw else ""), newline=not redraw)
        start = time.perf_counter()
        try:
            yield
            self.checkpoint()
        except BaseException:
            if redraw:
                sys.stdout.write("\n")  # the error goes below the stage's line
            raise
        self.timings[name] = time.perf_counter() - start
        if redraw:
            sys.stdout.write("\r\033[K")
            tty.msg(f"{line} ({self.timings[name]:.1f}s)")


class _Interrupts:
    """SIGINT, SIGTERM and SIGHUP as exceptions (KeyboardInterrupt, :class:`Interrupted`),
    raised at once so that every ``finally`` cleans up (temp dir, partial output), and
    raised again at the next stage boundary (:meth:`check`) when the first was swallowed:
    Python drops an exception raised while a ``__del__`` runs, so without the second
    raise a build could go on to succeed after a SIGTERM. Only the first signal raises
    from the handler: a second one must not break off the cleanup the first started."""

    def __init__(self):
        self.received: Optional[int] = None

    def check(self) -> None:
        if self.received == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is not None:
            raise Interrupted(self.received)

    def _handle(self, signum, frame):
        if self.received is not None:
            return
        self.received = signum
        self.check()

    @contextlib.contextmanager
    def installed(self) -> Iterator["_Interrupts"]:
        """The handlers for the block; :class:`Interrupted` leaves it as the one-line
        :class:`Terminated`, whenever it strikes (even while the handlers are set)."""
        previous = {}
        try:
            try:
                for signum in INTERRUPT_SIGNALS:
                    previous[signum] = signal.signal(signum, self._handle)
                yield self
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
        except Interrupted as e:
            raise Terminated(e.signum) from None


@contextlib.contextmanager
def _appdir(keep: Optional[str], size: int) -> Iterator[str]:
    """The AppDir: ``keep`` (``--keep-appdir``), else a temporary directory for ``size``
    bytes of files (:func:`scratch.scratch_parent` says where)."""
    if keep:
        if os.path.lexists(keep) and (not os.path.isdir(keep) or os.listdir(keep)):
            raise OutputError(f"--keep-appdir {keep} exists and is not an empty directory",
                              "name a new directory")
        os.makedirs(keep, exist_ok=True)
        yield os.path.abspath(keep)
        return
    with scratch.appdir(scratch.scratch_parent(size)) as path:
        yield path


def _check_default(options: Options, found: List[entries.Entry]) -> None:
    names = [e.name for e in found]
    if options.default_entry and options.default_entry not in names:
        raise EntryError(
            f"--default-entry {options.default_entry} is not one of the entries "
            f"({', '.join(names)})",
            "name one of the --entry programs",
        )


def run(env, options: Options) -> Result:
    """The image (or, with ``dry_run``, its report) of ``options.entries`` of ``env``."""
    started = time.perf_counter()
    signs = options.sign and not options.dry_run
    with _Interrupts().installed() as interrupts, (
            gnupg.agent_stopped_after() if signs else contextlib.nullcontext()):
        desktop.check_names(options.output, options.entries)  # before they are printed
        nodes = entries.link_run_nodes(env)
        found = entries.find_all(options.entries, nodes)
        interpreters.check_left_out(options.exclude_specs, nodes)
        _check_default(options, found)
        if options.sbom:
            if not options.dry_run and os.path.abspath(options.sbom) == os.path.abspath(
                    options.output):
                raise OutputError(f"--sbom {options.sbom} is also the image's output",
                                  "give the SBOM another file name")
            assemble.check_output(options.sbom, options.force, "--sbom")
        if not options.dry_run:
            tools = _check_tools(options, nodes)
        policy = host_policy.for_environment(
            nodes, options.host_libs, options.bundle_libs, options.bundle_externals
        )
        stages = DRY_RUN_STAGES if options.dry_run else dict(
            STAGES, **(SIGN_STAGE if options.sign else {}))
        progress = Progress(stages, interrupts.check, quiet=options.json)
        result = plan_image(found, nodes, Layout(nodes), policy, options, progress)
        result.started = started
        if not options.json:
            if result.cpu_need and not options.dry_run:  # a dry run's report says it
                for line in cpu_lines(result.cpu_need):
                    tty.msg(line)
            for name, value in result.run_environment.dropped:
                tty.warn(f"{name}={value} is not set in the image: it names the store or "
                         "holds a tab or newline")
            if not options.dry_run:
                for label, paths in result.store_paths.items():
                    if result.store_view.applies:
                        tty.msg(f"{len(paths)} files of {label} name the store: the image "
                                "shows them at their store paths where the node allows user "
                                "namespaces (--dry-run lists them)")
                    else:
                        tty.warn(f"{len(paths)} files of {label} name the store; programs "
                                 "reading them may fail on other machines (--dry-run lists "
                                 "them; --store-view auto shows them there)")
        if options.dry_run:
            with progress.stage("report", draws=True):
                data = report.collect(result, result.layout, policy.always_there)
                print(report.as_json(data) if options.json else report.text(data))
            if options.sbom:
                _write_sbom(options, _manifest_of(result, options, None, None), None)
            return result
        write_image(result, policy, options, progress, tools)
        return result


@dataclass
class Tools:
    """What writing an image takes besides Spack, found before the first stage."""

    runtime: str
    mksquashfs: str
    patchelf: relocate.Patchelf
    signer: Optional[signing.Signer] = None


def _check_tools(options: Options, nodes) -> Tools:
    """The output path, the runtime, AppRun, mksquashfs with its compression, patchelf
    and the signing key, checked (and compiled or bootstrapped, with a line saying so)
    before anything is copied, so a build that cannot finish fails in seconds."""
    assemble.check_output(options.output, options.force)
    runtime_file = options.runtime or runtime.build()
    assemble.check_runtime(runtime_file)
    apprun.build()
    mksquashfs = squashfs.find_mksquashfs(nodes)
    squashfs.check_compression(mksquashfs, options.compression)
    ours = assemble.section(runtime_file, runtime.ID_SECTION) is not None
    if not ours and options.compression not in squashfs.OFFICIAL_RUNTIME_READS:
        tty.warn(
            f"the official AppImage runtime cannot read {options.compression} "
            f"images (only {' and '.join(squashfs.OFFICIAL_RUNTIME_READS)}); make "
            f"sure {options.runtime} can"
        )
    signer = None
    if options.sign:
        signer = signing.prepare(options.sign if isinstance(options.sign, str) else None,
                                 runtime_file)
    return Tools(runtime_file, mksquashfs, relocate.find_patchelf(), signer)


def plan_image(found, nodes, layout: Layout, policy, options: Options,
               progress: "Progress", store_root: Optional[str] = None) -> Result:
    """The first stages: the closure (with what extras add) and the plan of the AppDir,
    with what follows from it (entry points, bundled specs, run environment, files that
    name ``store_root``, by default Spack's store)."""
    import spack.store

    store_root = store_root or spack.store.STORE.root
    rules = stage.DataRules(tuple(options.exclude), tuple(options.keep))
    with progress.stage("closure"):
        libraries, included, stacks, rules = extras.resolve(
            found, nodes, layout, policy, options.include, rules, options.exclude_specs)
    with progress.stage("plan"):
        plan = stage.plan(found, libraries, layout, [i.path for i in included], rules,
                          {s: interpreters.trees(s, i) for s, i in stacks.items()})
        bundled = layout.specs_owning(plan.files.values())
        run_environment = runenv.compute(
            [e.spec for e in found if e.spec is not None] + list(stacks), layout, plan.files,
            store_root, extras.relocating_variables(bundled))
        store_paths = leaks.find(plan.files, owner_of_dest, store_root,
                                 [e.path for e in found if e.interpreter])
    return Result(None, found, libraries, plan, progress.timings, included, stacks=stacks,
                  run_environment=run_environment, store_paths=store_paths, layout=layout,
                  points=[apprun.EntryPoint.of(e, layout) for e in found], bundled=bundled,
                  cpu_need=cpu.of_specs(bundled),
                  store_view=storeview.decide(options.store_view, bundled, store_paths,
                                              store_root))


def cpu_lines(need: cpu.Need) -> List[str]:
    """What the build says of the CPU the image needs: the need, and the portable
    choice when that is the build host's own microarchitecture."""
    hint = cpu.portable_hint(need)
    return [f"the image {cpu.summary(need)}"] + ([hint] if hint else [])


def write_image(result: Result, policy, options: Options, progress: "Progress",
                tools: Tools) -> None:
    """The stages that write: the AppDir, relocated and audited, with AppRun and the
    manifest, packed and put behind the runtime at ``options.output``. A full disk is
    one line naming the directory that filled."""
    output = os.path.abspath(options.output)
    with full_disk_names(os.path.dirname(output), "write the image elsewhere with -o"):
        # The AppDir lives inside the output's transaction: it is gone before the image
        # takes its name, so no interrupt can strike between the two. (Entering it
        # removes what killed builds left: scratch.remove_stale.)
        with assemble.output_file(output, options.force) as partial:
            with _appdir(options.keep_appdir, result.plan.size()) as appdir:
                elsewhere = ("choose another --keep-appdir" if options.keep_appdir
                             else scratch.ELSEWHERE)
                with full_disk_names(os.path.dirname(appdir), elsewhere):
                    unpacked = _fill_appdir(result, policy, options, progress, appdir,
                                            tools)
                with progress.stage("squashfs", draws=progress.terminal,
                                    compression=options.compression):
                    squashfs.make(tools.mksquashfs, appdir, partial,
                                  offset=os.path.getsize(tools.runtime),
                                  compression=options.compression, jobs=options.jobs,
                                  progress=progress.terminal)
                with progress.stage("assemble"):
                    assemble.write_runtime(tools.runtime, partial)
                    runtime.stamp_build(partial, tools.runtime)
                    assemble.stamp_image_id(partial, tools.runtime, runtime.ID_SECTION,
                                            unpacked)
                image_digest = None
                if options.sbom or tools.signer:
                    where = signing.sections(partial)
                    image_digest = signing.digest(partial, where)
                if tools.signer:  # last: the signature covers every other byte
                    with progress.stage("sign", key=tools.signer.fingerprint):
                        signing.sign(partial, where, image_digest, tools.signer)
            if options.sbom:  # before the image takes its name: a failure leaves neither
                _write_sbom(options, result.manifest, image_digest)
    result.output = output


def _fill_appdir(result: Result, policy, options: Options, progress: "Progress",
                 appdir: str, tools: Tools) -> int:
    """The AppDir's files, relocated and audited, with AppRun, the desktop entry and
    the manifest; returns the unpacked size the manifest records."""
    import spack.store

    found, libraries, layout = result.entries, result.closure, result.layout
    with progress.stage("stage", files=len(result.plan.files)):
        stage.materialize(result.plan, appdir)
        bytecode.make_valid(appdir, bytecode.python_sources(
            result.plan.files, interpreters.python_executables(result.stacks)))
    with progress.stage("relocate"):
        relocate.relocate(appdir, relocate.rpaths_for(libraries, layout), tools.patchelf)
    with progress.stage("apprun"):
        apprun.install(appdir, found, result.points, libraries, policy,
                       options.default_entry, result.run_environment.changes, result.cpu_need,
                       result.store_view)
        desktop.write(appdir, options.output, [e.name for e in found],
                      options.default_entry)
    with progress.stage("audit"):
        host = list(policy.patterns) + list(libraries.host_requirements())
        relocate.audit(appdir, host, [spack.store.STORE.root])
    with progress.stage("manifest"):
        result.manifest = _manifest_of(result, options, appdir, tools.signer)
        return manifest.write(appdir, result.manifest)


def _manifest_of(result: Result, options: Options, appdir: Optional[str],
                 signer: Optional[signing.Signer]) -> dict:
    return manifest.of_build(appdir, result.entries, result.points, result.bundled,
                             result.closure, options.command, result.run_environment,
                             options.environment, result.cpu_need, result.store_view,
                             signer)


def describe(result: Result) -> str:
    size = os.path.getsize(result.output)
    specs = result.plan.spec_labels()
    return (
        f"{result.output}: {size / 2**20:.1f} MiB, entries: "
        f"{', '.join(e.name for e in result.entries)}; {len(specs)} specs, "
        f"{len(result.plan.files)} files in {time.perf_counter() - result.started:.1f}s"
    )


def _write_sbom(options: Options, image_manifest: dict, image_digest: Optional[str]) -> None:
    with full_disk_names(os.path.dirname(os.path.abspath(options.sbom)),
                         "write the SBOM elsewhere with --sbom"):
        path = manifest.write_sbom(options.sbom, options.force, image_manifest,
                                   os.path.basename(options.output), image_digest)
    if not options.json:  # stdout holds the JSON report
        tty.msg(f"SBOM (CycloneDX 1.5): {path}")
