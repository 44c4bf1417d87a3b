//! Decoders of the M-Bus data field types (EN 13757-3 annex A): BCD (type A, with the `F` sign
//! nibble), signed integers (type B), real32 (type H), dates and times (types G, F, I, J), the
//! variable-length LVAR codes, and exact decimal arithmetic on mantissa × 10^exponent values.
//!
//! Every function takes the bytes least significant first (the record decoder reverses
//! MSB-first telegrams before calling), returns a value or a reason, and never panics: lengths
//! are the caller's slices, arithmetic is checked.

/// The digits of `bytes` (least significant byte first) as hex, most significant first: how a
/// BCD or date field reads, and how libmbus prints error-state values (`DDDDEBBD`).
pub fn hex_msb_first(bytes: &[u8]) -> String {
    bytes.iter().rev().map(|b| format!("{b:02X}")).collect()
}

/// Type A: packed BCD, least significant byte first. A most significant nibble `F` makes the
/// value negative (libmbus ≥ 2020); any other nibble above 9 (error codes in "value during error
/// state" records) makes it not a number: the digits come back as text.
pub fn bcd(bytes: &[u8]) -> Result<i128, String> {
    let mut value: i128 = 0;
    let mut negative = false;
    for (i, b) in bytes.iter().rev().enumerate() {
        for (j, nibble) in [b >> 4, b & 0x0F].into_iter().enumerate() {
            let digit = match nibble {
                0..=9 => nibble,
                0xF if i == 0 && j == 0 => {
                    negative = true;
                    0
                }
                _ => return Err(hex_msb_first(bytes)),
            };
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(i128::from(digit)))
                .ok_or_else(|| hex_msb_first(bytes))?;
        }
    }
    Ok(if negative { -value } else { value })
}

/// Type B: signed two's complement, least significant byte first, 0 to 16 bytes (0 bytes is 0).
pub fn int(bytes: &[u8]) -> i128 {
    let bytes = &bytes[..bytes.len().min(16)];
    let mut raw: u128 = 0;
    for b in bytes.iter().rev() {
        raw = (raw << 8) | u128::from(*b);
    }
    let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
    if negative && bytes.len() < 16 {
        // Sign-extend: subtract 2^(8n). The bound is < 2^120, so this cannot overflow.
        (raw as i128) - (1i128 << (8 * bytes.len()))
    } else {
        // 16 bytes: the cast is the two's complement reading.
        raw as i128
    }
}

/// Type H: IEEE-754 single precision, least significant byte first.
pub fn real(bytes: [u8; 4]) -> f32 {
    f32::from_le_bytes(bytes)
}

/// An exact decimal: `mantissa × 10^exponent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    pub mantissa: i128,
    pub exponent: i32,
}

impl Decimal {
    /// The decimal of an f32's shortest round-trip representation (`41.737434`), so a real
    /// sent by a meter keeps the digits it was meant to have. `None` for NaN and infinities.
    pub fn from_f32(x: f32) -> Option<Decimal> {
        if !x.is_finite() {
            return None;
        }
        // `{:e}` prints the shortest digits that read back as x: `-4.1737434e1`.
        let text = format!("{x:e}");
        let (digits, exp) = text.split_once('e')?;
        let exp: i32 = exp.parse().ok()?;
        let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
        let mantissa: i128 = format!("{int_part}{frac_part}").parse().ok()?;
        let frac_len = i32::try_from(frac_part.len()).ok()?;
        Some(Decimal {
            mantissa,
            exponent: exp.checked_sub(frac_len)?,
        })
    }

    /// × `mantissa × 10^exponent`; `None` on overflow.
    pub fn times(self, mantissa: i128, exponent: i32) -> Option<Decimal> {
        Some(Decimal {
            mantissa: self.mantissa.checked_mul(mantissa)?,
            exponent: self.exponent.checked_add(exponent)?,
        })
    }

    /// + 10^`exponent`; `None` on overflow.
    pub fn plus_pow10(self, exponent: i32) -> Option<Decimal> {
        if exponent >= self.exponent {
            let shift = u32::try_from(exponent.checked_sub(self.exponent)?).ok()?;
            Some(Decimal {
                mantissa: self.mantissa.checked_add(10i128.checked_pow(shift)?)?,
                exponent: self.exponent,
            })
        } else {
            let shift = u32::try_from(self.exponent.checked_sub(exponent)?).ok()?;
            Some(Decimal {
                mantissa: self
                    .mantissa
                    .checked_mul(10i128.checked_pow(shift)?)?
                    .checked_add(1)?,
                exponent,
            })
        }
    }

