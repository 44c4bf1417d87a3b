//! The wired M-Bus link layer (EN 13757-2), pure: builds the master's telegrams (SND_NKE,
//! REQ_UD2 with FCB/FCV, SND_UD for secondary selection and application reset) and parses the
//! slave's (single character `E5`, short, control and long frames) with every check — start
//! bytes, both length bytes, checksum, stop byte.
//!
//! Parsing is incremental: a prefix of a valid frame is "need more bytes", not an error, so the
//! serial edge can read until the length announced by `L` is complete. Bytes that cannot start
//! a frame are reported with how many to skip, so the caller resynchronises. No IO, no clock,
//! no panics on any input.

use std::fmt;

/// Start of a long or control frame.
pub const LONG_START: u8 = 0x68;
/// Start of a short frame.
pub const SHORT_START: u8 = 0x10;
/// The single-character acknowledgement.
pub const ACK: u8 = 0xE5;
/// Stop byte of short, control and long frames.
pub const STOP: u8 = 0x16;

/// C-field values (master → slave).
pub const C_SND_NKE: u8 = 0x40;
pub const C_SND_UD: u8 = 0x53;
pub const C_REQ_UD2: u8 = 0x5B;
/// Frame count bit and frame count valid bit.
pub const FCB: u8 = 0x20;
pub const FCV: u8 = 0x10;
/// Direction bit: set in every master-to-slave C-field (PRM).
pub const PRM: u8 = 0x40;

/// CI values the master sends.
pub const CI_APPLICATION_RESET: u8 = 0x50;
pub const CI_SELECT: u8 = 0x52;

/// The network-layer address: the slave selected by secondary address.
pub const ADDRESS_SELECTED: u8 = 0xFD;
/// Broadcast, every slave replies.
pub const ADDRESS_BROADCAST_REPLY: u8 = 0xFE;
/// Broadcast, no reply.
pub const ADDRESS_BROADCAST: u8 = 0xFF;

/// A complete telegram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `E5`.
    Ack,
    /// `10 C A CS 16`.
    Short { c: u8, a: u8 },
    /// `68 03 03 68 C A CI CS 16`.
    Control { c: u8, a: u8, ci: u8 },
    /// `68 L L 68 C A CI data… CS 16` with at least one data byte.
    Long { c: u8, a: u8, ci: u8, data: Vec<u8> },
}

impl Frame {
    /// The C-field, if the frame has one.
    pub fn control(&self) -> Option<u8> {
        match self {
            Frame::Ack => None,
            Frame::Short { c, .. } | Frame::Control { c, .. } | Frame::Long { c, .. } => Some(*c),
        }
    }

    /// A frame sent by a master (C bit 6 set): the echo of our own request on converters that
    /// echo, never an answer.
    pub fn is_from_master(&self) -> bool {
        self.control().is_some_and(|c| c & PRM != 0)
    }

    /// The encoded bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Frame::Ack => vec![ACK],
            Frame::Short { c, a } => vec![SHORT_START, *c, *a, c.wrapping_add(*a), STOP],
            Frame::Control { c, a, ci } => long(*c, *a, *ci, &[]),
            Frame::Long { c, a, ci, data } => long(*c, *a, *ci, data),
        }
    }
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
}

/// `68 L L 68 C A CI data CS 16`; data longer than 252 bytes is cut (the M-Bus maximum).
fn long(c: u8, a: u8, ci: u8, data: &[u8]) -> Vec<u8> {
    let data = &data[..data.len().min(MAX_DATA)];
    let l = (3 + data.len()) as u8;
    let mut out = Vec::with_capacity(data.len() + 9);
    out.extend_from_slice(&[LONG_START, l, l, LONG_START, c, a, ci]);
    out.extend_from_slice(data);
    out.push(checksum(&out[4..]));
    out.push(STOP);
    out
}

/// The most user-data bytes a long frame carries (L ≤ 255).
pub const MAX_DATA: usize = 252;

