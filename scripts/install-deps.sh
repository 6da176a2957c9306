#!/bin/sh
# Installs the Debian packages qevo needs to build, run, test and benchmark, and the
# Fashion-MNIST dataset. Running it again is harmless: it installs only what is missing.
set -eu

PACKAGES="build-essential pkg-config openmpi-bin libopenmpi-dev libopenblas-dev
libjansson-dev libpng-dev zlib1g-dev python3 python3-torch python3-numpy
python3-matplotlib dataset-fashion-mnist slurm-wlm munge clang libclang-rt-14-dev valgrind"

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        missing="$missing $p"
done
if [ -z "$missing" ]; then
    echo "install-deps: all packages present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
fi
echo "install-deps: installing$missing"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
# shellcheck disable=SC2086  # word splitting of the package list is intended
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
