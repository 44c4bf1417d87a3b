//! Register decoder: turns the 16-bit words of one Modbus value into a number, given its data
//! type and word order (SPEC §3 "Numbers", `type`/`order`), flags "not available" sentinels
//! (SPEC §6.1), and lists every plausible reading of a few raw words for a `probe` command.
//!
//! Pure: no IO, no clock, no logging, no unit conversion or rounding (that is `units`' job), and
//! no panics on any words. Decoding fails only on a wrong number of words, never on content: a
//! sentinel or a NaN is still a decoded value, marked so that the caller (which knows the
//! channel's kind) decides whether to dead-letter it.

use std::fmt;

use super::{DataType, WordOrder};
use crate::units::f32_shortest;

/// One decoded value.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The number. `u64`/`i64` beyond ±2^53 are rounded to the nearest f64: conversion, scale,
    /// the queue and the wire all carry f64, and an energy counter in Wh or 0.01 kWh reaches
    /// 2^53 only after ~10^13 kWh. `f32` is its shortest round-trip decimal, so 230.1f32 is
    /// exactly 230.1.
    pub value: f64,
    /// Why the value is probably not a measurement (all-ones, signed maximum, NaN, infinity),
    /// e.g. `0xFFFFFFFF (all ones: not available)`; `None` for an ordinary value.
    pub sentinel: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("expected {expected} registers, got {got}")]
    WrongLength { expected: usize, got: usize },
}

/// Decodes `words` (as received: big-endian registers, in address order) as one `data_type`
/// value stored in `order`. `words` must hold exactly `data_type.words()` registers.
pub fn decode(
    words: &[u16],
    data_type: DataType,
    order: WordOrder,
) -> Result<Decoded, DecodeError> {
    let expected = usize::from(data_type.words());
    if words.len() != expected {
        return Err(DecodeError::WrongLength {
            expected,
            got: words.len(),
        });
    }
    Ok(decode_raw(&ordered_bytes(words, order), data_type).to_decoded())
}

/// The value's bytes, most significant first, for any number of words.
///
/// Wire bytes are the words' big-endian bytes in address order. `ABCD` keeps them; `CDAB`
/// reverses the word order, each word staying big-endian; `BADC` swaps the two bytes of each
/// word; `DCBA` reverses all bytes. With one word, ABCD = CDAB and BADC = DCBA.
pub fn ordered_bytes(words: &[u16], order: WordOrder) -> Vec<u8> {
    let wire = words.iter().flat_map(|w| w.to_be_bytes());
    match order {
        WordOrder::Abcd => wire.collect(),
        WordOrder::Cdab => words.iter().rev().flat_map(|w| w.to_be_bytes()).collect(),
        WordOrder::Badc => words.iter().flat_map(|w| w.to_le_bytes()).collect(),
        WordOrder::Dcba => {
            let mut bytes: Vec<u8> = wire.collect();
            bytes.reverse();
            bytes
        }
    }
}

/// One way of reading raw words, for a `probe` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpretation {
    /// Type and order as a channel would name them: `u16`, `i16 BADC`, `u32 ABCD`, `f64 DCBA`.
    /// 16-bit names without an order are ABCD (the config default).
    pub name: String,
    /// The value as text; a sentinel is followed by `[sentinel …]` with its reason.
    pub value: String,
    /// A guess at what the value is, when it falls in a telling range.
    pub hint: Option<&'static str>,
}