/// SND_NKE: link reset of one slave (or of the selected one at 253, or all at 255).
pub fn snd_nke(address: u8) -> Vec<u8> {
    Frame::Short {
        c: C_SND_NKE,
        a: address,
    }
    .encode()
}

/// REQ_UD2: request class-2 data, with FCV set and the given FCB.
pub fn req_ud2(address: u8, fcb: bool) -> Vec<u8> {
    let c = C_REQ_UD2 | if fcb { FCB } else { 0 };
    Frame::Short { c, a: address }.encode()
}

/// SND_UD with CI 0x52 to address 253: select the slave matching `mask`.
pub fn select(mask: &SecondaryMask, fcb: bool) -> Vec<u8> {
    let c = C_SND_UD | if fcb { FCB } else { 0 };
    Frame::Long {
        c,
        a: ADDRESS_SELECTED,
        ci: CI_SELECT,
        data: mask.encode().to_vec(),
    }
    .encode()
}

/// Application reset (CI 0x50): the slave starts its readout again at telegram 1.
pub fn application_reset(address: u8, subcode: Option<u8>) -> Vec<u8> {
    match subcode {
        Some(s) => Frame::Long {
            c: C_SND_UD,
            a: address,
            ci: CI_APPLICATION_RESET,
            data: vec![s],
        }
        .encode(),
        None => Frame::Control {
            c: C_SND_UD,
            a: address,
            ci: CI_APPLICATION_RESET,
        }
        .encode(),
    }
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The first byte cannot start a frame.
    BadStart(u8),
    /// The two length bytes of a long frame differ.
    LengthMismatch {
        first: u8,
        second: u8,
    },
    /// L < 3.
    LengthTooShort(u8),
    /// The second `68` of a long frame is missing.
    BadSecondStart(u8),
    Checksum {
        expected: u8,
        found: u8,
    },
    BadStop(u8),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadStart(b) => write!(f, "0x{b:02X} cannot start a telegram"),
            FrameError::LengthMismatch { first, second } => {
                write!(f, "length bytes differ (0x{first:02X} and 0x{second:02X})")
            }
            FrameError::LengthTooShort(l) => write!(f, "length 0x{l:02X} is below 3"),
            FrameError::BadSecondStart(b) => {
                write!(f, "expected 0x68 at offset 3, found 0x{b:02X}")
            }
            FrameError::Checksum { expected, found } => {
                write!(
                    f,
                    "checksum 0x{found:02X} where 0x{expected:02X} was expected"
                )
            }
            FrameError::BadStop(b) => write!(f, "expected stop byte 0x16, found 0x{b:02X}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// What the bytes at the start of a buffer are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A complete, valid frame and how many bytes it used.
    Frame(Frame, usize),
    /// A valid prefix: at least this many bytes in total are needed.
    NeedMore(usize),
    /// Not a frame; `skip` bytes should be dropped before trying again (resynchronise).
    Invalid { error: FrameError, skip: usize },
}

/// Parses the frame at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let Some(&first) = buf.first() else {
        return Parsed::NeedMore(1);
    };
    match first {
        ACK => Parsed::Frame(Frame::Ack, 1),
        SHORT_START => {
            let Some(f) = buf.get(..5) else {
                return Parsed::NeedMore(5);
            };
            let (c, a, cs, stop) = (f[1], f[2], f[3], f[4]);
            if cs != c.wrapping_add(a) {
                return Parsed::Invalid {
                    error: FrameError::Checksum {
                        expected: c.wrapping_add(a),
                        found: cs,
                    },
                    skip: 1,
                };
            }
            if stop != STOP {
                return Parsed::Invalid {
                    error: FrameError::BadStop(stop),
                    skip: 1,
                };
            }
            Parsed::Frame(Frame::Short { c, a }, 5)
        }
        LONG_START => {
            let Some(h) = buf.get(..4) else {
                return Parsed::NeedMore(4);
            };
            let (l1, l2, s2) = (h[1], h[2], h[3]);
            if l1 != l2 {
                return Parsed::Invalid {
                    error: FrameError::LengthMismatch {
                        first: l1,
                        second: l2,
                    },
                    skip: 1,
                };
            }
            if s2 != LONG_START {
                return Parsed::Invalid {
                    error: FrameError::BadSecondStart(s2),
                    skip: 1,
                };
            }
            if l1 < 3 {
                return Parsed::Invalid {
                    error: FrameError::LengthTooShort(l1),
                    skip: 1,
                };
            }
            let total = usize::from(l1) + 6;
            let Some(f) = buf.get(..total) else {
                return Parsed::NeedMore(total);
            };
            let body = &f[4..total - 2];
            let expected = checksum(body);
            let found = f[total - 2];
            if expected != found {
                return Parsed::Invalid {
                    error: FrameError::Checksum { expected, found },
                    skip: 1,
                };
            }
            if f[total - 1] != STOP {
                return Parsed::Invalid {
                    error: FrameError::BadStop(f[total - 1]),
                    skip: 1,
                };
            }
            let (c, a, ci) = (body[0], body[1], body[2]);
            let data = &body[3..];
            let frame = if data.is_empty() {
                Frame::Control { c, a, ci }
            } else {
                Frame::Long {
                    c,
                    a,
                    ci,
                    data: data.to_vec(),
                }
            };
            Parsed::Frame(frame, total)
        }
        other => Parsed::Invalid {
            error: FrameError::BadStart(other),
            skip: 1,
        },
    }
}

