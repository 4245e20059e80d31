#!/usr/bin/env bash
# Install a local Slurm (controller, node daemon, client tools) and munge for the launch tests.
#
# Idempotent: does nothing when the binaries are already there. Never fails the caller: when the
# packages cannot be installed (no root, no apt, no network) it prints why and exits 0, and the
# Slurm tests skip with that reason (tests/integration/slurm/conftest.py looks for the binaries).
set -uo pipefail

need=(slurmctld slurmd munged sbatch scontrol squeue scancel)
packages=(slurmctld slurmd munge slurm-client)

missing=()
for bin in "${need[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("$bin")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_slurm: Slurm and munge already installed ($(dpkg-query -W -f='${Version}' slurm-client 2>/dev/null || echo "version unknown"))"
  exit 0
fi
echo "install_slurm: missing ${missing[*]}; installing ${packages[*]}"

skip() {
  echo "install_slurm: cannot install Slurm: $* -- the Slurm tests will skip"
  exit 0
}

command -v apt-get >/dev/null 2>&1 || skip "apt-get not found (not a Debian/Ubuntu machine)"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
  else
    skip "not root and no passwordless sudo"
  fi
fi

export DEBIAN_FRONTEND=noninteractive
# Package installs must not start the system services: the test fixture runs its own daemons.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null && "${sudo[@]}" chmod +x "$policy" && created_policy=1
fi
cleanup() { [ "$created_policy" -eq 1 ] && "${sudo[@]}" rm -f "$policy"; }
trap cleanup EXIT

# One `apt-get update`, only when the package lists do not know the packages yet.
if ! apt-cache show slurmctld >/dev/null 2>&1; then
  "${sudo[@]}" apt-get update -q || skip "apt-get update failed"
fi
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}" \
  || skip "apt-get install ${packages[*]} failed"

for bin in "${need[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || skip "$bin still missing after install"
done
echo "install_slurm: installed slurm $(dpkg-query -W -f='${Version}' slurm-client)"