/// Every reading of the value that starts at the first of `words`: the 16-bit types (both byte
/// orders) for one word or more, also u32/i32/f32 in all four orders from two words, and also
/// u64/i64/f64 in all four orders from four. Words beyond what a type needs are ignored, so a
/// probe of four registers shows what a channel at the first address would read as any type.
pub fn interpretations(words: &[u16]) -> Vec<Interpretation> {
    const GROUPS: [(&[DataType], &[WordOrder], bool); 3] = [
        (
            &[DataType::U16, DataType::I16],
            &[WordOrder::Abcd, WordOrder::Badc],
            false,
        ),
        (
            &[DataType::U32, DataType::I32, DataType::F32],
            &WordOrder::ALL,
            true,
        ),
        (
            &[DataType::U64, DataType::I64, DataType::F64],
            &WordOrder::ALL,
            true,
        ),
    ];
    let mut out = Vec::new();
    for (types, orders, always_name_order) in GROUPS {
        for &data_type in types {
            let n = usize::from(data_type.words());
            let Some(value_words) = words.get(..n) else {
                continue;
            };
            for &order in orders {
                let raw = decode_raw(&ordered_bytes(value_words, order), data_type);
                let name = if always_name_order || order != WordOrder::Abcd {
                    format!("{data_type} {order}")
                } else {
                    data_type.to_string()
                };
                let decoded = raw.to_decoded();
                let value = match &decoded.sentinel {
                    Some(reason) => format!("{raw} [sentinel {reason}]"),
                    None => raw.to_string(),
                };
                let hint = match decoded.sentinel {
                    Some(_) => None,
                    None => hint(decoded.value),
                };
                out.push(Interpretation { name, value, hint });
            }
        }
    }
    out
}

fn hint(v: f64) -> Option<&'static str> {
    if (180.0..=260.0).contains(&v) || (90.0..=130.0).contains(&v) {
        Some("looks like a mains voltage")
    } else if (49.5..=50.5).contains(&v) || (59.5..=60.5).contains(&v) {
        Some("looks like a mains frequency")
    } else {
        None
    }
}

/// A value in its own type, before it becomes an f64, so `probe` can print integers exactly.
#[derive(Debug, Clone, Copy)]
enum Raw {
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
}

/// `bytes` must hold exactly the type's width (callers check); a short slice is zero-padded at
/// the end rather than panicking.
fn decode_raw(bytes: &[u8], data_type: DataType) -> Raw {
    match data_type {
        DataType::U16 => Raw::U16(u16::from_be_bytes(array(bytes))),
        DataType::I16 => Raw::I16(i16::from_be_bytes(array(bytes))),
        DataType::U32 => Raw::U32(u32::from_be_bytes(array(bytes))),
        DataType::I32 => Raw::I32(i32::from_be_bytes(array(bytes))),
        DataType::U64 => Raw::U64(u64::from_be_bytes(array(bytes))),
        DataType::I64 => Raw::I64(i64::from_be_bytes(array(bytes))),
        DataType::F32 => Raw::F32(f32::from_be_bytes(array(bytes))),
        DataType::F64 => Raw::F64(f64::from_be_bytes(array(bytes))),
    }
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    for (d, s) in a.iter_mut().zip(bytes) {
        *d = *s;
    }
    a
}

impl Raw {
    fn to_decoded(self) -> Decoded {
        // Casts to f64 are exact up to 2^53; beyond that rounding is the documented behaviour.
        let value = match self {
            Raw::U16(v) => f64::from(v),
            Raw::I16(v) => f64::from(v),
            Raw::U32(v) => f64::from(v),
            Raw::I32(v) => f64::from(v),
            Raw::U64(v) => v as f64,
            Raw::I64(v) => v as f64,
            Raw::F32(v) => f32_shortest(v),
            Raw::F64(v) => v,
        };
        Decoded {
            value,
            sentinel: self.sentinel(),
        }
    }

    /// ABB (and mbmd after it) documents all-ones unsigned and maximum signed fields as "not
    /// available"; NaN and infinities are never a measurement.
    fn sentinel(self) -> Option<String> {
        const ALL_ONES: &str = "all ones: not available";
        const SIGNED_MAX: &str = "signed maximum: not available";
        let (bits, digits, why) = match self {
            Raw::U16(u16::MAX) => (u64::from(u16::MAX), 4, ALL_ONES),
            Raw::U32(u32::MAX) => (u64::from(u32::MAX), 8, ALL_ONES),
            Raw::U64(u64::MAX) => (u64::MAX, 16, ALL_ONES),
            Raw::I16(i16::MAX) => (i16::MAX.unsigned_abs().into(), 4, SIGNED_MAX),
            Raw::I32(i32::MAX) => (i32::MAX.unsigned_abs().into(), 8, SIGNED_MAX),
            Raw::I64(i64::MAX) => (i64::MAX.unsigned_abs(), 16, SIGNED_MAX),
            Raw::F32(v) if !v.is_finite() => (v.to_bits().into(), 8, non_finite(v)),
            Raw::F64(v) if !v.is_finite() => (v.to_bits(), 16, non_finite(v)),
            _ => return None,
        };
        Some(format!("0x{bits:0digits$X} ({why})"))
    }
}

