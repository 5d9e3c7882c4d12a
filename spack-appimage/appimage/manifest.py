"""The provenance manifest every image carries, and the CycloneDX SBOM made from it.

The manifest (``.appimage/manifest.json`` in the AppDir; printed by the runtime's
``--appimage-manifest`` without a mount) says what the image is:

* ``entries``: each entry's name, AppDir path, bundled interpreter, and spec hash;
* ``specs``: every spec with a file in the image, plus the external specs whose
  libraries the host provides, with name, version, hash, variants (the node's
  ``parameters``), compiler and link/run dependencies, read from the spec's installed
  ``.spack/spec.json`` (an external has none; its node comes from the environment's
  concrete spec, which is the same record). The build environment (``.spack/
  spack-build-env.txt``) is never read: it can hold secrets;
* ``host``: each library the host must provide and why, and the oldest glibc;
* ``run_environment``: what AppRun sets before an entry runs (:mod:`runenv`);
* ``cpu``: the CPU the bundled specs need (:mod:`cpu`): their family, each target beyond
  the family's generic base with its specs and flags (as /proc/cpuinfo spells them), the
  most demanding target(s), the generic level and the union of flags; null when every
  bundled spec was built for the family's base (``x86_64``), which any CPU of it runs;
* ``store_view``: its mode, whether AppRun shows the bundled prefixes at their store
  paths, and which (:mod:`storeview`);
* ``signature``: the key the image is signed with (fingerprint and user ID), or null
  for an unsigned image (:mod:`signing`; the signature itself is outside the squashfs);
* ``files`` and ``links``: every path in the image with size and sha256, or target;
* ``tool``: the extension's version, and the commit of its clone with ``dirty`` when
  its files differ from it (:mod:`version`; both null when not a git clone);
  ``spack``: Spack's version;
* ``environment``: the environment's absolute path and the SHA-256 of its ``spack.lock``;
* ``command``: the command line, normalized (:func:`command_line`).

Nothing in it depends on the time or the machine, nor on the spelling of paths and the
options that do not change the image (``-f``, ``-j``, ...: :func:`command_line`), so the
same build gives the same manifest, and the same image bytes.
"""

import hashlib
import json
import os
import uuid
from typing import Dict, Iterable, List, Optional, Tuple

from . import version
from .compat import COMPILER_VIRTUALS, node_compilers
from .errors import AppImageError, label, unreadable

#: Where the manifest lives in the AppDir (the runtime's MANIFEST).
PATH = os.path.join(".appimage", "manifest.json")

FORMAT = "spack-appimage-manifest/1"

#: Options of ``spack appimage`` that do not change the image, left out of ``command``.
NOT_RECORDED = {"help", "force", "jobs", "dry_run", "json", "sbom", "keep_appdir",
                "install", "print_runtime", "show_version", "list_entries"}


def command_line(actions, args, environment: str, output: str) -> List[str]:
    """The command that made the image, normalized so that two commands making the same
    image record the same line: ``spack -e <the environment's real path> appimage``, then
    every option of ``actions`` (the command's argparse actions) that changes the image,
    in their order, each in its long form (a repeated one in the order given), with the
    output's file name (its directory does not change the image) and the runtime's real
    path. Left out: :data:`NOT_RECORDED`, and Spack's own options (``-v``, ``-d``)."""
    line = ["spack", "-e", os.path.realpath(environment), "appimage"]
    for action in actions:
        if not action.option_strings or action.dest in NOT_RECORDED:
            continue
        value = getattr(args, action.dest, None)
        if action.dest == "output":
            value = os.path.basename(output)
        elif action.dest == "runtime" and value:
            value = os.path.realpath(value)
        flag = max(action.option_strings, key=len)
        if value is True:
            line.append(flag)
        elif isinstance(value, list):
            line += [a for v in value for a in (flag, str(v))]
        elif value not in (None, False):
            line += [flag, str(value)]
    return line


