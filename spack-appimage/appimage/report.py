"""What ``--dry-run`` shows: the image's contents, decided but not written.

:func:`collect` turns a planned build into plain data (``--json`` prints it as is);
:func:`text` renders it for people:

* per entry, a tree of the libraries it loads, as libtree draws it: each library with
  the spec that owns it, where it goes in the AppDir and the RPATH/RUNPATH entry or
  system directory it was found through. A library shown once is not expanded again;
  host libraries are leaves, with the reason (glibc family, GPU driver, external spec);
* the files ``--include``, plugin rules and interpreters add;
* per spec, the bytes bundled as binaries, libraries and data;
* the interpreters and extensions, with their trees and bytes, and the run environment
  AppRun sets;
* everything the host must provide, with the reason, and the CPU (:mod:`.cpu`);
* files that still name the store;
* data files left out, with the rule that left each out (one line per spec and rule
  when a rule leaves out many), and symlinks left out;
* totals.
"""

import dataclasses
import json
import os
from typing import Dict, List, Optional

from .errors import label
from .layout import owner_of_dest
from .stage import BINARY, DATA, LIBRARY

KINDS = (BINARY, LIBRARY, DATA)


def collect(result, layout, always_there) -> dict:
    """The report of a planned build ``result`` (``build.Result``). ``always_there(name)``
    says whether a host library is of the glibc family, which trees leave out."""
    trees = []
    for entry in result.entries:
        shown = set()
        trees.append({
            "entry": entry.name,
            "spec": label(entry.spec),
            "path": layout.dest(entry.path),
            "loads": _children(os.path.realpath(entry.program), result.closure, layout,
                               always_there, shown),
        })
    sizes = result.plan.bytes_by_owner()
    specs = [dict(owner=owner, **by_kind, total=sum(by_kind.values()))
             for owner, by_kind in sorted(sizes.items())]
    host = sorted(result.closure.host_requirements().items())
    return {
        "cpu": _cpu(result.cpu_need),
        "interpreters": _stacks(result, layout),
        "run_environment": result.run_environment.as_records(),
        "store_paths": [{"owner": label, "paths": paths}
                        for label, paths in sorted(result.store_paths.items())],
        "store_view": dict(result.store_view.record(), summary=result.store_view.summary()),
        "entries": trees,
        "included": [{"path": layout.dest(i.path), "reason": i.reason}
                     for i in result.included],
        "specs": specs,
        "host": [{"library": name, "reason": reason} for name, reason in host],
        "excluded": [{"path": path, "owner": layout.owner(path).label, "rule": rule}
                     for path, rule in result.plan.excluded],
        "skipped_links": [{"path": path, "reason": why} for path, why in result.plan.skipped],
        "totals": {
            "files": len(result.plan.files),
            "links": len(result.plan.links),
            "bytes": sum(s["total"] for s in specs),
            **{kind: sum(s[kind] for s in specs) for kind in KINDS},
            "specs": len(result.plan.spec_labels()),
            "host_libraries": len(host),
            "excluded": len(result.plan.excluded),
            "skipped_links": len(result.plan.skipped),
        },
    }


def _cpu(need) -> Optional[dict]:
    """The manifest's record of the CPU the image needs, with the line that says it and
    the portable choice when the need is the build host's own CPU; None: any CPU."""
    from . import cpu

    if need is None:
        return None
    return dict(need.record(), summary=cpu.summary(need), hint=cpu.portable_hint(need))


def _stacks(result, layout) -> List[dict]:
    """Each bundled interpreter and extension with its trees and their bytes."""
    from .interpreters import is_interpreter, trees

    rows = []
    for spec, interpreter in sorted(result.stacks.items(), key=lambda i: i[0].name):
        owner = layout.owner(os.path.realpath(spec.prefix)).label
        tops = [os.path.join("opt", owner, t) + os.sep for t in trees(spec, interpreter)]
        size = sum(os.path.getsize(src) for dest, src in result.plan.files.items()
                   if dest.startswith(tuple(tops)))
        rows.append({"owner": owner, "role": "interpreter" if is_interpreter(spec, interpreter)
                     else f"extension of {interpreter.name}",
                     "trees": [t.rstrip(os.sep) for t in tops], "bytes": size})
    return rows


def _children(path, closure, layout, always_there, shown) -> List[dict]:
    nodes = []
    for link in closure.links_of(path):
        if link.host_reason:
            if not always_there(link.needed):
                nodes.append({"needed": link.needed, "host": link.host_reason})
            continue
        node = {
            "needed": link.needed,
            "owner": layout.owner(link.real_path).label,
            "dest": layout.dest(link.real_path),
            "found_via": {k: v for k, v in dataclasses.asdict(link.found_via).items()
                          if v is not None},
        }
        if link.real_path in shown:
            node["shown_above"] = True
        else:
            shown.add(link.real_path)
            node["loads"] = _children(link.real_path, closure, layout, always_there, shown)
        nodes.append(node)
    return nodes


