# Shared by the cross/ scripts (sourced, not run): paths, target names and small helpers.
# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIST="$ROOT/dist"
# The venv with cargo-zigbuild and zig (PyPI), made by cross/setup.sh. Outside target/ so a
# `cargo clean` keeps it; ignored by git.
ZIG_VENV="${ENECTIVA_ZIG_VENV:-$ROOT/.venv-zig}"
# Pinned: the versions cross.md and this directory were checked with.
ZIGBUILD_VERSION="0.24.1"
ZIGLANG_VERSION="0.17.1"
CARGO_DEB_VERSION="3.8.0"
# The oldest glibc the gateway binaries link against: Debian / Raspberry Pi OS bullseye.
GLIBC_FLOOR="2.31"
# The profile cross/build.sh uses (Cargo.toml).
PROFILE="release-small"

die() { echo "error: $*" >&2; exit 1; }
say() { echo "== $*"; }

# Rust target triple, Debian architecture and GNU triple for each name the scripts accept.
triple_of() {
  case "$1" in
    aarch64 | arm64) echo aarch64-unknown-linux-gnu ;;
    armv7 | armhf) echo armv7-unknown-linux-gnueabihf ;;
    amd64 | x86_64) echo x86_64-unknown-linux-gnu ;;
    *) die "unknown architecture '$1' (expected aarch64, armv7 or amd64)" ;;
  esac
}
deb_arch_of() {
  case "$1" in
    aarch64 | arm64) echo arm64 ;;
    armv7 | armhf) echo armhf ;;
    amd64 | x86_64) echo amd64 ;;
    *) die "unknown architecture '$1' (expected arm64, armhf or amd64)" ;;
  esac
}
# dist/<arch>/ uses the names build.sh is called with.
dist_name_of() {
  case "$1" in
    aarch64 | arm64) echo aarch64 ;;
    armv7 | armhf) echo armv7 ;;
    amd64 | x86_64) echo amd64 ;;
    *) die "unknown architecture '$1'" ;;
  esac
}
# objdump that reads the target's ELF (binutils-<gnu triple>); the host's for amd64.
objdump_of() {
  case "$1" in
    aarch64 | arm64) echo aarch64-linux-gnu-objdump ;;
    armv7 | armhf) echo arm-linux-gnueabihf-objdump ;;
    amd64 | x86_64) echo objdump ;;
  esac
}

# Highest GLIBC_x.y symbol version a dynamic binary needs ("" for a static one).
glibc_needed() {
  local objdump="$1" bin="$2"
  "$objdump" -T "$bin" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 | sed 's/^GLIBC_//' || true
}

# True if version $1 <= version $2.
version_le() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1)" = "$1" ]; }

use_zig_venv() {
  [ -x "$ZIG_VENV/bin/cargo-zigbuild" ] || die "no cargo-zigbuild in $ZIG_VENV: run cross/setup.sh first"
  export PATH="$ZIG_VENV/bin:$PATH"
}

# cargo's target directory (honours CARGO_TARGET_DIR and build.target-dir).
target_dir() {
  local d
  d="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)"
  [ -n "$d" ] || die "cargo metadata did not name the target directory"
  echo "$d"
}

# Builds cross/qemu-termios2-shim.c for an ARM arch with Debian's cross gcc and prints the path
# of the .so (see the comment in the .c file for why qemu-user needs it).
termios2_shim() {
  local arch="$1" cc out
  case "$arch" in
    aarch64) cc=aarch64-linux-gnu-gcc ;;
    armv7) cc=arm-linux-gnueabihf-gcc ;;
    *) die "no termios2 shim for $arch" ;;
  esac
  command -v "$cc" >/dev/null || die "$cc not found (run cross/setup.sh $arch)"
  out="$(target_dir)/qemu-shim/$arch/libtermios2-shim.so"
  mkdir -p "$(dirname "$out")"
  if [ ! -f "$out" ] || [ "$ROOT/cross/qemu-termios2-shim.c" -nt "$out" ]; then
    "$cc" -shared -fPIC -O2 -Wall -Wextra -Werror -o "$out" "$ROOT/cross/qemu-termios2-shim.c" >&2 \
      || die "could not build the termios2 shim for $arch"
  fi
  echo "$out"
}