def environment_record(path: Optional[str]) -> Optional[dict]:
    """The environment's real path and the SHA-256 of its ``spack.lock`` (what was
    concretized; null if it has none)."""
    if path is None:
        return None
    path = os.path.realpath(path)
    lock = os.path.join(path, "spack.lock")
    try:
        with open(lock, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        digest = None
    except OSError as e:
        raise unreadable(lock, e) from e
    return {"path": path, "spack_lock_sha256": digest}


def tool_record() -> dict:
    tool = version.identity()
    return {"name": "spack-appimage", "version": tool.version, "commit": tool.commit,
            "dirty": tool.dirty if tool.commit else None}

def spec_nodes(spec) -> Dict[str, dict]:
    """hash -> node of the specfile describing ``spec``: its installed ``spec.json``,
    else (externals) the concrete spec's own record."""
    import spack.store

    path = spack.store.STORE.layout.spec_file_path(spec)
    if spec.external or not os.path.exists(path):
        nodes = spec.to_dict()["spec"]["nodes"]
    else:
        try:
            with open(path) as f:
                nodes = json.load(f)["spec"]["nodes"]
        except OSError as e:
            raise unreadable(path, e) from e
        except (ValueError, KeyError, TypeError) as e:
            raise AppImageError(f"{path} is not a Spack specfile ({e})",
                                f"reinstall {label(spec)}") from e
    return {node["hash"]: node for node in nodes}


def spec_record(spec, in_image: bool) -> dict:
    """What the manifest says of one spec, from its specfile node."""
    nodes = spec_nodes(spec)
    node = nodes[spec.dag_hash()]
    dependencies = [
        dep["hash"] for dep in node.get("dependencies", [])
        if set(dep.get("parameters", {}).get("deptypes", ())) & {"link", "run"}
        and not set(dep.get("parameters", {}).get("virtuals", ())) & set(COMPILER_VIRTUALS)
    ]
    record = {
        "name": node["name"],
        "version": str(node.get("version", "")),
        "hash": node["hash"],
        "namespace": node.get("namespace"),
        "variants": node.get("parameters", {}),
        "compiler": node_compilers(node, nodes),
        "dependencies": sorted(dependencies),
        "in_image": in_image,
    }
    if spec.external:
        record["external"] = {"prefix": spec.external_path}
    return record


def file_records(appdir: str) -> Tuple[List[dict], List[dict]]:
    """(files with size and sha256, symlinks with target) under ``appdir``, sorted,
    without the manifest itself."""
    files, links = [], []
    for root, dirs, names in os.walk(appdir):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, appdir)
            if rel == PATH:
                continue
            if os.path.islink(path):
                links.append({"path": rel, "target": os.readlink(path)})
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            files.append({"path": rel, "size": os.path.getsize(path),
                          "sha256": digest.hexdigest()})
    return sorted(files, key=lambda r: r["path"]), sorted(links, key=lambda r: r["path"])


def build(
    appdir: Optional[str],
    entry_points: Iterable,
    entry_specs: Iterable,
    bundled_specs: Iterable,
    host_specs: Iterable,
    host: Dict[str, str],
    glibc: Optional[str],
    command: List[str],
    run_environment: List[dict] = (),
    environment: Optional[str] = None,
    cpu: Optional[dict] = None,
    store_view: Optional[dict] = None,
    signature: Optional[dict] = None,
) -> dict:
    """The manifest of the AppDir ``appdir`` as staged (call it last); with no
    ``appdir`` (a dry run), everything but the file records."""
    import spack

    files, links = file_records(appdir) if appdir else ([], [])
    specs = [spec_record(s, True) for s in bundled_specs]
    specs += [spec_record(s, False) for s in host_specs]
    return {
        "format": FORMAT,
        "tool": tool_record(),
        "spack": {"version": spack.get_version()},
        "environment": environment_record(environment),
        "command": list(command),
        "entries": [
            {"name": point.name, "path": point.path, "interpreter": point.interpreter,
             "spec": spec.dag_hash() if spec is not None else None}
            for point, spec in zip(entry_points, entry_specs)
        ],
        "specs": sorted(specs, key=lambda r: (r["name"], r["hash"])),
        "host": {"glibc": glibc, "libraries": dict(sorted(host.items()))},
        "run_environment": list(run_environment),
        "cpu": cpu,
        "store_view": store_view,
        "signature": signature,
        "files": files,
        "links": links,
    }


def write(appdir: str, manifest: dict) -> int:
    """Write ``manifest`` into ``appdir``; return the bytes of the AppDir's files (what
    the runtime checks for free space before extracting), from the file records rather
    than another walk of the tree."""
    path = os.path.join(appdir, PATH)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    return sum(record["size"] for record in manifest["files"]) + os.path.getsize(path)


