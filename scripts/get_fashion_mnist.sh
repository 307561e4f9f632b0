#!/usr/bin/env bash
# Make Fashion-MNIST available: Debian's dataset-fashion-mnist package when apt is usable, else explain.
set -euo pipefail
root="${1:-/usr/share/datasets/fashion-mnist}"
have() { [ -e "$root/$1.gz" ] || [ -e "$root/$1" ]; }
all_present() {
  have train-images-idx3-ubyte && have train-labels-idx1-ubyte && have t10k-images-idx3-ubyte && have t10k-labels-idx1-ubyte
}
if all_present; then
  echo "Fashion-MNIST: found in $root"
  exit 0
fi
if [ "$root" = /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  echo "Fashion-MNIST: installing the Debian package dataset-fashion-mnist"
  if { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1 && all_present; then
    echo "Fashion-MNIST: installed in $root"
    exit 0
  fi
fi
cat >&2 <<MSG
Fashion-MNIST is not in $root and could not be installed with apt.
Get the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz,
t10k-labels-idx1-ubyte.gz) from the Fashion-MNIST project (or 'apt-get install dataset-fashion-mnist' on Debian/Ubuntu),
put them in one folder, and run:  make demo FMNIST_ROOT=/that/folder   (or: mst pretrain ... --data /that/folder)
MSG
exit 1
