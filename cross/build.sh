#!/usr/bin/env bash
# Builds the release binaries for the gateways and copies them to dist/<arch>/enectiva-collector.
#
#   cross/build.sh [aarch64|armv7|amd64|all]...      (default: all)
#
# Every binary links against glibc 2.31 (cargo zigbuild --target <triple>.2.31), so it runs on
# Debian / Raspberry Pi OS bullseye (2.31) and bookworm (2.36) alike; Debian 12's own cross gcc
# would need 2.34. Profile `release-small` (Cargo.toml). Checks each binary's architecture and
# glibc floor, fails if either is wrong, and prints the sizes. Needs cross/setup.sh first.
set -euo pipefail
# shellcheck source=cross/common.sh
source "$(dirname "$0")/common.sh"
cd "$ROOT"

[ $# -eq 0 ] && set -- all
arches=()
for a in "$@"; do
  case "$a" in
    all) arches+=(aarch64 armv7 amd64) ;;
    -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
    *) arches+=("$(dist_name_of "$a")") ;;
  esac
done

use_zig_venv
target_dir="$(target_dir)"

# What `file` must say about each binary.
expect_file() {
  case "$1" in
    aarch64) echo 'ELF 64-bit LSB pie executable, ARM aarch64' ;;
    armv7) echo 'ELF 32-bit LSB pie executable, ARM, EABI5' ;;
    amd64) echo 'ELF 64-bit LSB pie executable, x86-64' ;;
  esac
}

summary=()
for arch in "${arches[@]}"; do
  triple="$(triple_of "$arch")"
  say "$arch: cargo zigbuild --locked --profile $PROFILE --target $triple.$GLIBC_FLOOR"
  start=$SECONDS
  cargo zigbuild --locked --profile "$PROFILE" --target "$triple.$GLIBC_FLOOR" --bin enectiva-collector
  built="$target_dir/$triple/$PROFILE/enectiva-collector"
  [ -x "$built" ] || die "$arch: cargo zigbuild finished but $built is missing"

  out="$DIST/$arch/enectiva-collector"
  mkdir -p "$DIST/$arch"
  cp "$built" "$out"

  kind="$(file -b "$out")"
  [[ "$kind" == "$(expect_file "$arch")"* ]] || die "$arch: $out is not what it should be: $kind"
  [[ "$kind" == *", stripped"* ]] || die "$arch: $out is not stripped: $kind"
  glibc="$(glibc_needed "$(objdump_of "$arch")" "$out")"
  [ -n "$glibc" ] || die "$arch: no GLIBC_ symbol versions found in $out (is $(objdump_of "$arch") installed?)"
  version_le "$glibc" "$GLIBC_FLOOR" || die "$arch: $out needs GLIBC_$glibc, above the $GLIBC_FLOOR floor"

  size="$(stat -c %s "$out")"
  summary+=("$(printf '%-8s %10s bytes  needs GLIBC_%-5s  %s  (%ss)' "$arch" "$size" "$glibc" "${out#"$ROOT"/}" $((SECONDS - start)))")
done

say "binaries (stripped, profile $PROFILE)"
printf '%s\n' "${summary[@]}"
