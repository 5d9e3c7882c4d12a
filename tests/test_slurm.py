"""Images launched through a real one-node Slurm (the ``slurm`` fixture): MPI ranks with
the host's Open MPI over PMIx, exit status, cancellation, and steps in a row."""

import subprocess

import pytest
from conftest import (leftovers, wait_for_line, wait_no_server, wait_nothing_left,
                      wait_unmounted)


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
