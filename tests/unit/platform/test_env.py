"""Rank, world size, local rank and rendezvous address from torchrun's or Slurm's environment."""

import os
import shutil
import subprocess

import pytest

from megatron_qwen.platform.env import expand_hostlist, first_host, read_dist_env


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("node1", ["node1"]),
        ("gpu[003-005,009],login1", ["gpu003", "gpu004", "gpu005", "gpu009", "login1"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("n[08-10]", ["n08", "n09", "n10"]),
        ("rack[1-2]-node[01-02]", ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"]),
        ("a[1],b[2-3]-ib", ["a1", "b2-ib", "b3-ib"]),
        ("h100-dgx-[12-13]", ["h100-dgx-12", "h100-dgx-13"]),
    ],
)
def test_expand_hostlist(nodelist, hosts):
    assert expand_hostlist(nodelist) == hosts
    assert first_host(nodelist) == hosts[0]


@pytest.mark.parametrize("bad", ["", "n[1-2", "n1-2]", "n[a-b]", "n[5-3]"])
def test_bad_hostlists_name_the_problem(bad):
    with pytest.raises(ValueError, match="hostlist|NODELIST"):
        expand_hostlist(bad)


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="Slurm client (scontrol) not installed")
def test_expansion_matches_scontrol(tmp_path):
    # `scontrol show hostnames` expands locally but still wants a slurm.conf to read.
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=t\nSlurmctldHost=localhost\nNodeName=localhost\nPartitionName=p Nodes=localhost\n")
    nodelist = "gpu[003-005,009],login1,rack[1-2]-n[08-10]"
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                         env={**os.environ, "SLURM_CONF": str(conf)})
    if out.returncode != 0:
        pytest.skip(f"scontrol cannot run without a slurm.conf here: {out.stderr.strip()}")
    assert expand_hostlist(nodelist) == out.stdout.split()


def test_slurm_environment():
    env = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "16",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[007-008]",
        "SLURM_JOB_ID": "4242",
    }
    dist = read_dist_env(env)
    assert (dist.rank, dist.world_size, dist.local_rank, dist.master_addr, dist.source) == (
        5, 16, 1, "gpu007", "slurm",
    )
    # Every task derives the same port from the job id; an exported MASTER_PORT wins.
    assert dist.master_port == read_dist_env({**env, "SLURM_PROCID": "0"}).master_port
    assert read_dist_env({**env, "MASTER_PORT": "31337"}).master_port == 31337


def test_torchrun_wins_over_slurm():
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29555",
           "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    dist = read_dist_env(env)
    assert (dist.rank, dist.world_size, dist.master_addr, dist.master_port, dist.source) == (
        1, 2, "10.0.0.1", 29555, "torchrun",
    )


def test_single_process():
    assert read_dist_env({}).world_size == 1