fn non_finite<F: Into<f64>>(v: F) -> &'static str {
    let v: f64 = v.into();
    if v.is_nan() {
        "NaN"
    } else if v > 0.0 {
        "+infinity"
    } else {
        "-infinity"
    }
}

impl fmt::Display for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Raw::U16(v) => write!(f, "{v}"),
            Raw::I16(v) => write!(f, "{v}"),
            Raw::U32(v) => write!(f, "{v}"),
            Raw::I32(v) => write!(f, "{v}"),
            Raw::U64(v) => write!(f, "{v}"),
            Raw::I64(v) => write!(f, "{v}"),
            Raw::F32(v) => write_float(f, f64::from(v), format_args!("{v}"), format_args!("{v:e}")),
            Raw::F64(v) => write_float(f, v, format_args!("{v}"), format_args!("{v:e}")),
        }
    }
}

/// Plain notation for ordinary magnitudes, scientific for huge or tiny ones (a random f64 would
/// otherwise print hundreds of digits). Both forms are the shortest round-trip digits of the
/// value in its own type.
fn write_float(
    f: &mut fmt::Formatter<'_>,
    v: f64,
    plain: fmt::Arguments<'_>,
    scientific: fmt::Arguments<'_>,
) -> fmt::Result {
    let a = v.abs();
    if v.is_finite() && a != 0.0 && !(1e-6..1e15).contains(&a) {
        f.write_fmt(scientific)
    } else {
        f.write_fmt(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use DataType::*;
    use WordOrder::*;

    fn value(words: &[u16], t: DataType, o: WordOrder) -> f64 {
        decode(words, t, o).unwrap().value
    }

    fn sentinel(words: &[u16], t: DataType, o: WordOrder) -> Option<String> {
        decode(words, t, o).unwrap().sentinel
    }

    /// Known encodings: (words, type, order, value).
    #[test]
    fn known_encodings() {
        let table: &[(&[u16], DataType, WordOrder, f64)] = &[
            // 230.1f32 = 0x4366199A
            (&[0x4366, 0x199A], F32, Abcd, 230.1),
            (&[0x199A, 0x4366], F32, Cdab, 230.1),
            (&[0x6643, 0x9A19], F32, Badc, 230.1),
            (&[0x9A19, 0x6643], F32, Dcba, 230.1),
            (&[0x4248, 0x0000], F32, Abcd, 50.0),
            (&[0xC2F6, 0xE979], F32, Abcd, -123.456),
            // -2i32 = 0xFFFFFFFE
            (&[0xFFFF, 0xFFFE], I32, Abcd, -2.0),
            (&[0xFFFE, 0xFFFF], I32, Cdab, -2.0),
            (&[0xFFFF, 0xFEFF], I32, Badc, -2.0),
            (&[0xFEFF, 0xFFFF], I32, Dcba, -2.0),
            (&[0x0001, 0x0002], U32, Abcd, 65538.0),
            (&[0x0001, 0x0002], U32, Cdab, 131073.0),
            (&[0x0001, 0x0002], U32, Badc, 16777728.0),
            (&[0x0001, 0x0002], U32, Dcba, 33554688.0),
            // 0x0102030405060708
            (
                &[0x0102, 0x0304, 0x0506, 0x0708],
                U64,
                Abcd,
                72623859790382856.0,
            ),
            (
                &[0x0708, 0x0506, 0x0304, 0x0102],
                U64,
                Cdab,
                72623859790382856.0,
            ),
            (
                &[0x0201, 0x0403, 0x0605, 0x0807],
                U64,
                Badc,
                72623859790382856.0,
            ),
            (
                &[0x0807, 0x0605, 0x0403, 0x0201],
                U64,
                Dcba,
                72623859790382856.0,
            ),
            (&[0xFFFF, 0xFFFF, 0xFFFF, 0xFF85], I64, Abcd, -123.0),
            (&[0xFF85, 0xFFFF, 0xFFFF, 0xFFFF], I64, Cdab, -123.0),
            (&[0xFFFF, 0xFFFF, 0xFFFF, 0x85FF], I64, Badc, -123.0),
            (&[0x85FF, 0xFFFF, 0xFFFF, 0xFFFF], I64, Dcba, -123.0),
            // 12345.678f64 = 0x40C81CD6C8B43958
            (&[0x40C8, 0x1CD6, 0xC8B4, 0x3958], F64, Abcd, 12345.678),
            (&[0x3958, 0xC8B4, 0x1CD6, 0x40C8], F64, Cdab, 12345.678),
            (&[0xC840, 0xD61C, 0xB4C8, 0x5839], F64, Badc, 12345.678),
            (&[0x5839, 0xB4C8, 0xD61C, 0xC840], F64, Dcba, 12345.678),
            (&[0x0102], U16, Abcd, 258.0),
            (&[0x0102], U16, Badc, 513.0),
            (&[0xFFFE], I16, Abcd, -2.0),
            (&[0xFEFF], I16, Dcba, -2.0),
            (&[0x8000], I16, Abcd, -32768.0),
        ];
        for &(words, t, o, expected) in table {
            let d = decode(words, t, o).unwrap();
            assert_eq!(d.value, expected, "{t} {o} {words:04X?}");
            assert_eq!(d.sentinel, None, "{t} {o} {words:04X?}");
        }
        assert_eq!(f64::from_bits(0x40C8_1CD6_C8B4_3958), 12345.678);
    }

    #[test]
    fn f32_is_the_shortest_decimal() {
        // As a plain cast 0.1f32 would be 0.10000000149011612 and 230.1f32 230.10000610351562.
        assert_eq!(value(&[0x3DCC, 0xCCCD], F32, Abcd), 0.1);
        assert_eq!(value(&[0x4366, 0x199A], F32, Abcd), 230.1);
        assert_eq!(value(&[0x0000, 0x0001], F32, Abcd), 1e-45);
    }

    #[test]
    fn sixteen_bit_orders_pair_up() {
        for w in [0x0000, 0x0102, 0x7FFF, 0x8000, 0xABCD, 0xFFFF] {
            for t in [U16, I16] {
                assert_eq!(decode(&[w], t, Abcd), decode(&[w], t, Cdab));
                assert_eq!(decode(&[w], t, Badc), decode(&[w], t, Dcba));
            }
            assert_eq!(ordered_bytes(&[w], Abcd), ordered_bytes(&[w], Cdab));
            assert_eq!(ordered_bytes(&[w], Badc), ordered_bytes(&[w], Dcba));
        }
    }

    #[test]
    fn ordered_bytes_for_any_width() {
        let w = [0x0102, 0x0304, 0x0506];
        assert_eq!(ordered_bytes(&w, Abcd), [1, 2, 3, 4, 5, 6]);
        assert_eq!(ordered_bytes(&w, Cdab), [5, 6, 3, 4, 1, 2]);
        assert_eq!(ordered_bytes(&w, Badc), [2, 1, 4, 3, 6, 5]);
        assert_eq!(ordered_bytes(&w, Dcba), [6, 5, 4, 3, 2, 1]);
        for o in WordOrder::ALL {
            assert!(ordered_bytes(&[], o).is_empty());
        }
    }

    #[test]
    fn sentinels() {
        let s = |w: &[u16], t, o| sentinel(w, t, o);
        for o in WordOrder::ALL {
            assert_eq!(
                s(&[0xFFFF], U16, o).as_deref(),
                Some("0xFFFF (all ones: not available)")
            );
            assert_eq!(
                s(&[0xFFFF; 2], U32, o).as_deref(),
                Some("0xFFFFFFFF (all ones: not available)")
            );
            assert_eq!(
                s(&[0xFFFF; 4], U64, o).as_deref(),
                Some("0xFFFFFFFFFFFFFFFF (all ones: not available)")
            );
            // All ones as a signed value is -1, an ordinary number.
            assert_eq!(s(&[0xFFFF], I16, o), None);
            assert_eq!(s(&[0xFFFF; 2], I32, o), None);
            assert_eq!(s(&[0xFFFF; 4], I64, o), None);
        }
        assert_eq!(
            s(&[0x7FFF], I16, Abcd).as_deref(),
            Some("0x7FFF (signed maximum: not available)")
        );
        assert_eq!(
            s(&[0xFF7F], I16, Badc).as_deref(),
            s(&[0x7FFF], I16, Abcd).as_deref()
        );
        assert_eq!(
            s(&[0x7FFF, 0xFFFF], I32, Abcd).as_deref(),
            Some("0x7FFFFFFF (signed maximum: not available)")
        );
        assert_eq!(
            s(&[0xFFFF, 0x7FFF], I32, Cdab).as_deref(),
            s(&[0x7FFF, 0xFFFF], I32, Abcd).as_deref()
        );
        assert_eq!(
            s(&[0x7FFF, 0xFFFF, 0xFFFF, 0xFFFF], I64, Abcd).as_deref(),
            Some("0x7FFFFFFFFFFFFFFF (signed maximum: not available)")
        );
        assert_eq!(
            s(&[0xFFFF, 0xFFFF, 0xFFFF, 0xFF7F], I64, Dcba).as_deref(),
            s(&[0x7FFF, 0xFFFF, 0xFFFF, 0xFFFF], I64, Abcd).as_deref()
        );
        // The sentinel's value is still the number the registers hold.
        assert_eq!(value(&[0xFFFF; 2], U32, Abcd), 4294967295.0);
        assert_eq!(value(&[0x7FFF], I16, Abcd), 32767.0);
        // Near misses are ordinary.
        assert_eq!(s(&[0xFFFE], U16, Abcd), None);
        assert_eq!(s(&[0x7FFF], U16, Abcd), None);
        assert_eq!(s(&[0x7FFF, 0xFFFE], I32, Abcd), None);
    }

    #[test]
    fn non_finite_floats_are_sentinels() {
        let d = decode(&[0x7FC0, 0x0000], F32, Abcd).unwrap();
        assert!(d.value.is_nan());
        assert_eq!(d.sentinel.as_deref(), Some("0x7FC00000 (NaN)"));
        // All ones is a NaN too.
        assert!(decode(&[0xFFFF; 2], F32, Cdab).unwrap().value.is_nan());
        let d = decode(&[0x0000, 0x7F80], F32, Cdab).unwrap();
        assert_eq!(d.value, f64::INFINITY);
        assert_eq!(d.sentinel.as_deref(), Some("0x7F800000 (+infinity)"));
        let d = decode(&[0xFFF0, 0, 0, 0], F64, Abcd).unwrap();
        assert_eq!(d.value, f64::NEG_INFINITY);
        assert_eq!(
            d.sentinel.as_deref(),
            Some("0xFFF0000000000000 (-infinity)")
        );
        let d = decode(&[0, 0, 0, 0xF87F], F64, Dcba).unwrap();
        assert!(d.value.is_nan());
        assert_eq!(d.sentinel.as_deref(), Some("0x7FF8000000000000 (NaN)"));
        // Largest finite values are ordinary.
        assert_eq!(sentinel(&[0x7F7F, 0xFFFF], F32, Abcd), None);
        assert_eq!(value(&[0x7F7F, 0xFFFF], F32, Abcd), 3.4028235e38);
    }

    #[test]
    fn wrong_length() {
        for t in [U16, I16, U32, I32, U64, I64, F32, F64] {
            let n = usize::from(t.words());
            for got in [0, n - 1, n + 1, 5] {
                if got == n {
                    continue;
                }
                assert_eq!(
                    decode(&vec![0; got], t, Abcd),
                    Err(DecodeError::WrongLength { expected: n, got })
                );
            }
        }
        assert_eq!(
            DecodeError::WrongLength {
                expected: 2,
                got: 1
            }
            .to_string(),
            "expected 2 registers, got 1"
        );
    }

    fn find<'a>(list: &'a [Interpretation], name: &str) -> &'a Interpretation {
        list.iter().find(|i| i.name == name).unwrap()
    }

    #[test]
    fn interpretations_by_length() {
        assert!(interpretations(&[]).is_empty());
        let names =
            |w: &[u16]| -> Vec<String> { interpretations(w).into_iter().map(|i| i.name).collect() };
        assert_eq!(names(&[1]), ["u16", "u16 BADC", "i16", "i16 BADC"]);
        assert_eq!(names(&[1, 2]).len(), 4 + 12);
        assert_eq!(names(&[1, 2, 3]).len(), 4 + 12);
        let four = names(&[1, 2, 3, 4]);
        assert_eq!(four.len(), 4 + 12 + 12);
        for n in [
            "u32 ABCD", "i32 CDAB", "f32 BADC", "u64 DCBA", "i64 ABCD", "f64 CDAB",
        ] {
            assert!(four.iter().any(|x| x == n), "{n} in {four:?}");
        }
    }

    #[test]
    fn interpretation_values_and_hints() {
        let list = interpretations(&[0x4366, 0x199A]);
        let i = find(&list, "f32 ABCD");
        assert_eq!(i.value, "230.1");
        assert_eq!(i.hint, Some("looks like a mains voltage"));
        assert_eq!(find(&list, "u16").value, "17254");
        assert_eq!(find(&list, "u16").hint, None);
        assert_eq!(find(&list, "u32 ABCD").value, "1130764698");

        let list = interpretations(&[0x4248, 0x0000]);
        assert_eq!(find(&list, "f32 ABCD").value, "50");
        assert_eq!(
            find(&list, "f32 ABCD").hint,
            Some("looks like a mains frequency")
        );
        let list = interpretations(&[0x0000, 0x426F]);
        assert_eq!(find(&list, "f32 CDAB").value, "59.75");
        assert_eq!(
            find(&list, "f32 CDAB").hint,
            Some("looks like a mains frequency")
        );
        // 230 and 120 V as plain integers.
        assert_eq!(
            interpretations(&[230])[0].hint,
            Some("looks like a mains voltage")
        );
        assert_eq!(
            interpretations(&[120])[0].hint,
            Some("looks like a mains voltage")
        );
        assert_eq!(interpretations(&[140])[0].hint, None);

        // Integers print exactly, even beyond 2^53.
        let list = interpretations(&[0x0102, 0x0304, 0x0506, 0x0708]);
        assert_eq!(find(&list, "u64 ABCD").value, "72623859790382856");
        let list = interpretations(&[0x0020, 0x0000, 0x0000, 0x0001]);
        assert_eq!(find(&list, "u64 ABCD").value, "9007199254740993");

        // Sentinels are marked and get no hint.
        let list = interpretations(&[0xFFFF, 0xFFFF]);
        assert_eq!(
            find(&list, "u32 ABCD").value,
            "4294967295 [sentinel 0xFFFFFFFF (all ones: not available)]"
        );
        assert_eq!(find(&list, "i32 ABCD").value, "-1");
        assert_eq!(
            find(&list, "f32 ABCD").value,
            "NaN [sentinel 0xFFFFFFFF (NaN)]"
        );
        let list = interpretations(&[0x00E6]);
        assert_eq!(find(&list, "u16").value, "230");
        assert_eq!(find(&list, "u16 BADC").value, "58880");

        // Huge and tiny floats print in scientific notation.
        let list = interpretations(&[0x7F7F, 0xFFFF]);
        assert_eq!(find(&list, "f32 ABCD").value, "3.4028235e38");
        let list = interpretations(&[0x0000, 0x0001]);
        assert_eq!(find(&list, "f32 ABCD").value, "1e-45");
        let list = interpretations(&[0x0000, 0x0000]);
        assert_eq!(find(&list, "f32 ABCD").value, "0");
    }

    /// Encoder written independently of `ordered_bytes`: from the value's big-endian and
    /// little-endian byte images straight to the words that would be on the wire.
    fn encode(be: &[u8], order: WordOrder) -> Vec<u16> {
        let n = be.len() / 2;
        let le: Vec<u8> = be.iter().rev().copied().collect();
        (0..n)
            .map(|i| match order {
                Abcd => u16::from_be_bytes([be[2 * i], be[2 * i + 1]]),
                Cdab => u16::from_be_bytes([be[2 * (n - 1 - i)], be[2 * (n - 1 - i) + 1]]),
                Badc => u16::from_le_bytes([be[2 * i], be[2 * i + 1]]),
                Dcba => u16::from_be_bytes([le[2 * i], le[2 * i + 1]]),
            })
            .collect()
    }

    fn arb_order() -> impl Strategy<Value = WordOrder> {
        prop::sample::select(WordOrder::ALL.to_vec())
    }

    fn same(a: f64, b: f64) -> bool {
        a == b || (a.is_nan() && b.is_nan())
    }

    proptest! {
        #[test]
        fn roundtrip_u16(v: u16, o in arb_order()) {
            prop_assert_eq!(value(&encode(&v.to_be_bytes(), o), U16, o), f64::from(v));
        }

        #[test]
        fn roundtrip_i16(v: i16, o in arb_order()) {
            prop_assert_eq!(value(&encode(&v.to_be_bytes(), o), I16, o), f64::from(v));
        }

        #[test]
        fn roundtrip_u32(v: u32, o in arb_order()) {
            prop_assert_eq!(value(&encode(&v.to_be_bytes(), o), U32, o), f64::from(v));
        }

        #[test]
        fn roundtrip_i32(v: i32, o in arb_order()) {
            prop_assert_eq!(value(&encode(&v.to_be_bytes(), o), I32, o), f64::from(v));
        }

        #[test]
        fn roundtrip_u64(v: u64, o in arb_order()) {
            prop_assert_eq!(value(&encode(&v.to_be_bytes(), o), U64, o), v as f64);
        }

        #[test]
        fn roundtrip_i64(v: i64, o in arb_order()) {
            prop_assert_eq!(value(&encode(&v.to_be_bytes(), o), I64, o), v as f64);
        }

        #[test]
        fn roundtrip_f32(bits: u32, o in arb_order()) {
            let v = f32::from_bits(bits);
            let got = value(&encode(&v.to_be_bytes(), o), F32, o);
            prop_assert!(same(got, f32_shortest(v)));
            // The shortest decimal still identifies the same f32.
            prop_assert!(same(f64::from(got as f32), f64::from(v)));
        }

        #[test]
        fn roundtrip_f64(bits: u64, o in arb_order()) {
            let v = f64::from_bits(bits);
            let d = decode(&encode(&v.to_be_bytes(), o), F64, o).unwrap();
            prop_assert_eq!(d.value.to_bits(), v.to_bits());
            prop_assert_eq!(d.sentinel.is_some(), !v.is_finite());
        }

        #[test]
        fn never_panics(words in prop::collection::vec(any::<u16>(), 0..10), o in arb_order()) {
            for t in [U16, I16, U32, I32, U64, I64, F32, F64] {
                let r = decode(&words, t, o);
                prop_assert_eq!(r.is_ok(), words.len() == usize::from(t.words()));
            }
            prop_assert_eq!(ordered_bytes(&words, o).len(), 2 * words.len());
            let list = interpretations(&words);
            let expected = match words.len() { 0 => 0, 1 => 4, 2 | 3 => 16, _ => 28 };
            prop_assert_eq!(list.len(), expected);
        }
    }
}
