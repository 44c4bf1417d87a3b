#!/usr/bin/env bash
# Packages cross/build.sh's binaries as Debian packages in dist/ and checks each one.
#
#   cross/deb.sh [amd64|arm64|armhf|all]...          (default: all; aarch64/armv7 also accepted)
#
# cargo deb --no-build --no-strip over target/<triple>/release-small/enectiva-collector, which
# must be the very binary cross/build.sh checked and copied to dist/<arch>/ (else: rerun it).
# Package layout and maintainer scripts: [package.metadata.deb] in Cargo.toml, cross/debian/.
# Each .deb is then checked: the paths it holds (and that it holds no config.toml), Depends
# (the glibc 2.31 floor), the binary byte for byte, the maintainer scripts, `systemd-analyze
# verify` on the unit (pointed at a runnable x86 binary) and `systemd-analyze security
# --offline=yes` (exposure must stay <= 2.0).
set -euo pipefail
# shellcheck source=cross/common.sh
source "$(dirname "$0")/common.sh"
cd "$ROOT"

[ $# -eq 0 ] && set -- all
arches=()
for a in "$@"; do
  case "$a" in
    all) arches+=(amd64 arm64 armhf) ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) arches+=("$(deb_arch_of "$a")") ;;
  esac
done
command -v cargo-deb >/dev/null || die "cargo-deb not found (run cross/setup.sh deb)"
command -v systemd-analyze >/dev/null || die "systemd-analyze not found (apt-get install systemd)"
target_dir="$(target_dir)"
version="$(cargo metadata --format-version 1 --no-deps | grep -o '"version":"[^"]*"' | head -1 | cut -d'"' -f4)"

# What every package must hold, and must not.
expected_paths=(
  ./usr/bin/enectiva-collector
  ./usr/lib/systemd/system/enectiva-collector.service
  ./usr/share/doc/enectiva-collector/example.toml
  ./usr/share/doc/enectiva-collector/README.md
  ./usr/share/doc/enectiva-collector/copyright
  ./etc/enectiva-collector/config.toml.example
)
for p in config/profiles/*.toml; do expected_paths+=("./usr/share/enectiva-collector/profiles/${p##*/}"); done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
summary=()

for deb_arch in "${arches[@]}"; do
  arch="$(dist_name_of "$deb_arch")"
  triple="$(triple_of "$arch")"
  bin="$DIST/$arch/enectiva-collector"
  built="$target_dir/$triple/$PROFILE/enectiva-collector"
  [ -x "$bin" ] || die "$deb_arch: no $bin (run cross/build.sh $arch first)"
  cmp -s "$bin" "$built" || die "$deb_arch: $built is not the binary cross/build.sh checked ($bin): rerun cross/build.sh $arch"

  say "$deb_arch: cargo deb --target $triple --profile $PROFILE --no-build --no-strip"
  deb="$DIST/enectiva-collector_${version}-1_${deb_arch}.deb"
  rm -f "$deb"
  cargo deb --target "$triple" --profile "$PROFILE" --no-build --no-strip -o "$DIST/" >/dev/null
  [ -f "$deb" ] || die "$deb_arch: cargo deb did not write $deb"

  say "$deb_arch: contents"
  dpkg-deb -c "$deb" | awk '{print $1, $3, $6}' | grep -v '/$' | tee "$work/contents"
  for p in "${expected_paths[@]}"; do
    grep -q " $p\$" "$work/contents" || die "$deb_arch: $deb lacks $p"
  done
  ! grep -q ' ./etc/enectiva-collector/config.toml$' "$work/contents" \
    || die "$deb_arch: $deb ships /etc/enectiva-collector/config.toml: the service would start unconfigured"

  say "$deb_arch: control"
  dpkg-deb -f "$deb" Package Version Architecture Depends Installed-Size
  [ "$(dpkg-deb -f "$deb" Architecture)" = "$deb_arch" ] || die "$deb_arch: wrong Architecture"
  depends="$(dpkg-deb -f "$deb" Depends)"
  [[ "$depends" =~ ^libc6(:$deb_arch)?\ \(\>=\ $GLIBC_FLOOR\)$ ]] \
    || die "$deb_arch: Depends is '$depends', expected 'libc6 (>= $GLIBC_FLOOR)'"
  rm -rf "$work/ctl" "$work/root"
  dpkg-deb -e "$deb" "$work/ctl"
  for s in postinst prerm postrm; do
    [ -x "$work/ctl/$s" ] || die "$deb_arch: no $s maintainer script"
    sh -n "$work/ctl/$s" || die "$deb_arch: $s does not parse"
  done
  grep -qx /etc/enectiva-collector/config.toml.example "$work/ctl/conffiles" \
    || die "$deb_arch: config.toml.example is not a conffile"
  # Commands only (comments and the operator hint it echoes mention `systemctl enable --now`).
  ! grep -Ev '^[[:space:]]*(#|echo )' "$work/ctl/postinst" \
    | grep -Eq 'systemctl (enable|start|restart|reload)|deb-systemd-(helper enable|invoke)' \
    || die "$deb_arch: postinst enables or starts the service"

  dpkg-deb -x "$deb" "$work/root"
  cmp -s "$work/root/usr/bin/enectiva-collector" "$bin" || die "$deb_arch: the packaged binary is not $bin"
  glibc="$(glibc_needed "$(objdump_of "$arch")" "$work/root/usr/bin/enectiva-collector")"
  version_le "$glibc" "$GLIBC_FLOOR" || die "$deb_arch: packaged binary needs GLIBC_$glibc"

  # verify needs every Exec*= binary to exist and be executable here: point the unit's copy at
  # an x86 build (this package's own binary for amd64, else dist/amd64, else a host build such
  # as the debug binary `cargo test` leaves, which is what CI has).
  x86=""
  [ "$deb_arch" = amd64 ] && x86="$work/root/usr/bin/enectiva-collector"
  for c in "$DIST/amd64/enectiva-collector" "$target_dir/release/enectiva-collector" \
    "$target_dir/debug/enectiva-collector"; do
    [ -z "$x86" ] && [ -x "$c" ] && x86="$c"
  done
  [ -n "$x86" ] || die "$deb_arch: systemd-analyze verify needs an x86 build: run cross/build.sh amd64 or cargo build"
  mkdir -p "$work/verify"
  sed "s#/usr/bin/enectiva-collector#$x86#g" "$work/root/usr/lib/systemd/system/enectiva-collector.service" \
    >"$work/verify/enectiva-collector.service"
  say "$deb_arch: systemd-analyze verify (ExecStart -> $x86)"
  systemd-analyze verify "$work/verify/enectiva-collector.service" \
    || die "$deb_arch: systemd-analyze verify failed"
  say "$deb_arch: systemd-analyze security --offline=yes"
  # --threshold is exposure x 10: fail above 2.0.
  systemd-analyze security --offline=yes --threshold=20 --root="$work/root" enectiva-collector.service \
    >"$work/security" 2>&1 || { cat "$work/security"; die "$deb_arch: exposure above 2.0"; }
  exposure="$(grep -o 'Overall exposure level for [^:]*: .*' "$work/security")"
  echo "$exposure"

  summary+=("$(printf '%-6s %9s bytes  binary %8s bytes  GLIBC_%s  Depends: %s  %s' \
    "$deb_arch" "$(stat -c %s "$deb")" "$(stat -c %s "$bin")" "$glibc" "$depends" "${exposure##*: }")")
done

say "packages in ${DIST#"$ROOT"/}/"
printf '%s\n' "${summary[@]}"
