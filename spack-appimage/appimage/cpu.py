"""The CPU an image needs, from the targets its bundled specs were built for.

Spack builds for the build host's own microarchitecture unless told otherwise, so an
image made on an AVX-512 login node dies with ``Illegal instruction`` on an older
compute node. Every spec records its target, and archspec (inside Spack) knows each
target's feature flags and ancestors; this module turns the bundled specs' targets
(never host externals: the host brings those) into:

* :class:`Need`: the targets beyond their family's generic base (``x86_64``,
  ``aarch64``: those run anywhere and need nothing), the specs built for each, their
  flags and the union, the most demanding target(s), and the family's generic levels;
* the entry table's ``cpu`` and ``cpu-level`` lines, which AppRun checks against the
  host's ``/proc/cpuinfo`` before anything of the image runs (apprun/cpu.c);
* the manifest's ``cpu`` record, and the one line the build and the dry run print,
  with the portable choice when the need is the build host's own microarchitecture.

Flags are spelled as the Linux kernel spells them in ``/proc/cpuinfo``, which is what
archspec itself compares on Linux, except where archspec names a feature otherwise
(:data:`KERNEL_NAMES`).
"""

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from .compat import archspec_cpu

#: archspec's feature names that the kernel spells otherwise. archspec adds ``sse3`` to
#: every target with ``ssse3`` since Spack 1.0 (x86 kernels say ``pni``, "Prescott New
#: Instructions"), and older ones list it for ``nocona``; the archspec of Spack 0.23 gives
#: ``cannonlake`` a ``sha`` the kernel calls ``sha_ni``. Every other name is the kernel's:
#: archspec's own detection compares them with /proc/cpuinfo verbatim.
KERNEL_NAMES = {"x86_64": {"sse3": "pni", "sha": "sha_ni"}}

#: The generic level a site's partitions commonly share, suggested instead of a higher
#: host level: every x86 server CPU since Haswell (2013) and Zen (2017) is x86_64_v3,
#: while AVX-512 (x86_64_v4) is missing from Zen 1-3 and many Intel parts.
PORTABLE = {"x86_64": "x86_64_v3"}

#: How many flags the one-line summary names.
SHOWN = 6


@dataclass(frozen=True)
class TargetNeed:
    """One target beyond the family base, and the bundled specs built for it."""

    name: str
    specs: Tuple[str, ...]
    flags: Tuple[str, ...]


@dataclass(frozen=True)
class Need:
    """What CPU the bundled specs need (:func:`of_specs`)."""

    family: str
    targets: Tuple[TargetNeed, ...]
    #: the target all others are ancestors of, or every one no other descends from
    most_demanding: Tuple[str, ...]
    #: the generic level the need falls in (archspec's ``generic`` of the most demanding)
    level: str
    #: the union of the targets' flags
    flags: Tuple[str, ...]
    #: the family's generic levels, lowest first, with their flags
    levels: Tuple[Tuple[str, Tuple[str, ...]], ...]

    def record(self) -> dict:
        """What the manifest says (nothing in it depends on the build host)."""
        return {
            "family": self.family,
            "targets": [{"name": t.name, "specs": list(t.specs), "flags": list(t.flags)}
                        for t in self.targets],
            "most_demanding": list(self.most_demanding),
            "level": self.level,
            "flags": list(self.flags),
        }

    def table_lines(self) -> List[Tuple[str, ...]]:
        """The entry table's ``cpu`` and ``cpu-level`` lines (fields after the kind)."""
        lines = [("cpu", t.name, ",".join(t.specs), " ".join(t.flags)) for t in self.targets]
        return lines + [("cpu-level", name, " ".join(flags)) for name, flags in self.levels]


def kernel_flags(target) -> Tuple[str, ...]:
    """The flags ``target`` (an archspec microarchitecture) has, its ancestors' included
    (archspec lists only the added ones for some families), as /proc/cpuinfo spells them."""
    names = KERNEL_NAMES.get(target.family.name, {})
    features = set(target.features).union(*(a.features for a in target.ancestors))
    return tuple(sorted({names.get(f, f) for f in features}))


def generic_levels(family) -> List:
    """The family's generic targets above the family itself, lowest first."""
    return sorted((t for t in archspec_cpu.TARGETS.values()
                   if t.vendor == "generic" and t.family == family and t != family),
                  key=lambda t: len(t.ancestors))


