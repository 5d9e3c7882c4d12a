"""How sites and users load the extension: config:extensions, and pip's entry point."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import EXTENSION, ROOT, externally_managed_python_without_pyelftools


def test_loaded_through_config_extensions(site):
    result = site("commands")
    assert "appimage" in result.stdout.split()
    assert "bundle programs of an environment" in site("help", "--all").stdout
    assert "spack -e sirius appimage --entry sirius.scf" in site("appimage", "--help").stdout


def test_the_clones_root_is_an_extension_path_too(site, tmp_path):
    """Registering the clone (named spack-appimage, as git names it) instead of its
    spack-appimage/ directory is a natural mistake: the root's ``appimage`` link makes it
    load the same extension, instead of breaking every Spack command of that scope."""
    clone = tmp_path / "spack-appimage"
    clone.symlink_to(ROOT)
    config = tmp_path / "config"
    config.mkdir()
    for name in ("repos.yaml", "config.yaml", "packages.yaml"):
        text = open(os.path.join(site.root, "config", name)).read()
        (config / name).write_text(text.split("  extensions:")[0])
    with open(config / "config.yaml", "a") as f:
        f.write(f"  extensions:\n  - {clone}\n")
    env = dict(site.env_vars, SPACK_USER_CONFIG_PATH=str(config))
    result = subprocess.run(["spack", "-e", site.env, "appimage", "--entry", "ai-origin",
                             "--dry-run"], env=env, capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "libpriv.so" in result.stdout


def test_loaded_through_the_pip_entry_point(site, tmp_path):
    """pip install into the Python that runs Spack (here a venv on top of it), and no
    config:extensions: Spack finds the command through the entry point."""
    source = tmp_path / "source"  # pip builds in the source tree: keep the checkout clean
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source)
    for name in ("python", "spack-appimage"):
        shutil.copytree(os.path.join(ROOT, name), source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(source)],
                   check=True, cwd=tmp_path)
    config = tmp_path / "config"
    config.mkdir()
    for name in ("repos.yaml", "config.yaml", "packages.yaml"):
        text = open(os.path.join(site.root, "config", name)).read()
        (config / name).write_text(text.split("  extensions:")[0])
    env = dict(site.env_vars, PATH=f"{venv / 'bin'}:{os.environ['PATH']}",
               SPACK_USER_CONFIG_PATH=str(config))
    result = subprocess.run(
        ["spack", "-e", site.env, "appimage", "--entry", "ai-origin", "--dry-run"],
        env=env, capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "libpriv.so" in result.stdout
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import spack_appimage as s; print(s.get_extension_paths()[0])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert installed.startswith(str(venv)) and os.path.isfile(
        os.path.join(installed, "appimage", "apprun", "apprun.c"))


def test_missing_pyelftools_is_one_line_naming_the_install_command(site, tmp_path):
    """Spack run by a Python without pyelftools (a venv without the system's packages)."""
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = dict(site.env_vars, PATH=f"{venv / 'bin'}:{os.environ['PATH']}")
    result = subprocess.run(["spack", "-e", site.env, "appimage", "--entry", "ai-hello"],
                            env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    python = venv / "bin" / "python3"
    assert (f"==> Error: spack appimage needs pyelftools in the Python that runs Spack "
            f"({python}); install it: {python} -m pip install pyelftools") in result.stderr, \
        result.stderr


def test_missing_pyelftools_in_an_externally_managed_python(site, tmp_path):
    """Spack run by Debian's system Python (SPACK_PYTHON), which refuses pip: the error
    names the distribution's package and the venv recipe, not a pip command that fails."""
    python = externally_managed_python_without_pyelftools()
    env = dict(site.env_vars, SPACK_PYTHON=python)
    result = subprocess.run(["spack", "-e", site.env, "appimage", "--entry", "ai-hello"],
                            env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr == (
        f"==> Error: spack appimage needs pyelftools in the Python that runs Spack "
        f"({python}); install it: apt install python3-pyelftools (or use a virtual "
        "environment: python3 -m venv ~/spack-venv && ~/spack-venv/bin/pip install "
        "pyelftools clingo && export SPACK_PYTHON=~/spack-venv/bin/python3)\n"), result.stderr


#: A Spack older than the extension supports (.ci/run clones it from the git sources of
#: the Spack on PATH).
OLD_SPACK = os.environ.get("SPACK_APPIMAGE_OLD_SPACK") or os.path.expanduser("~/spack-0.22")


def test_a_spack_older_than_0_23_is_refused_in_one_line(tmp_path):
    """Spack 0.22 with the extension in config:extensions: the command refuses in one
    line, and the rest of Spack, help included, is untouched."""
    if not os.path.isfile(os.path.join(OLD_SPACK, "bin", "spack")):
        pytest.fail(f"no Spack 0.22 at {OLD_SPACK}: git clone --branch v0.22.5 SPACK_GIT "
                    f"{OLD_SPACK} (.ci/run does), or set SPACK_APPIMAGE_OLD_SPACK",
                    pytrace=False)
    config = tmp_path / "config"
    config.mkdir()
    (config / "config.yaml").write_text(f"config:\n  extensions:\n  - {EXTENSION}\n")
    env = dict(os.environ, SPACK_USER_CONFIG_PATH=str(config),
               SPACK_USER_CACHE_PATH=str(tmp_path / "cache"))
    spack_ = os.path.join(OLD_SPACK, "bin", "spack")
    refused = subprocess.run([spack_, "appimage", "--entry", "x"], env=env,
                             capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr == \
        "==> Error: spack appimage needs Spack >= 0.23 (this is 0.22.x)\n", refused.stderr
    helped = subprocess.run([spack_, "help", "--all"], env=env, capture_output=True,
                            text=True, cwd=tmp_path)
    assert helped.returncode == 0 and "appimage" in helped.stdout, helped.stderr