    /// The nearest f64 (parsing the decimal text rounds correctly; huge or tiny exponents give
    /// infinity or zero, never a panic).
    pub fn to_f64(self) -> f64 {
        format!("{}e{}", self.mantissa, self.exponent)
            .parse()
            .unwrap_or(f64::NAN)
    }
}

impl std::fmt::Display for Decimal {
    /// Plain decimal notation without trailing zeros after the point (`1389817000`, `41.737434`,
    /// `-0.5`); scientific notation for exponents beyond ±40, which no meter value needs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (m, e) = (self.mantissa, self.exponent);
        if m == 0 {
            return f.write_str("0");
        }
        if !(-40..=40).contains(&e) {
            return write!(f, "{m}e{e}");
        }
        let digits = m.unsigned_abs().to_string();
        let sign = if m < 0 { "-" } else { "" };
        if e >= 0 {
            return write!(f, "{sign}{digits}{}", "0".repeat(e.unsigned_abs() as usize));
        }
        let point = e.unsigned_abs() as usize;
        let (int_part, frac_part) = if digits.len() > point {
            let (a, b) = digits.split_at(digits.len() - point);
            (a.to_owned(), b.to_owned())
        } else {
            (
                "0".to_owned(),
                format!("{}{digits}", "0".repeat(point - digits.len())),
            )
        };
        let frac_part = frac_part.trim_end_matches('0');
        if frac_part.is_empty() {
            write!(f, "{sign}{int_part}")
        } else {
            write!(f, "{sign}{int_part}.{frac_part}")
        }
    }
}

/// A decoded date or time, or why it is not one.
pub type DateResult = Result<String, String>;

/// Year of a two-digit year with the hundred-year bits (type F, later editions): with `hy` set,
/// 1900 + 100·hy + yy; without, libmbus's window (yy ≤ 80 → 20yy, else 19yy).
fn full_year(yy: u8, hy: u8) -> u32 {
    let yy = u32::from(yy);
    match hy {
        0 if yy <= 80 => 2000 + yy,
        0 => 1900 + yy,
        hy => 1900 + 100 * u32::from(hy) + yy,
    }
}

/// The 7-bit year spread over a day byte (bits 7–5) and a month byte (bits 7–4).
fn year_bits(day_byte: u8, month_byte: u8) -> u8 {
    ((day_byte & 0xE0) >> 5) | ((month_byte & 0xF0) >> 1)
}

/// Year 127 (all year bits set) is a periodic date: "every year" (ISO 8601's `--MM-DD`).
const EVERY_YEAR: u8 = 127;

fn ymd(yy: u8, hy: u8, month: u8, day: u8) -> Option<String> {
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    Some(if yy == EVERY_YEAR {
        format!("--{month:02}-{day:02}")
    } else {
        format!("{:04}-{month:02}-{day:02}", full_year(yy, hy))
    })
}

/// Type G: a date in 2 bytes.
pub fn date_g(b: [u8; 2]) -> DateResult {
    let day = b[0] & 0x1F;
    let month = b[1] & 0x0F;
    let yy = year_bits(b[0], b[1]);
    ymd(yy, 0, month, day).ok_or_else(|| hex_msb_first(&b))
}

/// Type F: date and time to the minute in 4 bytes; bit 7 of the first byte marks the time
/// invalid.
pub fn date_time_f(b: [u8; 4]) -> DateResult {
    let invalid = b[0] & 0x80 != 0;
    let minute = b[0] & 0x3F;
    let hour = b[1] & 0x1F;
    let hy = (b[1] & 0x60) >> 5;
    let day = b[2] & 0x1F;
    let month = b[3] & 0x0F;
    let yy = year_bits(b[2], b[3]);
    if invalid || hour > 23 || minute > 59 {
        return Err(hex_msb_first(&b));
    }
    let date = ymd(yy, hy, month, day).ok_or_else(|| hex_msb_first(&b))?;
    Ok(format!("{date}T{hour:02}:{minute:02}:00"))
}

/// Type I: date and time to the second in 6 bytes (read as libmbus does: the last byte's week
/// and daylight-saving bits are not used).
pub fn date_time_i(b: [u8; 6]) -> DateResult {
    let second = b[0] & 0x3F;
    let minute = b[1] & 0x3F;
    let hour = b[2] & 0x1F;
    let day = b[3] & 0x1F;
    let month = b[4] & 0x0F;
    let yy = year_bits(b[3], b[4]);
    if hour > 23 || minute > 59 || second > 59 {
        return Err(hex_msb_first(&b));
    }
    let date = ymd(yy, 0, month, day).ok_or_else(|| hex_msb_first(&b))?;
    Ok(format!("{date}T{hour:02}:{minute:02}:{second:02}"))
}

