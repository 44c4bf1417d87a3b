//! Criterion benchmarks of the pure protocol cores (issue 8): Modbus request planning and word
//! decoding, M-Bus frame parsing and record decoding over libmbus's real telegrams
//! (`tests/data/mbus/libmbus/`, the fixtures `tests/it/mbus_decode.rs` reads), unit conversion,
//! and the sender's JSON body of one reading. Run with `cargo bench --bench cores`; figures go
//! into BENCHMARKS.md. Not a test: nothing here asserts a speed, and the cores are called
//! exactly as the daemon calls them (no IO, no clock inside the measured closures).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use enectiva_collector::config::IdField;
use enectiva_collector::mbus::frame::{Frame, Parsed, from_hex, parse};
use enectiva_collector::mbus::record;
use enectiva_collector::modbus::decode::decode;
use enectiva_collector::modbus::plan::{fallback, plan};
use enectiva_collector::modbus::{
    DEFAULT_MAX_GAP, DataType, MAX_REGISTERS_PER_REQUEST, RegisterSpec, Table, WordOrder,
};
use enectiva_collector::reading::{Kind, Reading, Series};
use enectiva_collector::sender::payload;
use enectiva_collector::units::{
    Conversion, Temperature, Transform, f32_shortest, round_decimals, round_significant,
};

const TYPES: [DataType; 8] = DataType::ALL;

/// The ten common SDM630 quantities plus `total_energy` (0x0156), as in the planner's tests.
fn sdm630_specs() -> Vec<RegisterSpec> {
    [0, 2, 4, 6, 8, 10, 52, 70, 72, 74, 0x0156]
        .into_iter()
        .map(|address| RegisterSpec {
            table: Table::Input,
            address,
            data_type: DataType::F32,
            order: WordOrder::Abcd,
        })
        .collect()
}

/// A 100-channel meter: every data type, both tables, small and large gaps between values (so
/// the plan has several requests), listed in a scrambled order as a user's config would be.
fn hundred_channel_specs() -> Vec<RegisterSpec> {
    let mut specs = Vec::with_capacity(100);
    let mut address: u16 = 0;
    for i in 0..100u16 {
        let data_type = TYPES[usize::from(i % 8)];
        let table = if i < 60 { Table::Input } else { Table::Holding };
        if i == 60 {
            address = 0x1000;
        }
        specs.push(RegisterSpec {
            table,
            address,
            data_type,
            order: WordOrder::ALL[usize::from(i % 4)],
        });
        // Mostly adjacent, a gap of 3 every 5th value, a jump past max_gap every 17th.
        let gap = match i {
            _ if i % 17 == 16 => 40,
            _ if i % 5 == 4 => 3,
            _ => 0,
        };
        address += data_type.words() + gap;
    }
    // Deterministic scramble (multiplication by a unit mod 100).
    (0..100).map(|k| specs[(k * 37) % 100]).collect()
}

fn bench_modbus_plan(c: &mut Criterion) {
    let mut g = c.benchmark_group("modbus_plan");
    let sdm = sdm630_specs();
    g.bench_function("sdm630_11_channels", |b| {
        b.iter(|| plan(black_box(&sdm), MAX_REGISTERS_PER_REQUEST, DEFAULT_MAX_GAP))
    });
    let hundred = hundred_channel_specs();
    g.bench_function("100_channels", |b| {
        b.iter(|| {
            plan(
                black_box(&hundred),
                MAX_REGISTERS_PER_REQUEST,
                DEFAULT_MAX_GAP,
            )
        })
    });
    let p = plan(&hundred, MAX_REGISTERS_PER_REQUEST, DEFAULT_MAX_GAP);
    g.bench_function("100_channels_fallback_first_request", |b| {
        b.iter(|| fallback(black_box(&p), 0, black_box(&hundred)))
    });
    g.finish();
}

fn bench_modbus_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("modbus_decode");
    // Short windows: 32 cases of a few nanoseconds each.
    g.warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(500));
    // Ordinary values, not sentinels: 230.1 as f32/f64 and a mid-range integer pattern.
    for data_type in TYPES {
        let words: Vec<u16> = match data_type {
            DataType::F32 => {
                let b = 230.1f32.to_bits();
                vec![(b >> 16) as u16, b as u16]
            }
            DataType::F64 => {
                let b = 230.1f64.to_bits();
                (0..4).rev().map(|k| (b >> (16 * k)) as u16).collect()
            }
            _ => [0x1234, 0x5678, 0x0ABC, 0x0DEF][..usize::from(data_type.words())].to_vec(),
        };
        for order in WordOrder::ALL {
            g.bench_with_input(
                BenchmarkId::new(data_type.as_str(), order.as_str()),
                &words,
                |b, w| b.iter(|| decode(black_box(w), data_type, order)),
            );
        }
    }
    g.finish();
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mbus/libmbus")
}

/// The bytes of every `.hex` fixture in the three folders that is hex at all (one is not, on
/// purpose), sorted by path.
fn fixtures() -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = ["test-frames", "error-frames", "unsupported-frames"]
        .iter()
        .flat_map(|folder| {
            std::fs::read_dir(fixture_dir().join(folder))
                .expect("fixture folder")
                .flatten()
                .map(|e| e.path())
        })
        .filter(|p| p.extension().is_some_and(|x| x == "hex"))
        .collect();
    paths.sort();
    paths
        .iter()
        .filter_map(|p| from_hex(&std::fs::read_to_string(p).expect("fixture")).ok())
        .collect()
}