/// Parses hex text (whitespace, `0x` prefixes and line breaks between bytes allowed) into bytes.
pub fn from_hex(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for (i, token) in text.split_whitespace().enumerate() {
        let t = token.trim_start_matches("0x").trim_start_matches("0X");
        if t.len() % 2 != 0 {
            return Err(format!(
                "token {} (`{token}`) has an odd number of hex digits",
                i + 1
            ));
        }
        for k in (0..t.len()).step_by(2) {
            let pair = t
                .get(k..k + 2)
                .ok_or_else(|| format!("token {} is not hex", i + 1))?;
            let b = u8::from_str_radix(pair, 16)
                .map_err(|_| format!("token {} (`{token}`) is not hex", i + 1))?;
            out.push(b);
        }
    }
    Ok(out)
}

/// A secondary address to select, with wildcards: identification digits may each be `F`,
/// manufacturer `0xFFFF`, version and medium `0xFF` match anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecondaryMask {
    /// Eight digits, most significant first; each 0–9, or 0xF for "any".
    pub id: [u8; 8],
    /// The manufacturer word as on the wire (little-endian in the telegram), 0xFFFF = any.
    pub manufacturer: u16,
    pub version: u8,
    pub medium: u8,
}

impl SecondaryMask {
    /// Everything: `FFFFFFFF FFFF FF FF`.
    pub const ANY: SecondaryMask = SecondaryMask {
        id: [0xF; 8],
        manufacturer: 0xFFFF,
        version: 0xFF,
        medium: 0xFF,
    };

    /// The 8 data bytes of a select telegram: ID (BCD, least significant byte first),
    /// manufacturer (little-endian), version, medium.
    pub fn encode(&self) -> [u8; 8] {
        let d = &self.id;
        let byte = |hi: u8, lo: u8| ((hi & 0xF) << 4) | (lo & 0xF);
        let m = self.manufacturer.to_le_bytes();
        [
            byte(d[6], d[7]),
            byte(d[4], d[5]),
            byte(d[2], d[3]),
            byte(d[0], d[1]),
            m[0],
            m[1],
            self.version,
            self.medium,
        ]
    }

    /// A mask for an exact identification number (8 decimal digits), any manufacturer,
    /// version and medium.
    pub fn for_id(id: &str) -> Option<SecondaryMask> {
        let digits: Vec<u8> = id
            .chars()
            .map(|c| c.to_digit(16).map(|d| d as u8))
            .collect::<Option<_>>()?;
        let id: [u8; 8] = digits.try_into().ok()?;
        Some(SecondaryMask {
            id,
            ..SecondaryMask::ANY
        })
    }