/// Type J: a time of day in 3 bytes (second, minute, hour).
pub fn time_j(b: [u8; 3]) -> DateResult {
    let (second, minute, hour) = (b[0] & 0x3F, b[1] & 0x3F, b[2] & 0x1F);
    if hour > 23 || minute > 59 || second > 59 {
        return Err(hex_msb_first(&b));
    }
    Ok(format!("{hour:02}:{minute:02}:{second:02}"))
}

/// What a variable-length (DIF data code `D`) field holds, by its LVAR byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lvar {
    /// ISO 8859-1 text of n characters, sent last character first.
    Text(usize),
    /// BCD of n bytes (2n digits), positive or negative.
    Bcd { bytes: usize, negative: bool },
    /// A binary number of n bytes.
    Binary(usize),
    /// F7–FF and the gaps: the length is unknown, so the telegram cannot be read further.
    Reserved,
}

/// The meaning of an LVAR byte. The BCD lengths follow EN 13757-3 ((LVAR − C0h) · 2 digits,
/// i.e. LVAR − C0h bytes), not libmbus, which reads twice as many bytes.
pub fn lvar(l: u8) -> Lvar {
    let n = usize::from(l);
    match l {
        0x00..=0xBF => Lvar::Text(n),
        0xC0..=0xC9 => Lvar::Bcd {
            bytes: n - 0xC0,
            negative: false,
        },
        0xD0..=0xD9 => Lvar::Bcd {
            bytes: n - 0xD0,
            negative: true,
        },
        0xE0..=0xEF => Lvar::Binary(n - 0xE0),
        0xF0..=0xF4 => Lvar::Binary(4 * (n - 0xEC)),
        0xF5 => Lvar::Binary(48),
        0xF6 => Lvar::Binary(64),
        _ => Lvar::Reserved,
    }
}

