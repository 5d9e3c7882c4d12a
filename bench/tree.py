"""A generated Spack-like store of gcc-built shared libraries with a deep DAG, for
benchmarks that need more files than the test packages have.

    store/pkg000-<hash>/lib/lib0.so.1.0    (SONAME lib0.so.1, linked as lib0.so.1)
    ...
    store/apps-<hash>/bin/app_N            needs lib(N-1): its closure is N libraries

Library k needs k-1 and k//2 (a DAG of depth k), found through an absolute DT_RPATH to
the owning packages' lib/ directories, as Spack writes them. 20 libraries per package.
The libraries are linked in parallel and their NEEDED and RPATH entries added afterwards
with patchelf, which keeps generation under a minute for 2,000 files on 2 cores.
"""

import concurrent.futures
import hashlib
import os
import subprocess

PER_PACKAGE = 20


def package_dir(store, index):
    digest = hashlib.sha256(str(index).encode()).hexdigest()[:7]
    return os.path.join(store, f"pkg{index:03d}-{digest}")


def lib_dir(store, k):
    return os.path.join(package_dir(store, k // PER_PACKAGE), "lib")


def deps(k):
    return sorted({d for d in (k - 1, k // 2) if 0 <= d < k})


def generate(root, count=2000, apps=(500, 1000, 2000), jobs=None):
    """Create the tree under root (once; a complete tree is reused). Returns
    (store, {N: path of app_N})."""
    store = os.path.join(root, "store")
    app_dir = os.path.join(store, "apps-0000000", "bin")
    programs = {n: os.path.join(app_dir, f"app_{n}") for n in apps}
    stamp = os.path.join(root, f"complete-{count}")
    if os.path.exists(stamp):
        return store, programs
    os.makedirs(app_dir, exist_ok=True)
    src = os.path.join(root, "f.c")
    with open(src, "w") as f:
        f.write("int f(void) { return 1; }\n")
    obj = os.path.join(root, "f.o")
    subprocess.run(["gcc", "-c", "-fPIC", "-O2", "-o", obj, src], check=True)

    def link(k):
        directory = lib_dir(store, k)
        os.makedirs(directory, exist_ok=True)
        real = os.path.join(directory, f"lib{k}.so.1.0")
        subprocess.run(["gcc", "-shared", "-o", real, obj, f"-Wl,-soname,lib{k}.so.1"],
                       check=True)
        link_name = os.path.join(directory, f"lib{k}.so.1")
        if not os.path.lexists(link_name):
            os.symlink(f"lib{k}.so.1.0", link_name)
        # Two calls: patchelf 0.14 mixes up the string table when one call does both.
        if deps(k):
            needed = [a for d in deps(k) for a in ("--add-needed", f"lib{d}.so.1")]
            subprocess.run(["patchelf", *needed, real], check=True)
        rpath = ":".join(dict.fromkeys(lib_dir(store, d) for d in deps(k))) or directory
        subprocess.run(["patchelf", "--force-rpath", "--set-rpath", rpath, real], check=True)

    with concurrent.futures.ThreadPoolExecutor(jobs or os.cpu_count()) as pool:
        list(pool.map(link, range(count)))
    main = os.path.join(root, "main.c")
    with open(main, "w") as f:
        f.write("int main(void) { return 0; }\n")
    for n, program in programs.items():
        subprocess.run(["gcc", "-o", program, main], check=True)
        subprocess.run(["patchelf", "--add-needed", f"lib{n - 1}.so.1", program], check=True)
        subprocess.run(["patchelf", "--force-rpath", "--set-rpath", lib_dir(store, n - 1),
                        program], check=True)
    open(stamp, "w").close()
    return store, programs


def prefixes(store):
    """label -> prefix of every package of the generated store."""
    return {name: os.path.join(store, name) for name in sorted(os.listdir(store))}
