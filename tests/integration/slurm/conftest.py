"""The `slurm_cluster` fixture: one real local Slurm cluster per test session (see local_slurm.py).

Skips, with the reason, only when the Slurm or munge binaries are missing (`.ci/install_slurm.sh`
installs them). A daemon that is installed but does not start is a test error that shows its log.
"""

from __future__ import annotations

import os

import pytest

from .local_slurm import LocalSlurm, missing_binaries, short_hostname


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    missing = missing_binaries()
    if missing:
        pytest.skip(
            f"Slurm is not installed (missing {', '.join(missing)}); "
            "run .ci/install_slurm.sh (Debian packages slurmctld slurmd munge slurm-client)"
        )
    cluster = LocalSlurm(root=tmp_path_factory.mktemp("slurm"), node=short_hostname(), cpus=os.cpu_count() or 1)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
