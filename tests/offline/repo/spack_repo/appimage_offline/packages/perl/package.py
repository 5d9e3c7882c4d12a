"""Perl 5.36.0 (Debian 12's) from Debian's orig tarball, upstream's ``.tar.xz`` (the
recipe of spack-packages 2025.11 starts at 5.40).

The builtin recipe always stages the cpanm resource, downloaded from CPAN, which these
machines cannot reach; the tests build ``~cpanm``, which never uses it, so this overlay
leaves the resource out.
"""

try:
    from spack_repo.builtin.packages.perl.package import Perl as BuiltinPerl
except ImportError:  # Spack < 1.0: the legacy repository layout
    from spack.pkg.builtin.perl import Perl as BuiltinPerl

from spack.package import *


class Perl(BuiltinPerl):
    version(
        "5.36.0",
        sha256="0f386dccbee8e26286404b2cca144e1005be65477979beb9b1ba272d4819bcf0",
        url="https://www.cpan.org/src/5.0/perl-5.36.0.tar.xz",
    )


Perl.resources = {}
