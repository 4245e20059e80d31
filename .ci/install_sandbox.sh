#!/usr/bin/env bash
# Install the system packages the execution sandbox needs: bubblewrap (isolation) and the toolchains of
# the languages it runs (a JDK for Java, g++ for C++, Node.js for JavaScript; Python is always there).
#
# Never fails the caller: when the packages cannot be installed (no root, no apt, no network) it prints
# why and exits 0; the sandbox tests then skip the affected languages / the isolation tests with a reason
# (tests/unit/sandbox/conftest.py looks for the binaries and probes bwrap).
set -uo pipefail

packages=(bubblewrap default-jdk-headless g++ nodejs)
need=(bwrap javac java g++ node)

missing=()
for bin in "${need[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_sandbox: bwrap, javac, java, g++ and node already installed"
  exit 0
fi
echo "install_sandbox: missing ${missing[*]}; installing ${packages[*]}"

skip() {
  echo "install_sandbox: cannot install ${packages[*]}: $* -- the sandbox tests needing them will skip"
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
# The package lists are fresh when install_slurm.sh has just updated them: one update per CI run is enough.
if [ -z "$(find /var/lib/apt/lists -maxdepth 0 -mmin -60 2>/dev/null)" ]; then
  "${sudo[@]}" apt-get update -q || skip "apt-get update failed"
fi
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}" \
  || skip "apt-get install failed"

for bin in "${need[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || echo "install_sandbox: warning: $bin still missing after install"
done
echo "install_sandbox: done"