def cyclonedx(manifest: dict, name: str, image_digest: Optional[str]) -> dict:
    """A CycloneDX 1.5 SBOM of the image ``name`` described by ``manifest``: one
    component per spec (a Package URL of type ``spack``), its dependencies, and the
    externals the host provides with scope ``excluded``; the image's digest (the one
    :mod:`signing` signs) as the image component's SHA-256, when there is an image. The
    serial number is derived from the manifest, so the same image gets the same SBOM."""
    canonical = json.dumps(manifest, sort_keys=True).encode()
    serial = uuid.uuid5(uuid.NAMESPACE_URL, "spack-appimage:" + hashlib.sha256(canonical).hexdigest())
    image_ref = f"image:{name}"
    components, dependencies = [], []
    known = {spec["hash"] for spec in manifest["specs"]}
    for spec in manifest["specs"]:
        properties = [{"name": "spack:hash", "value": spec["hash"]}]
        properties += [{"name": "spack:compiler", "value": c} for c in spec["compiler"]]
        properties += [
            {"name": f"spack:variant:{key}", "value": _property_value(value)}
            for key, value in sorted(spec["variants"].items())
        ]
        if "external" in spec:
            properties.append({"name": "spack:external", "value": spec["external"]["prefix"]})
        components.append({
            "type": "library",
            "bom-ref": spec["hash"],
            "name": spec["name"],
            "version": spec["version"],
            "scope": "required" if spec["in_image"] else "excluded",
            "purl": f"pkg:spack/{spec['name']}@{spec['version']}?hash={spec['hash']}",
            "properties": properties,
        })
        dependencies.append({
            "ref": spec["hash"],
            "dependsOn": [h for h in spec["dependencies"] if h in known],
        })
    entry_specs = sorted({entry["spec"] for entry in manifest["entries"]})
    dependencies.append({"ref": image_ref, "dependsOn": entry_specs})
    image = {"type": "application", "bom-ref": image_ref, "name": name}
    if image_digest:
        image["hashes"] = [{"alg": "SHA-256", "content": image_digest}]
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{serial}",
        "version": 1,
        "metadata": {
            "tools": {"components": [{"type": "application", "name": "spack-appimage",
                                      "version": manifest["tool"]["version"]}]},
            "component": image,
        },
        "components": components,
        "dependencies": dependencies,
    }


def _property_value(value) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def of_build(appdir: Optional[str], found, points, bundled, libraries, command: List[str],
             run_environment, environment: Optional[str] = None, cpu_need=None,
             store_view=None, signer=None) -> dict:
    """The manifest of a build, from what its stages produced: the entries and their
    AppDir paths (``points``), the specs with files in the image (``bundled``), the
    closure's host requirements and glibc need, the run environment and the CPU the
    bundled specs need (a :class:`.cpu.Need` or None), the store view (a
    :class:`.storeview.StoreView` or None), the signer (a :class:`.signing.Signer` or
    None); without file records when nothing was staged (``appdir`` None).
    ``environment``: its directory."""
    import spack.traverse

    bundled = sorted(bundled, key=lambda s: s.dag_hash())
    entry_specs = [e.spec for e in found if e.spec is not None]  # none in the benchmarks
    externals = [
        spec for spec in spack.traverse.traverse_nodes(entry_specs, deptype=("link", "run"))
        if spec.external and spec not in bundled
    ]
    return build(
        appdir,
        points,
        [e.spec for e in found],
        bundled,
        sorted(externals, key=lambda s: s.dag_hash()),
        libraries.host_requirements(),
        libraries.glibc_requirement,
        list(command),
        run_environment.as_records(),
        environment,
        cpu_need.record() if cpu_need else None,
        store_view.record() if store_view else None,
        signer.record() if signer else None,
    )


def write_sbom(path: str, force: bool, image_manifest: dict, image_name: str,
               image_digest: Optional[str]) -> str:
    """The CycloneDX SBOM of ``image_manifest`` (and ``image_digest``) written at ``path``
    (atomically, never over an existing file without ``force``); returns its absolute
    path."""
    from .assemble import output_file

    with output_file(path, force, executable=False) as partial:
        with open(partial, "w") as f:
            json.dump(cyclonedx(image_manifest, image_name, image_digest), f, indent=2)
            f.write("\n")
    return os.path.abspath(path)
