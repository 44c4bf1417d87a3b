#!/usr/bin/env bash
# Runs the test suite (`cargo test`) compiled for an ARM target, under qemu-user on this x86
# machine. Not part of CI (slow); see README "Building for ARM and Debian packages".
#
#   cross/test-under-qemu.sh [aarch64|armv7] [--zig] [--no-binfmt] [-- <cargo test args>]
#
#   default   Debian's cross gcc links the tests; the runner is .cargo/config.toml's
#             `qemu-<arch> -L <sysroot>`, plus the termios2 shim (cross/qemu-termios2-shim.c)
#   --zig     cargo-zigbuild test --target <triple>.2.31: the toolchain the shipped binary uses
#             (zig's linker, compiler-rt and libunwind, the glibc 2.31 symbol set)
#
# The integration tests start the daemon binary as a child process. Without binfmt_misc the
# kernel cannot exec an ARM binary ("Exec format error"), so as root this script registers a
# temporary binfmt_misc entry (named enectiva-qemu-<arch>, removed on exit) that runs ARM
# executables through qemu with the sysroot and the shim. Not root, or --no-binfmt: only the
# unit tests (--lib) run.
set -euo pipefail
# shellcheck source=cross/common.sh
source "$(dirname "$0")/common.sh"
cd "$ROOT"

arch=aarch64 zig=0 binfmt=1 extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    aarch64 | arm64 | armv7 | armhf) arch="$(dist_name_of "$1")"; shift ;;
    --zig) zig=1; shift ;;
    --no-binfmt) binfmt=0; shift ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) die "unknown argument '$1'" ;;
  esac
done
triple="$(triple_of "$arch")"
case "$arch" in
  aarch64)
    qemu=qemu-aarch64 sysroot=/usr/aarch64-linux-gnu
    magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
    mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
    ;;
  armv7)
    qemu=qemu-arm sysroot=/usr/arm-linux-gnueabihf
    magic='\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00'
    mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
    ;;
  *) die "test-under-qemu runs aarch64 or armv7, not $arch" ;;
esac
command -v "$qemu" >/dev/null || die "$qemu not found (run cross/setup.sh $arch)"
[ -d "$sysroot" ] || die "no sysroot $sysroot (run cross/setup.sh $arch)"

shim="$(termios2_shim "$arch")"
runner="$qemu -L $sysroot -E LD_PRELOAD=$shim"
# Overrides .cargo/config.toml's runner for this run only (adds the shim).
export "CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$triple")_RUNNER=$runner"

# --- binfmt_misc, so that tests can exec the ARM daemon binary ---------------------------------
entry="enectiva-qemu-$arch"
binfmt_dir=/proc/sys/fs/binfmt_misc
mounted_here=0
cleanup() {
  if [ -e "$binfmt_dir/$entry" ]; then echo -1 >"$binfmt_dir/$entry" || true; fi
  if [ $mounted_here = 1 ]; then umount "$binfmt_dir" || true; fi
}
if [ $binfmt = 1 ] && [ "$(id -u)" -ne 0 ]; then
  echo "warning: not root: no binfmt_misc entry, so only the unit tests (--lib) run" >&2
  binfmt=0
fi
if [ $binfmt = 1 ]; then
  trap cleanup EXIT
  if [ ! -e "$binfmt_dir/register" ]; then
    mount -t binfmt_misc binfmt_misc "$binfmt_dir" || die "cannot mount binfmt_misc (try --no-binfmt)"
    mounted_here=1
  fi
  [ -e "$binfmt_dir/$entry" ] && echo -1 >"$binfmt_dir/$entry"
  wrapper="$(dirname "$shim")/binfmt-$arch.sh"
  printf '#!/bin/sh\nexec %s "$@"\n' "$runner" >"$wrapper"
  chmod 755 "$wrapper"
  # Flags: none. The kernel passes the ARM binary's path as the wrapper's first argument.
  printf ':%s:M::%s:%s:%s:\n' "$entry" "$magic" "$mask" "$wrapper" >"$binfmt_dir/register" \
    || die "cannot register the binfmt_misc entry (try --no-binfmt)"
  say "binfmt_misc: $entry -> $wrapper (removed on exit)"
fi

args=(--locked --target "$triple")
[ $binfmt = 0 ] && args+=(--lib)
start=$SECONDS
if [ $zig = 1 ]; then
  use_zig_venv
  args=(--locked --target "$triple.$GLIBC_FLOOR")
  [ $binfmt = 0 ] && args+=(--lib)
  say "cargo-zigbuild test ${args[*]} ${extra[*]} (runner: $runner)"
  cargo-zigbuild test "${args[@]}" "${extra[@]}"
else
  say "cargo test ${args[*]} ${extra[*]} (runner: $runner)"
  cargo test "${args[@]}" "${extra[@]}"
fi
say "tests under $qemu passed ($((SECONDS - start)) s)"