/// ISO 8859-1 bytes as text (every byte is a char of the same code point).
pub fn latin1(bytes: impl Iterator<Item = u8>) -> String {
    bytes.map(char::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcd_values() {
        assert_eq!(bcd(&[0x45, 0x23, 0x01, 0x00]), Ok(12345));
        assert_eq!(bcd(&[0x78, 0x56, 0x34, 0x12]), Ok(12_345_678));
        // Sign nibble: F in the most significant position.
        assert_eq!(bcd(&[0x23, 0xF1]), Ok(-123));
        assert_eq!(
            bcd(&[0x99, 0x99, 0x99, 0x99, 0x99, 0x99]),
            Ok(999_999_999_999)
        );
        // Error digits are kept as text, most significant first.
        assert_eq!(bcd(&[0xBD, 0xEB, 0xDD, 0xDD]), Err("DDDDEBBD".into()));
        assert_eq!(
            bcd(&[0xF1, 0x00]),
            Err("00F1".into()),
            "F only counts on top"
        );
        assert_eq!(bcd(&[]), Ok(0));
    }

    #[test]
    fn integers() {
        assert_eq!(int(&[0xF9, 0x34, 0x15]), 0x1534F9);
        assert_eq!(int(&[0xFF]), -1);
        assert_eq!(int(&[0xFE, 0xFF, 0xFF, 0xFF]), -2);
        assert_eq!(int(&[0x00, 0x80]), -32768);
        assert_eq!(int(&[0xFF; 8]), -1);
        assert_eq!(
            int(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
            i128::from(i64::MAX)
        );
        assert_eq!(int(&[0xFF; 16]), -1);
        assert_eq!(int(&[0xFF; 15]), -1);
        assert_eq!(int(&[]), 0);
        let mut max = [0xFF; 16];
        max[15] = 0x7F;
        assert_eq!(int(&max), i128::MAX);
    }

    #[test]
    fn reals_keep_their_shortest_decimal() {
        let x = real([0x22, 0xF3, 0x26, 0x42]);
        assert_eq!(
            Decimal::from_f32(x),
            Some(Decimal {
                mantissa: 41_737_434,
                exponent: -6
            })
        );
        assert_eq!(
            Decimal::from_f32(-1500.0),
            Some(Decimal {
                mantissa: -15,
                exponent: 2
            })
        );
        assert_eq!(
            Decimal::from_f32(0.0),
            Some(Decimal {
                mantissa: 0,
                exponent: 0
            })
        );
        assert_eq!(Decimal::from_f32(f32::NAN), None);
        assert_eq!(
            Decimal::from_f32(f32::MIN_POSITIVE).map(|d| d.to_f64() > 0.0),
            Some(true)
        );
    }

    #[test]
    fn decimal_arithmetic_and_text() {
        let d = Decimal {
            mantissa: 42,
            exponent: -3,
        };
        assert_eq!(d.to_string(), "0.042");
        assert_eq!(d.to_f64(), 0.042);
        assert_eq!(
            d.plus_pow10(-1).map(|d| d.to_string()),
            Some("0.142".into())
        );
        assert_eq!(
            d.plus_pow10(-5).map(|d| d.to_string()),
            Some("0.04201".into())
        );
        assert_eq!(
            d.times(3600, 0).map(|d| d.to_string()),
            Some("151.2".into())
        );
        let big = Decimal {
            mantissa: 1_389_817,
            exponent: 3,
        };
        assert_eq!(big.to_string(), "1389817000");
        assert_eq!(
            Decimal {
                mantissa: -5,
                exponent: -1
            }
            .to_string(),
            "-0.5"
        );
        assert_eq!(
            Decimal {
                mantissa: 120,
                exponent: -1
            }
            .to_string(),
            "12"
        );
        assert_eq!(
            Decimal {
                mantissa: 1,
                exponent: 99
            }
            .to_string(),
            "1e99"
        );
        let huge = Decimal {
            mantissa: i128::MAX,
            exponent: i32::MAX,
        };
        assert_eq!(huge.times(2, 0), None);
        assert_eq!(huge.plus_pow10(i32::MIN), None);
        assert_eq!(huge.to_f64(), f64::INFINITY);
    }

    #[test]
    fn dates() {
        assert_eq!(date_g([0x1F, 0x3C]), Ok("2024-12-31".into()));
        assert_eq!(date_g([0x5F, 0x1C]), Ok("2010-12-31".into()));
        assert_eq!(date_g([0x00, 0x00]), Err("0000".into()));
        assert_eq!(
            date_time_f([0x0C, 0x15, 0xA8, 0x22]),
            Ok("2021-02-08T21:12:00".into())
        );
        // Every year: 1 January (landis+gyr_ultraheat_t230).
        assert_eq!(
            date_time_f([0x00, 0x00, 0xE1, 0xF1]),
            Ok("--01-01T00:00:00".into())
        );
        // Hundred-year bits: 2 → 1900 + 200 + 21.
        assert_eq!(
            date_time_f([0x0C, 0x55, 0xA8, 0x22]),
            Ok("2121-02-08T21:12:00".into())
        );
        // Window: 96 → 1996.
        assert_eq!(
            date_time_f([0x00, 0x00, 0x01, 0xC1]),
            Ok("1996-01-01T00:00:00".into())
        );
        assert!(date_time_f([0x8C, 0x15, 0xA8, 0x22]).is_err(), "IV bit");
        assert!(date_time_f([0x0C, 0x18, 0xA8, 0x22]).is_err(), "hour 24");
        assert_eq!(
            date_time_i([0x05, 0x0C, 0x15, 0xA8, 0x22, 0x00]),
            Ok("2021-02-08T21:12:05".into())
        );
        assert_eq!(time_j([0x05, 0x0C, 0x15]), Ok("21:12:05".into()));
        assert!(time_j([0x3C, 0x00, 0x00]).is_err());
    }

    #[test]
    fn lvar_codes() {
        assert_eq!(lvar(0x00), Lvar::Text(0));
        assert_eq!(lvar(0xBF), Lvar::Text(0xBF));
        assert_eq!(
            lvar(0xC3),
            Lvar::Bcd {
                bytes: 3,
                negative: false
            }
        );
        assert_eq!(
            lvar(0xD2),
            Lvar::Bcd {
                bytes: 2,
                negative: true
            }
        );
        assert_eq!(lvar(0xE0), Lvar::Binary(0));
        assert_eq!(lvar(0xEF), Lvar::Binary(15));
        assert_eq!(lvar(0xF0), Lvar::Binary(16));
        assert_eq!(lvar(0xF4), Lvar::Binary(32));
        assert_eq!(lvar(0xF5), Lvar::Binary(48));
        assert_eq!(lvar(0xF6), Lvar::Binary(64));
        for l in [0xCA, 0xCF, 0xDA, 0xDF, 0xF7, 0xFF] {
            assert_eq!(lvar(l), Lvar::Reserved, "{l:02X}");
        }
    }
}
