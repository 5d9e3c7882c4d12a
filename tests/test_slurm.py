"""Images launched through a real one-node Slurm (the ``slurm`` fixture): MPI ranks with
the host's Open MPI over PMIx, exit status, cancellation, steps in a row, and ranks that
run a node-local copy made by ``srun --bcast`` or ``sbcast``."""

import os
import signal
import subprocess

import pytest
from conftest import (leftovers, server_of, wait_for_line, wait_no_server,
                      wait_nothing_left, wait_unmounted)


@pytest.fixture(scope="module")
def mpi_image(site, tmp_path_factory):
    """mpi-hello, built against Debian's Open MPI (a Spack external the host provides)."""
    output = tmp_path_factory.mktemp("slurm") / "mpi.app"
    site("appimage", "--entry", "mpi-hello", "-o", str(output), env=site.env)
    return str(output)


def srun(slurm, *args, **kwargs):
    return subprocess.run(["srun", *args], capture_output=True, text=True, env=dict(
        slurm.env, VERBOSE="1"), timeout=300, **kwargs)


def test_mpi_ranks_through_srun_share_one_mount(slurm, mpi_image):
    step = srun(slurm, "--mpi=pmix", "-n", "8", mpi_image)
    assert step.returncode == 0, step.stderr
    assert sorted(step.stdout.splitlines()) == [f"rank {r} of 8 sum 36" for r in range(8)]
    # VERBOSE: one launcher mounted, the seven others joined its mount.
    assert step.stderr.count("mounting ") == 1 and step.stderr.count("joining the mount") == 7
    assert wait_unmounted(mpi_image) and wait_no_server(mpi_image)
    assert wait_nothing_left(mpi_image)


def test_exit_status_passes_through_srun(slurm, probe_image):
    step = srun(slurm, "-n", "2", probe_image, "exit", "3")
    assert step.returncode == 3
    assert step.stdout.count(f"argv: {probe_image} exit 3") == 2


def test_scancel_stops_the_step_and_leaves_nothing(slurm, probe_image):
    step = subprocess.Popen(["srun", "-n", "2", "--job-name=cancel-me", probe_image, "wait"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=slurm.env)
    try:
        wait_for_line(step, "ready")
        wait_for_line(step, "ready")
        # (A plain scancel sends SIGCONT first, which the probe also reports and exits on.)
        subprocess.run(["scancel", "--signal=TERM", "--name=cancel-me"], env=slurm.env,
                       check=True)
        out, _ = step.communicate(timeout=60)
    finally:
        if step.poll() is None:
            step.kill()
            step.wait()
    assert step.returncode != 0
    assert out.count("got signal 15") == 2  # SIGTERM reached both apps
    assert wait_unmounted(probe_image) and wait_no_server(probe_image)
    assert wait_nothing_left(probe_image), leftovers(probe_image)


def test_two_steps_of_one_job(slurm, probe_image):
    script = f"srun -n 2 {probe_image} exit 0 first && srun -n 2 {probe_image} exit 0 second"
    job = subprocess.run(["salloc", "-n", "2", "sh", "-c", script], capture_output=True,
                         text=True, env=slurm.env, timeout=300)
    assert job.returncode == 0, job.stderr
    for step in ("first", "second"):
        assert job.stdout.count(f"argv: {probe_image} exit 0 {step}") == 2
    assert wait_unmounted(probe_image) and wait_no_server(probe_image)


#: How a big job puts the image on node-local storage before its ranks start it.
COPIES = {
    "srun --bcast": lambda image, local, ranks: ["srun", "-n", ranks, f"--bcast={local}",
                                                 image],
    "sbcast": lambda image, local, ranks: ["salloc", "-n", ranks, "sh", "-c",
                                           f'sbcast --preserve "{image}" "{local}" && '
                                           f'exec srun -n {ranks} "{local}" "$@"', "sh"],
}
#: Per mode: the environment that keeps the node's mount or copy until the test ends it
#: (the ranks of this probe do not wait for each other, so a late one would otherwise
#: find the node's mount or copy gone and make its own), and what VERBOSE says when a
#: launcher makes it.
MODES = {"mount": ({"APPIMAGE_IDLE_MS": "600000"}, "mounting "),
         "extract": ({"APPIMAGE_EXTRACT_AND_RUN": "1", "NO_CLEANUP": "1"}, "extracting ")}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("copy", COPIES)
def test_ranks_run_a_node_local_copy(slurm, probe_image, tmp_path, copy, mode):
    """Large jobs copy the executable to each node's local storage first, so thousands of
    nodes do not read one file of the parallel filesystem at once: the ranks run the copy
    (APPIMAGE names it), one of them mounts or extracts it for the node and the others
    use that, the exit status passes through, and nothing of the copy is left."""
    env, made = MODES[mode]
    local = tmp_path / "node-local" / "t.app"
    local.parent.mkdir()
    step = subprocess.run(COPIES[copy](probe_image, str(local), "4") + ["exit", "3"],
                          capture_output=True, text=True, timeout=300,
                          env=dict(slurm.env, VERBOSE="1", **env))
    assert step.returncode == 3, step.stderr
    assert step.stdout.count(f"argv: {local} exit 3\n") == 4, step.stdout
    assert step.stdout.count(f"APPIMAGE={local}\n") == 4, step.stdout
    assert step.stderr.count(made) == 1, step.stderr
    if mode == "mount":
        assert step.stderr.count("joining the mount") == 3, step.stderr
        os.kill(server_of(str(local)), signal.SIGTERM)  # it leaves once unused
    else:  # a run without NO_CLEANUP removes the copy when it ends
        subprocess.run([local, "exit", "0"], env=dict(os.environ, APPIMAGE_EXTRACT_AND_RUN="1"),
                       check=True, capture_output=True)
    assert wait_unmounted(str(local)) and wait_no_server(str(local))
    assert wait_nothing_left(str(local)), leftovers(str(local))
