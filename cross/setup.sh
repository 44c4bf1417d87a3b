#!/usr/bin/env bash
# Installs what the cross builds, the qemu checks and the Debian packages need on a Debian 12
# machine (CI's or a developer's). Idempotent: what is already there is only checked.
#
#   cross/setup.sh [aarch64] [armv7] [deb] [all]     (default: all = aarch64 armv7 deb)
#
#   aarch64  rustup target, Debian's aarch64 cross gcc/binutils/libc (linker for `cargo test
#            --target`, objdump, qemu's sysroot), qemu-user, the zig venv
#   armv7    the same for armv7-unknown-linux-gnueabihf
#   deb      cargo-deb (pinned) and dpkg-dev
#
# Runs as root (CI) or as a user with sudo (used only for apt-get).
set -euo pipefail
# shellcheck source=cross/common.sh
source "$(dirname "$0")/common.sh"

want_aarch64=0 want_armv7=0 want_deb=0
[ $# -eq 0 ] && set -- all
for a in "$@"; do
  case "$a" in
    aarch64 | arm64) want_aarch64=1 ;;
    armv7 | armhf) want_armv7=1 ;;
    deb) want_deb=1 ;;
    all) want_aarch64=1 want_armv7=1 want_deb=1 ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) die "unknown argument '$a' (expected aarch64, armv7, deb or all)" ;;
  esac
done

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "not root and no sudo: cannot apt-get install"
  sudo_cmd=(sudo)
fi

# --- Debian packages -------------------------------------------------------------------------
# file: build.sh checks what it built; systemd: deb.sh runs systemd-analyze on the unit.
pkgs=(qemu-user python3-venv file)
targets=()
if [ $want_aarch64 = 1 ]; then
  # libc6-dev-*-cross are only Recommends of the cross gcc: name them (cross.md §1).
  pkgs+=(gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu libc6-dev-arm64-cross)
  targets+=(aarch64-unknown-linux-gnu)
fi
if [ $want_armv7 = 1 ]; then
  pkgs+=(gcc-arm-linux-gnueabihf binutils-arm-linux-gnueabihf libc6-dev-armhf-cross)
  targets+=(armv7-unknown-linux-gnueabihf)
fi
[ $want_deb = 1 ] && pkgs+=(dpkg-dev systemd)

missing=()
for p in "${pkgs[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
  [ "$status" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "apt-get install ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  # No Recommends: qemu-user would pull qemu-user-binfmt, which the scripts do not use (they
  # call qemu-<arch> -L <sysroot> explicitly).
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  say "Debian packages present: ${pkgs[*]}"
fi

# --- Rust targets ----------------------------------------------------------------------------
if [ ${#targets[@]} -gt 0 ]; then
  installed="$(rustup target list --installed)"
  for t in "${targets[@]}"; do
    if grep -qx "$t" <<<"$installed"; then
      say "rust target $t present"
    else
      say "rustup target add $t"
      rustup target add "$t"
    fi
  done
fi

# --- cargo-zigbuild + zig (PyPI), for the glibc $GLIBC_FLOOR builds ---------------------------
if [ $want_aarch64 = 1 ] || [ $want_armv7 = 1 ]; then
  have_zb="$("$ZIG_VENV/bin/pip" show cargo-zigbuild 2>/dev/null | sed -n 's/^Version: //p' || true)"
  have_zig="$("$ZIG_VENV/bin/pip" show ziglang 2>/dev/null | sed -n 's/^Version: //p' || true)"
  if [ "$have_zb" = "$ZIGBUILD_VERSION" ] && [ "$have_zig" = "$ZIGLANG_VERSION" ]; then
    say "zig venv present: $ZIG_VENV (cargo-zigbuild $have_zb, ziglang $have_zig)"
  else
    say "zig venv $ZIG_VENV: cargo-zigbuild==$ZIGBUILD_VERSION ziglang==$ZIGLANG_VERSION"
    # Debian's python3 (python3-venv above), not whatever python3 is first on PATH.
    py=/usr/bin/python3
    [ -x "$py" ] || py="$(command -v python3)" || die "no python3"
    [ -d "$ZIG_VENV" ] || "$py" -m venv "$ZIG_VENV"
    "$ZIG_VENV/bin/pip" install --quiet --disable-pip-version-check \
      "cargo-zigbuild==$ZIGBUILD_VERSION" "ziglang==$ZIGLANG_VERSION"
  fi
  "$ZIG_VENV/bin/cargo-zigbuild" --version >/dev/null || die "cargo-zigbuild in $ZIG_VENV does not run"
fi

# --- cargo-deb -------------------------------------------------------------------------------
if [ $want_deb = 1 ]; then
  have_deb="$(cargo deb --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -1 || true)"
  if [ "$have_deb" = "$CARGO_DEB_VERSION" ]; then
    say "cargo-deb $have_deb present"
  else
    say "cargo install cargo-deb $CARGO_DEB_VERSION (was: ${have_deb:-none})"
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
  fi
fi

say "cross setup done"
