#!/usr/bin/env bash
# Installs the Debian packages named on the command line that are not installed yet
# (chromium for the browser tests, bubblewrap for the agents' shell sandbox).
# A second run finds them and does nothing. Needs root, or sudo without a password.
set -euo pipefail
missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
    echo "ember needs the Debian packages ${missing[*]}, and this machine has no apt-get: install them by hand" >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo -n"
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
