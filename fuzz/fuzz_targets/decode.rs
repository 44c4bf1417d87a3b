//! Fuzz target: arbitrary bytes through the M-Bus link layer (`frame::parse`, resynchronising
//! like the bus edge) and every frame found through the application layer (`record::decode`),
//! and the same bytes as user data (first byte = CI, the rest = data) straight into
//! `record::decode_user_data`; every decoded answer is also rendered as JSON and described for
//! selection. Must never panic, overflow or read out of bounds. Owns nothing else.

#![no_main]

use enectiva_collector::mbus::frame::{Frame, Parsed, parse};
use enectiva_collector::mbus::record::{Response, decode, decode_user_data};
use enectiva_collector::mbus::{json, select};
use libfuzzer_sys::fuzz_target;

fn exercise(response: &Response) {
    let _ = json::to_json(response);
    if let Response::Data(t) = response {
        for r in &t.records {
            let _ = select::describe(r);
            let _ = r.as_f64();
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let mut rest = input;
    while !rest.is_empty() {
        match parse(rest) {
            Parsed::Frame(frame, used) => {
                if let Ok(r) = decode(&frame) {
                    exercise(&r);
                }
                if let Frame::Long { a, ci, data, .. } = &frame {
                    if let Ok(r) = decode_user_data(*a, *ci, data) {
                        exercise(&r);
                    }
                }
                rest = rest.get(used..).unwrap_or_default();
            }
            Parsed::NeedMore(_) => break,
            Parsed::Invalid { skip, .. } => rest = rest.get(skip..).unwrap_or_default(),
        }
    }
    if let Some((ci, data)) = input.split_first() {
        if let Ok(r) = decode_user_data(0, *ci, data) {
            exercise(&r);
        }
    }
});
