"""CPython 3.11.2 from Debian's orig tarball, which is upstream's Python-3.11.2.tgz.

The builtin recipe no longer lists 3.11.2, the version Debian 12 ships sources for;
everything else (variants, build, run environment) is the builtin recipe's.
"""

try:
    from spack_repo.builtin.packages.python.package import Python as BuiltinPython
except ImportError:  # Spack < 1.0: the legacy repository layout
    from spack.pkg.builtin.python import Python as BuiltinPython

from spack.package import *


class Python(BuiltinPython):
    version("3.11.2", sha256="2411c74bda5bbcfcddaf4531f66d1adc73f247f529aee981b029513aefdbf849")
