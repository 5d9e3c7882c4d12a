"""The README's first command: ``demo/run`` on this machine, and what it says when a
prerequisite is missing."""

import os
import subprocess
import sys

from conftest import ROOT, externally_managed_python_without_pyelftools

DEMO = os.path.join(ROOT, "demo", "run")


def path_without(directory, *names: str) -> str:
    """A PATH of one directory linking every program of the current PATH but ``names``."""
    os.makedirs(directory)
    for entry in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(entry):
            continue
        for name in os.listdir(entry):
            link = os.path.join(directory, name)
            if name not in names and not os.path.lexists(link):
                os.symlink(os.path.join(entry, name), link)
    return directory


def demo(*args, path=None, cwd=None):
    env = dict(os.environ, PATH=path or os.environ["PATH"])
    env.pop("SPACK_ENV", None)
    return subprocess.run([DEMO, *args], env=env, capture_output=True, text=True, cwd=cwd)


def test_demo_builds_and_runs_the_image_with_the_store_away(tmp_path):
    result = demo(str(tmp_path / "work"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "==> running demo.app with the store moved away" in out
    assert "hello: mid-1.0(leaf-1.0) side-2.0 greeting=bonjour args=from,the,image" in out
    assert "cxx: libstdc++ ok args=through,a,symlink,named,like,the,entry" in out
    assert "args=extracted,instead,of,mounted" in out
    assert "  ai-hello@1.0/" in out and "gcc@12.2.0 (in the image)" in out
    assert os.path.isdir(tmp_path / "work" / "store")  # put back


def test_a_missing_tool_is_one_line_naming_the_install_command(tmp_path):
    path = path_without(str(tmp_path / "bin"), "mksquashfs")
    result = demo("--no-install", str(tmp_path / "work"), path=path, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "demo/run: missing squashfs-tools: apt-get install squashfs-tools"], result.stderr
    assert not os.path.exists(tmp_path / "work")


def test_missing_pyelftools_is_one_line_naming_the_install_command(tmp_path):
    """Spack run by a Python without pyelftools (a venv without the system's packages)."""
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    path = f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"
    result = demo("--no-install", path=path, cwd=tmp_path)
    assert result.returncode == 1
    python = venv / "bin" / "python3"
    assert result.stderr.splitlines() == [
        f"demo/run: pyelftools is missing: {python} -m pip install pyelftools"], result.stderr


def test_pyelftools_advice_for_an_externally_managed_python(tmp_path):
    """Spack run by Debian's system Python (SPACK_PYTHON), which refuses pip: the advice
    is the distribution's package, or a venv."""
    python = externally_managed_python_without_pyelftools()
    env = dict(os.environ, SPACK_PYTHON=python)
    env.pop("SPACK_ENV", None)
    result = subprocess.run([DEMO, "--no-install"], env=env, capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "demo/run: pyelftools is missing: apt install python3-pyelftools (or a venv: "
        "python3 -m venv ~/spack-venv && ~/spack-venv/bin/pip install pyelftools clingo "
        "&& export SPACK_PYTHON=~/spack-venv/bin/python3)"], result.stderr