/// What the bus edge does with one telegram's bytes: link layer, then application layer.
/// Returns something that depends on the result so nothing is optimised away.
fn parse_and_decode(bytes: &[u8]) -> usize {
    match parse(bytes) {
        Parsed::Frame(frame, _) => match record::decode(&frame) {
            Ok(record::Response::Data(t)) => t.records.len() + 1,
            Ok(_) => 1,
            Err(_) => 0,
        },
        Parsed::NeedMore(_) | Parsed::Invalid { .. } => 0,
    }
}

fn bench_mbus(c: &mut Criterion) {
    let all = fixtures();
    let test_frames: Vec<Vec<u8>> = {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(fixture_dir().join("test-frames"))
            .expect("fixture folder")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "hex"))
            .collect();
        paths.sort();
        paths
            .iter()
            .filter_map(|p| from_hex(&std::fs::read_to_string(p).expect("fixture")).ok())
            .collect()
    };
    let frames: Vec<Frame> = all
        .iter()
        .filter_map(|b| match parse(b) {
            Parsed::Frame(f, _) => Some(f),
            _ => None,
        })
        .collect();
    eprintln!(
        "mbus fixtures: {} telegrams in all ({} parse as frames), {} in test-frames",
        all.len(),
        frames.len(),
        test_frames.len(),
    );

    let mut g = c.benchmark_group("mbus");
    g.throughput(Throughput::Elements(all.len() as u64));
    g.bench_function("parse_and_decode_all_fixtures", |b| {
        b.iter(|| {
            black_box(&all)
                .iter()
                .map(|t| parse_and_decode(t))
                .sum::<usize>()
        })
    });
    g.throughput(Throughput::Elements(test_frames.len() as u64));
    g.bench_function("parse_and_decode_test_frames", |b| {
        b.iter(|| {
            black_box(&test_frames)
                .iter()
                .map(|t| parse_and_decode(t))
                .sum::<usize>()
        })
    });
    g.throughput(Throughput::Elements(all.len() as u64));
    g.bench_function("frame_parse_all_fixtures", |b| {
        b.iter(|| {
            black_box(&all)
                .iter()
                .map(|t| match parse(t) {
                    Parsed::Frame(_, used) => used,
                    _ => 0,
                })
                .sum::<usize>()
        })
    });
    g.throughput(Throughput::Elements(frames.len() as u64));
    g.bench_function("record_decode_all_frames", |b| {
        b.iter(|| {
            black_box(&frames)
                .iter()
                .map(|f| record::decode(f).is_ok() as usize)
                .sum::<usize>()
        })
    });
    g.finish();
}

fn bench_units(c: &mut Criterion) {
    let mut g = c.benchmark_group("units");
    g.bench_function("conversion_between_wh_kwh", |b| {
        b.iter(|| Conversion::between(black_box("Wh"), black_box("kWh"), Temperature::Absolute))
    });
    g.bench_function("conversion_between_degc_k", |b| {
        b.iter(|| Conversion::between(black_box("°C"), black_box("K"), Temperature::Absolute))
    });
    let transform = Transform {
        source_scale: 1.0,
        conversion: Conversion::between("Wh", "kWh", Temperature::Absolute).expect("known units"),
        scale: 1.0,
        offset: 0.0,
        significant_digits: 15,
        decimals: Some(3),
    };
    g.bench_function("transform_apply_wh_to_kwh_3_decimals", |b| {
        b.iter(|| transform.apply(black_box(123_456_789.0)))
    });
    let f32_transform = Transform::identity(7);
    g.bench_function("transform_apply_identity_7_digits", |b| {
        b.iter(|| f32_transform.apply(black_box(230.100_006_103_515_62)))
    });
    g.bench_function("round_significant_15", |b| {
        b.iter(|| round_significant(black_box(0.1 + 0.2), 15))
    });
    g.bench_function("round_decimals_2", |b| {
        b.iter(|| round_decimals(black_box(1234.5678), 2))
    });
    g.bench_function("f32_shortest", |b| {
        b.iter(|| f32_shortest(black_box(230.1f32)))
    });
    g.finish();
}

fn bench_payload(c: &mut Criterion) {
    let mut g = c.benchmark_group("payload");
    let reading = Reading {
        series: Series::new(Kind::Reading, "METER_001", Some("T1".into())),
        time: 1_795_000_000,
        value: 12_345.678,
        unit: Some("kWh".into()),
        clock_synced: true,
        invalid: None,
    };
    g.bench_function("body_reading", |b| {
        b.iter(|| payload::body(black_box(&reading), "gateway-1", IdField::ImportId))
    });
    let point = Reading {
        series: Series::new(Kind::DataPoint, "TEMP_OUT", None),
        value: 21.0,
        unit: None,
        ..reading.clone()
    };
    g.bench_function("body_data_point_integral", |b| {
        b.iter(|| payload::body(black_box(&point), "", IdField::MeterId))
    });
    g.finish();
}

fn config() -> Criterion {
    // The whole run stays under two minutes on a shared 2-core machine.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .sample_size(50)
}

criterion_group! {
    name = cores;
    config = config();
    targets = bench_modbus_plan, bench_modbus_decode, bench_mbus, bench_units, bench_payload
}
criterion_main!(cores);