def of_specs(specs: Iterable) -> Optional[Need]:
    """The need of the bundled ``specs``, or None when all are built for a family base.
    Externals bundled by policy count for nothing: the concretizer stamps them with the
    build host's target, but their files were built elsewhere, for whatever CPU."""
    targets: Dict[str, object] = {}
    built_for: Dict[str, set] = {}
    for spec in specs:
        target = spec.target  # archspec's microarchitecture (Spack >= 0.23)
        if not spec.external and target is not None and target != target.family:
            targets[target.name] = target
            built_for.setdefault(target.name, set()).add(f"{spec.name}@{spec.version}")
    if not targets:
        return None
    top = [t for t in targets.values()
           if not any(t in other.ancestors for other in targets.values())]
    level = max((t.generic for t in top), key=lambda t: len(t.ancestors))
    needs = tuple(TargetNeed(name, tuple(sorted(built_for[name])), kernel_flags(targets[name]))
                  for name in sorted(targets))
    return Need(
        family=level.family.name,
        targets=needs,
        most_demanding=tuple(sorted(t.name for t in top)),
        level=level.name,
        flags=tuple(sorted(set().union(*(t.flags for t in needs)))),
        levels=tuple((t.name, kernel_flags(t)) for t in generic_levels(level.family)),
    )


def telling_flags(need: Need) -> List[str]:
    """The flags worth naming first: the best known ones its level adds over the level
    below (those most targets share: ``avx``, ``avx512f``), then those the need has beyond
    its level, the ones other vendors' CPUs lack first (``sse4a``, ``clzero`` on a Zen
    build: what a node of the same level may still lack), then the rarest."""
    levels = dict(need.levels)
    if need.level not in levels:  # below the first level, or a family without levels
        return sorted(need.flags)
    names = list(levels)
    below = set(levels[names[names.index(need.level) - 1]]) if names.index(need.level) else set()
    common, elsewhere = _how_common(need.family, _vendors(need))
    added = sorted(set(levels[need.level]) - below, key=lambda f: (-common.get(f, 0), f))
    beyond = sorted(set(need.flags) - set(levels[need.level]),
                    key=lambda f: (elsewhere.get(f, 0), common.get(f, 0), f))
    first = added[:max(2, SHOWN - len(beyond))]
    return first + beyond[:SHOWN - len(first)] + added[len(first):] + beyond[SHOWN - len(first):]


def _vendors(need: Need) -> set:
    return {archspec_cpu.TARGETS[t.name].vendor for t in need.targets
            if t.name in archspec_cpu.TARGETS}


def _how_common(family: str, vendors: set) -> Tuple[Dict[str, int], Dict[str, int]]:
    """flag -> how many known targets of ``family`` have it, and how many of those are
    of other vendors than ``vendors`` (generic levels left out)."""
    common: Dict[str, int] = {}
    elsewhere: Dict[str, int] = {}
    for target in archspec_cpu.TARGETS.values():
        if target.family.name == family:
            for flag in kernel_flags(target):
                common[flag] = common.get(flag, 0) + 1
                if target.vendor not in vendors | {"generic"}:
                    elsewhere[flag] = elsewhere.get(flag, 0) + 1
    return common, elsewhere


def summary(need: Need) -> str:
    """``needs an icelake-compatible CPU (x86_64_v4: avx512f, ... and 19 more)``."""
    flags = telling_flags(need)
    listed = ", ".join(flags[:SHOWN]) + (
        f" and {len(flags) - SHOWN} more" if len(flags) > SHOWN else "")
    if len(need.most_demanding) == 1:
        name = need.most_demanding[0]
        what = f"{'an' if name[0] in 'aeiox' else 'a'} {name}-compatible CPU"
    else:
        what = f"a CPU compatible with each of {', '.join(need.most_demanding)}"
    return f"needs {what} ({need.level}: {listed})"


def portable_hint(need: Need) -> Optional[str]:
    """When the need is the build host's own microarchitecture (Spack's default target),
    how to build for the family's generic level instead; else None."""
    host = archspec_cpu.host()
    if host.name not in (t.name for t in need.targets) or host.vendor == "generic":
        return None
    portable = archspec_cpu.TARGETS.get(PORTABLE.get(need.family, ""))
    level = portable if portable is not None and portable in host.ancestors else host.generic
    return (f"{host.name} is this host's own CPU (Spack's default target); for nodes with "
            f"other CPUs: spack config add \"packages:all:require:target={level.name}\", "
            "then spack concretize -f and spack install")
