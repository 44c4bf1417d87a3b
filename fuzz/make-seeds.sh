#!/bin/sh
# Builds the seed corpora of the fuzz targets; run from anywhere, writes fuzz/seeds/<target>/.
#
# decode: the libmbus fixtures, each telegram as it is on the wire and its CI + user data (the
#         form the target also feeds to decode_user_data).
# config: config/example.toml and every bad config of tests/data/config/bad/ (each opens with
#         the `# expect:` line the integration test reads; harmless TOML comments here).
# modbus: a few hand-made inputs in the target's layout (see fuzz_targets/modbus.rs): an
#         SDM630-like meter read in two merged requests, an EM24-like meter whose merged
#         request is refused with exception 02, a short answer, every type in every order.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo="$here/.."

out="$here/seeds/decode"
mkdir -p "$out"
for f in "$repo"/tests/data/mbus/libmbus/*/*.hex; do
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

out="$here/seeds/config"
mkdir -p "$out"
cp "$repo/config/example.toml" "$out/example.toml"
for f in "$repo"/tests/data/config/bad/*.toml; do
    cp "$f" "$out/bad-$(basename "$f")"
done

out="$here/seeds/modbus"
mkdir -p "$out"
seed() { printf '%s' "$2" | tr -d ' ' | xxd -r -p > "$out/$1.bin"; }
# Layout: channels, max_registers (<200, or C8 + u16), max_gap (<200: mod 32, or C8 + u16),
# per channel: c (bit 0 input, bits 1-3 type u16 i16 u32 i32 u64 i64 f32 f64, bits 4-5 order
# ABCD CDAB BADC DCBA, bits 6-7 address: +u8%16 / u8 / FF00|u8 / u16) + address bytes +
# rounding byte (<16 decimals, >=F0 + scale and offset as f64 bits, else none); then the
# number of memory words and the words; then one script byte per request (<A0 exact,
# A0-C7 + i8 wrong count, C8-DB exception 02, DC-EF + code, F0-F7 timeout, else garbled).
seed sdm630 "0B 50 C8 0050 \
 4D 00 20  4D 02 20  4D 04 20  4D 06 20  4D 08 20  4D 0A 20 \
 4D 34 20  4D 46 20  4D 48 20  4D 4A 20  CD 0156 20 \
 08 4366 199A 4248 0000 C2F6 E979 3DCC CCCD \
 00 00"
seed em24-exception-02 "04 7D C8 0040 \
 47 00 20  47 42 20  47 5C 20  40 10 20 \
 04 0000 0001 FFFF FFFE \
 00 C8 00 00 00 00 00 00 00"
seed wrong-count "02 7D 08  4D 00 20  4D 06 05  04 4366 199A 0102 0304  A0 FF  A0 01  DC 04  F0"
seed all-types-all-orders "0F 7D 08 \
 40 00 03  02 01 03  14 02 03  16 02 03  28 04 03  2A 04 03  3C 04 03  0E 04 03 \
 1E 02 03  2C 04 03  38 04 03  2D 04 F0 3FB999999999999A C044000000000000 \
 30 00 05  22 00 0F  30 00 10 \
 10 0102 0304 0506 0708 FFFF 7FFF 8000 0000 7F80 0000 7FC0 0000 FFF0 0000 0000 0001 \
 00 00 00"
seed rtu-bad-crc "01 04 04 4366 199A 0000  01 04 04 43 66 19 9A 00 00"
seed top-of-address-space "03 7D 08  88 FC 20  80 FF 20  C9 FFFE 20  02 1234 5678  00 00 00"
