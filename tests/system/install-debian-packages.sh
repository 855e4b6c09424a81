#!/usr/bin/env bash
# The Debian packages the integration tests run for real. Installs what is missing (as root, or with sudo);
# does nothing when everything is there. Called by `make test`.
set -euo pipefail
# With arguments, only those (`make serve` and `make bench` need PostgreSQL alone: the Prefect server's database).
if [ $# -gt 0 ]; then packages=("$@"); else packages=(postgresql chromium chromium-driver); fi
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
  echo "missing Debian packages: ${missing[*]} (install them as root: apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
