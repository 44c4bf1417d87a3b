#!/usr/bin/env bash
# Smoke test of a gateway binary from cross/build.sh, run under qemu-user on this x86 machine:
#   --version; `-c config/example.toml check` (must exit 0); `demo --seconds 10` (must exit 0 and
#   say "every channel was delivered": simulated Modbus TCP, Modbus RTU and M-Bus meters on
#   loopback sockets and pseudo-terminals, the SQLite queue, the stand-in Enectiva API).
#
#   cross/qemu-check.sh [aarch64|armv7|amd64|all]... [--bin PATH] [--no-shim]
#       default aarch64; all = aarch64 armv7; amd64 runs natively (no qemu)
#
# qemu is called explicitly with the Debian cross sysroot (-L), so no binfmt_misc or root is
# needed. qemu-user lacks the termios2 ioctls that serialport uses to set a baud rate, so
# cross/qemu-termios2-shim.c is preloaded into the ARM process to answer them with the classic
# ones; --no-shim shows the failure ("Function not implemented" on every serial port).
set -euo pipefail
# shellcheck source=cross/common.sh
source "$(dirname "$0")/common.sh"
cd "$ROOT"

arches=() bin_override="" shim=1
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin_override="${2:?--bin needs a path}"; shift 2 ;;
    --no-shim) shim=0; shift ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    all) arches+=(aarch64 armv7); shift ;;
    *) arches+=("$(dist_name_of "$1")"); shift ;;
  esac
done
[ ${#arches[@]} -eq 0 ] && arches=(aarch64)
[ -n "$bin_override" ] && [ ${#arches[@]} -ne 1 ] && die "--bin goes with exactly one architecture"

out="$(mktemp)"
trap 'rm -f "$out"' EXIT

for arch in "${arches[@]}"; do
  bin="${bin_override:-$DIST/$arch/enectiva-collector}"
  [ -x "$bin" ] || die "$arch: no binary at $bin (run cross/build.sh $arch first)"
  case "$arch" in
    aarch64) run=(qemu-aarch64 -L /usr/aarch64-linux-gnu) ;;
    armv7) run=(qemu-arm -L /usr/arm-linux-gnueabihf) ;;
    amd64) run=() ;;
  esac
  if [ "$arch" != amd64 ]; then
    command -v "${run[0]}" >/dev/null || die "${run[0]} not found (run cross/setup.sh $arch)"
    [ -d "${run[2]}" ] || die "no sysroot ${run[2]} (run cross/setup.sh $arch)"
    [ $shim = 1 ] && run+=(-E "LD_PRELOAD=$(termios2_shim "$arch")")
  fi
  run+=("$bin")
  say "$arch: $(file -b "$bin" | cut -d, -f1-3)"

  say "$arch: ${run[*]} --version"
  "${run[@]}" --version

  say "$arch: check config/example.toml"
  rc=0
  "${run[@]}" -c config/example.toml check >"$out" 2>&1 || rc=$?
  head -3 "$out"
  [ $rc -eq 0 ] || { cat "$out"; die "$arch: check exited $rc"; }

  say "$arch: demo --seconds 10"
  rc=0
  start=$SECONDS
  # Bounded: a hang fails the check instead of the whole CI run.
  timeout --kill-after=10 120 "${run[@]}" demo --seconds 10 >"$out" 2>&1 || rc=$?
  if [ $rc -ne 0 ] || ! grep -q 'every channel was delivered' "$out"; then
    cat "$out"
    die "$arch: demo exited $rc or did not deliver every channel"
  fi
  grep -E '^summary:' "$out" || true
  tail -1 "$out"
  say "$arch: ok (demo took $((SECONDS - start)) s)"
done