def as_json(report: dict) -> str:
    return json.dumps(report, indent=2)


def text(report: dict) -> str:
    lines: List[str] = []
    for tree in report["entries"]:
        lines.append(f"{tree['entry']}  {tree['spec']}  {tree['path']}")
        _draw(tree["loads"], "", lines)
    if report["included"]:
        lines.append("included:")
        lines += _grouped_lines([(owner_of_dest(i["path"]), i["reason"], i["path"])
                                 for i in report["included"]])
    totals = report["totals"]
    rows = report["specs"] + [dict(totals, owner="total", total=totals["bytes"])]
    width = max(len(r["owner"]) for r in rows + report["interpreters"])
    lines.append("bundled bytes per spec:")
    lines.append(f"  {'':{width}} " + " ".join(f"{k:>12}" for k in KINDS + ("total",)))
    for spec in rows:
        lines.append(f"  {spec['owner']:{width}} " + " ".join(
            f"{spec[k]:>12,}" for k in KINDS + ("total",)))
    if report["interpreters"]:
        lines.append("interpreters and extensions:")
        lines += [f"  {i['owner']:{width}} {i['bytes']:>12,}  {i['role']}: "
                  f"{', '.join(i['trees'])}" for i in report["interpreters"]]
    if report["run_environment"]:
        lines.append("run environment (set by AppRun):")
        lines += [f"  {c['op']} {c['name']} {c['value']}".rstrip()
                  for c in report["run_environment"]]
    lines.append("from the host:")
    lines += [f"  {h['library']:30} {h['reason']}" for h in report["host"]]
    if report["cpu"]:
        lines.append(f"  {'CPU':30} {report['cpu']['summary']}")
        if report["cpu"]["hint"]:
            lines.append(f"  {'':30} {report['cpu']['hint']}")
    if report["store_paths"]:
        lines.append("files that name the store"
                     + ("" if report["store_view"]["applies"] else
                        " (may fail on other machines)") + ":")
        for leak in report["store_paths"]:
            lines += [f"  {leak['owner']}: {path}" for path in leak["paths"]]
    lines.append(f"store view: {report['store_view']['summary']}")
    if report["excluded"] or report["skipped_links"]:
        lines.append("left out:")
    lines += _grouped_lines([(e["owner"], e["rule"], e["path"]) for e in report["excluded"]])
    lines += [f"  {s['path']}  [{s['reason']}]" for s in report["skipped_links"]]
    lines.append(
        f"total: {plural(totals['files'], 'file')} and {plural(totals['links'], 'link')}, "
        f"{totals['bytes']:,} bytes from {plural(totals['specs'], 'spec')}; "
        f"{plural(totals['host_libraries'], 'library', 'libraries')} from the host; "
        f"{plural(totals['excluded'], 'path')} and "
        f"{plural(totals['skipped_links'], 'link')} left out"
    )
    return "\n".join(lines)


def plural(count: int, one: str, many: str = "") -> str:
    """``1 file``, ``2 files``."""
    return f"{count} {one if count == 1 else many or one + 's'}"


#: A rule that adds or leaves out more paths of one spec than this is shown as one line.
GROUPED_ABOVE = 5


def _grouped_lines(items: List[tuple]) -> List[str]:
    """One line per (owner, rule, path), or one per owner and rule when a rule covers many
    paths (CPython's C modules; its bytecode of other optimization levels: over a
    thousand files)."""
    groups: Dict[tuple, List[str]] = {}
    for owner, rule, path in items:
        groups.setdefault((owner, rule), []).append(path)
    lines = []
    for (owner, rule), paths in groups.items():
        if len(paths) > GROUPED_ABOVE:
            lines.append(f"  {len(paths)} paths of {owner}  [{rule}]")
        else:
            lines += [f"  {path}  [{rule}]" for path in paths]
    return lines


def _how_found(found: dict) -> str:
    """The text of a :class:`~.closure.Found` record: "RPATH of libmid.so.1: /dir"."""
    kind = found["kind"]
    if kind in ("rpath", "runpath"):
        return f"{kind.upper()} of {found['object']}: {found['directory']}"
    if kind == "system":
        return f"system directory {found['directory']}"
    return {"path": "path", "loaded": "already loaded"}.get(kind) or found.get("reason", kind)


def _draw(nodes: List[dict], indent: str, lines: List[str]) -> None:
    for i, node in enumerate(nodes):
        last = i == len(nodes) - 1
        branch, deeper = ("└── ", "    ") if last else ("├── ", "│   ")
        if "host" in node:
            lines.append(f"{indent}{branch}{node['needed']}  (host: {node['host']})")
            continue
        seen = "  (see above)" if node.get("shown_above") else ""
        lines.append(f"{indent}{branch}{node['needed']}  {node['owner']}  {node['dest']}  "
                     f"[{_how_found(node['found_via'])}]{seen}")
        _draw(node.get("loads", []), indent + deeper, lines)