    /// The manufacturer word for three letters (`KAM` → 0x2C2D).
    pub fn manufacturer_code(letters: &str) -> Option<u16> {
        let b = letters.as_bytes();
        if b.len() != 3 || !b.iter().all(|c| c.is_ascii_uppercase()) {
            return None;
        }
        let v = |c: u8| u16::from(c - 64);
        Some((v(b[0]) << 10) | (v(b[1]) << 5) | v(b[2]))
    }

    /// With digit `pos` (0 = most significant) set to `d`.
    pub fn with_digit(mut self, pos: usize, d: u8) -> SecondaryMask {
        if let Some(x) = self.id.get_mut(pos) {
            *x = d & 0xF;
        }
        self
    }
}

impl fmt::Display for SecondaryMask {
    /// libmbus's 16-character form: 8 ID digits, the manufacturer bytes in wire order,
    /// version, medium (e.g. `10857629496A8804`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in self.id {
            write!(f, "{d:X}")?;
        }
        let m = self.manufacturer.to_le_bytes();
        write!(
            f,
            "{:02X}{:02X}{:02X}{:02X}",
            m[0], m[1], self.version, self.medium
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_frames_match_the_reference_examples() {
        assert_eq!(snd_nke(5), vec![0x10, 0x40, 0x05, 0x45, 0x16]);
        assert_eq!(snd_nke(0xFD), vec![0x10, 0x40, 0xFD, 0x3D, 0x16]);
        assert_eq!(snd_nke(0xFF), vec![0x10, 0x40, 0xFF, 0x3F, 0x16]);
        assert_eq!(req_ud2(5, true), vec![0x10, 0x7B, 0x05, 0x80, 0x16]);
        assert_eq!(req_ud2(5, false), vec![0x10, 0x5B, 0x05, 0x60, 0x16]);
        assert_eq!(req_ud2(0xFD, false), vec![0x10, 0x5B, 0xFD, 0x58, 0x16]);
        let kam = SecondaryMask {
            id: [1, 4, 8, 3, 9, 1, 2, 0],
            manufacturer: SecondaryMask::manufacturer_code("KAM").expect("KAM"),
            version: 1,
            medium: 2,
        };
        assert_eq!(
            select(&kam, true),
            from_hex("68 0B 0B 68 73 FD 52 20 91 83 14 2D 2C 01 02 66 16").expect("hex")
        );
        assert_eq!(
            select(&SecondaryMask::ANY, true),
            from_hex("68 0B 0B 68 73 FD 52 FF FF FF FF FF FF FF FF BA 16").expect("hex")
        );
        assert_eq!(
            select(&SecondaryMask::ANY.with_digit(0, 1), true),
            from_hex("68 0B 0B 68 73 FD 52 FF FF FF 1F FF FF FF FF DA 16").expect("hex")
        );
        assert_eq!(
            application_reset(5, None),
            from_hex("68 03 03 68 53 05 50 A8 16").expect("hex")
        );
        assert_eq!(
            application_reset(0xFE, Some(0x10)),
            from_hex("68 04 04 68 53 FE 50 10 B1 16").expect("hex")
        );
        assert_eq!(kam.to_string(), "148391202D2C0102");
    }

    #[test]
    fn parses_every_kind_and_reports_need_more() {
        assert_eq!(parse(&[0xE5, 0x10]), Parsed::Frame(Frame::Ack, 1));
        let short = req_ud2(5, true);
        assert_eq!(
            parse(&short),
            Parsed::Frame(Frame::Short { c: 0x7B, a: 5 }, 5)
        );
        for n in 1..short.len() {
            assert_eq!(parse(&short[..n]), Parsed::NeedMore(5), "prefix {n}");
        }
        let rsp = from_hex(
            "68 31 31 68 08 01 72 45 58 57 03 B4 05 34 04 9E 00 27 B6 03 06 F9 34 15 03 15 C6 00 4D 05 2E 00 00 00 00 05 3D 00 00 00 00 05 5B 22 F3 26 42 05 5F C7 DA 0D 42 FA 16",
        )
        .expect("hex");
        match parse(&rsp) {
            Parsed::Frame(Frame::Long { c, a, ci, data }, used) => {
                assert_eq!((c, a, ci, data.len(), used), (0x08, 1, 0x72, 46, 55));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(&rsp[..3]), Parsed::NeedMore(4));
        assert_eq!(parse(&rsp[..20]), Parsed::NeedMore(55));
        let ctl = application_reset(5, None);
        assert_eq!(
            parse(&ctl),
            Parsed::Frame(
                Frame::Control {
                    c: 0x53,
                    a: 5,
                    ci: 0x50
                },
                9
            )
        );
        assert!(
            Frame::Control {
                c: 0x53,
                a: 5,
                ci: 0x50
            }
            .is_from_master()
        );
        assert!(!Frame::Short { c: 0x08, a: 5 }.is_from_master());
    }

    #[test]
    fn every_check_is_made() {
        let mut bad_cs = req_ud2(5, true);
        bad_cs[3] ^= 1;
        assert!(matches!(
            parse(&bad_cs),
            Parsed::Invalid {
                error: FrameError::Checksum { .. },
                skip: 1
            }
        ));
        let mut bad_stop = req_ud2(5, true);
        bad_stop[4] = 0x17;
        assert!(matches!(
            parse(&bad_stop),
            Parsed::Invalid {
                error: FrameError::BadStop(0x17),
                ..
            }
        ));
        assert!(matches!(
            parse(&[0x68, 0x05, 0x06, 0x68]),
            Parsed::Invalid {
                error: FrameError::LengthMismatch { .. },
                ..
            }
        ));
        assert!(matches!(
            parse(&[0x68, 0x05, 0x05, 0x69]),
            Parsed::Invalid {
                error: FrameError::BadSecondStart(0x69),
                ..
            }
        ));
        assert!(matches!(
            parse(&[0x68, 0x00, 0x00, 0x68]),
            Parsed::Invalid {
                error: FrameError::LengthTooShort(0),
                ..
            }
        ));
        assert!(matches!(
            parse(&[0x42]),
            Parsed::Invalid {
                error: FrameError::BadStart(0x42),
                skip: 1
            }
        ));
        let mut long = select(&SecondaryMask::ANY, true);
        long[10] ^= 0x10;
        assert!(matches!(
            parse(&long),
            Parsed::Invalid {
                error: FrameError::Checksum { .. },
                ..
            }
        ));
    }

    #[test]
    fn hex_text() {
        assert_eq!(
            from_hex("68 0b\n0x0B\t68"),
            Ok(vec![0x68, 0x0B, 0x0B, 0x68])
        );
        assert_eq!(from_hex("6808"), Ok(vec![0x68, 0x08]));
        assert!(from_hex("6").is_err());
        assert!(from_hex("zz").is_err());
    }

    #[test]
    fn masks() {
        assert_eq!(SecondaryMask::manufacturer_code("KAM"), Some(0x2C2D));
        assert_eq!(SecondaryMask::manufacturer_code("AMT"), Some(0x05B4));
        assert_eq!(SecondaryMask::manufacturer_code("kam"), None);
        let m = SecondaryMask::for_id("12345678").expect("id");
        assert_eq!(m.encode()[..4], [0x78, 0x56, 0x34, 0x12]);
        assert_eq!(SecondaryMask::for_id("1234567"), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_skips_make_progress(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            match parse(&bytes) {
                Parsed::Frame(_, used) => proptest::prop_assert!(used >= 1 && used <= bytes.len()),
                Parsed::NeedMore(n) => proptest::prop_assert!(n > bytes.len()),
                Parsed::Invalid { skip, .. } => proptest::prop_assert!(skip >= 1),
            }
        }

        #[test]
        fn long_frames_round_trip(c in 0u8..=255, a in 0u8..=255, ci in 0u8..=255, data in proptest::collection::vec(proptest::num::u8::ANY, 1..252)) {
            let bytes = Frame::Long { c, a, ci, data: data.clone() }.encode();
            proptest::prop_assert_eq!(parse(&bytes), Parsed::Frame(Frame::Long { c, a, ci, data }, bytes.len()));
        }
    }
}
