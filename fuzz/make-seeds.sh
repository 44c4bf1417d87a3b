#!/bin/sh
# Builds the seed corpus of the `decode` target from the libmbus fixtures: each telegram as it
# is on the wire, and its CI + user data (the form the target also feeds to
# decode_user_data). Run from anywhere; writes fuzz/seeds/decode/.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/seeds/decode"
mkdir -p "$out"
for f in "$here"/../tests/data/mbus/libmbus/*/*.hex; do
    name=$(basename "$(dirname "$f")")-$(basename "$f" .hex)
    # Skip files that are not clean hex (manual_frame1 starts with the token "D").
    hex=$(tr -s ' \r\n\t' ' ' < "$f")
    printf '%s' "$hex" | xxd -r -p > "$out/$name.bin" 2>/dev/null || continue
    # CI + user data: drop 68 L L 68 C A, checksum and stop.
    size=$(wc -c < "$out/$name.bin")
    if [ "$size" -gt 9 ]; then
        tail -c +7 "$out/$name.bin" | head -c $((size - 8)) > "$out/$name.ud.bin"
    fi
done
