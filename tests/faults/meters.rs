//! Meter faults against the real daemon: on a Modbus TCP gateway one unit goes silent, on an
//! RS-485 line (pseudo-terminal) one meter's answers arrive with garbage and bad CRCs, a USB
//! adapter's port vanishes and returns (a new pty behind the same by-id style symlink), and an
//! M-Bus heat meter stops answering. The healthy meters, on those very buses and on others,
//! keep their 1 s schedule throughout; every event shows in `status --json` and in the log
//! (with its MESSAGE_ID where it has one); every meter delivers again afterwards.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use enectiva_collector::events;
use enectiva_collector::sim::mbus::{MbusLineOptions, SimMbus, SimSlave};
use enectiva_collector::sim::modbus::{SimMeter, SimModbus};
use enectiva_collector::sim::rtu::SimRtuBus;

use crate::harness::{LONG, World, bin, size, wait_until};

fn modbus_meter(table: &str, name: &str, unit: u8, id: &str) -> String {
    format!(
        "  [[{table}.meter]]\n  name = \"{name}\"\n  unit_id = {unit}\n  interval = \"1s\"\n  profile = \"eastron-sdm630\"\n  channels = [ {{ quantity = \"import_energy_total\", import_id = \"{id}\" }} ]\n"
    )
}

fn rtu_bus(name: &str, port: &Path) -> String {
    format!(
        "\n[[modbus_rtu]]\nname = \"{name}\"\nport = \"{}\"\nbaud = 9600\ntimeout = \"300ms\"\n",
        port.display()
    )
}

/// The `status --json` of the daemon's queue, as the operator's command prints it.
fn status_json(config: &Path) -> serde_json::Value {
    let out = Command::new(bin())
        .args(["-c", config.to_str().expect("utf8"), "status", "--json"])
        .output()
        .expect("status");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn meter<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["meters"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["meter"] == name))
        .unwrap_or_else(|| panic!("meter {name} not in status: {st}"))
}

/// The largest gap between consecutive instants (of at least four polls).
fn worst_gap(at: &[Instant]) -> Duration {
    assert!(at.len() >= 4, "only {} polls during the faults", at.len());
    at.windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_garbage_and_vanished_meters_never_stop_the_others() {
    let _serial = crate::harness::one_at_a_time().await;
    let fault_for = Duration::from_secs(size(6, 60) as u64);
    // One healthy TCP meter of the world (bus tcp00), plus the buses below.
    let world = World::new(1, 2, "1s").await;
    let gateway = SimModbus::start(vec![SimMeter::sdm630(1), SimMeter::sdm630(2)])
        .await
        .expect("gateway");
    let noisy = SimRtuBus::start(vec![SimMeter::sdm630(1), SimMeter::sdm630(2)], None)
        .await
        .expect("rtu");
    let usb = SimRtuBus::start(vec![SimMeter::sdm630(1)], None)
        .await
        .expect("usb");
    let heat = SimMbus::start(
        vec![SimSlave::heat_meter(5, 12_345_678)],
        MbusLineOptions::default(),
    )
    .await
    .expect("mbus");
    let by_id = world.dir.path().join("usb-FTDI_adapter-if00");
    std::os::unix::fs::symlink(usb.path(), &by_id).expect("symlink");
    let mut text = std::fs::read_to_string(&world.config).expect("config");
    text.push_str(&format!(
        "\n[[modbus_tcp]]\nname = \"gateway\"\naddress = \"{}\"\ntimeout = \"300ms\"\n{}{}",
        gateway.addr(),
        modbus_meter("modbus_tcp", "t1", 1, "T1"),
        modbus_meter("modbus_tcp", "t2", 2, "T2"),
    ));
    text.push_str(&rtu_bus("rs485", &noisy.path()));
    text.push_str(&modbus_meter("modbus_rtu", "r1", 1, "R1"));
    text.push_str(&modbus_meter("modbus_rtu", "r2", 2, "R2"));
    text.push_str(&rtu_bus("usb", &by_id));
    text.push_str(&modbus_meter("modbus_rtu", "u1", 1, "U1"));
    text.push_str(&format!(
        "\n[[mbus]]\nname = \"heat\"\nport = \"{}\"\nbaud = 2400\ntimeout = \"auto\"\n  [[mbus.meter]]\n  name = \"h5\"\n  address = 5\n  interval = \"2s\"\n  channels = [ {{ quantity = \"energy\", import_id = \"H5\", unit = \"kWh\" }} ]\n",
        heat.path().display()
    ));
    std::fs::write(&world.config, text).expect("config");
    let api = world.api.clone();
    let count = |id: &str| api.accepted().iter().filter(|a| a.import_id == id).count();
    let d = world.start(&[]);
    assert!(d.wait_running().await, "{}", d.log_text());
    let all = [
        "M00_import_energy_total",
        "T1",
        "T2",
        "R1",
        "R2",
        "U1",
        "H5",
    ];
    assert!(
        wait_until(LONG, || all.iter().all(|id| count(id) >= 2)).await,
        "not every meter delivered before the faults:\n{}",
        d.log_text()
    );

    // The faults, all at once.
    let fault_from = Instant::now();
    gateway.set_silent(2, true);
    heat.set_absent(5, true);
    noisy.garbage_next(2, 1000, vec![0x55, 0xAA, 0x02, 0x00]);
    noisy.bad_crc_next(2, 1000);
    usb.close().await;
    tokio::time::sleep(fault_for).await;
    let st = status_json(&world.config);
    let t2 = meter(&st, "t2");
    let h5 = meter(&st, "h5");
    let r2 = meter(&st, "r2");
    let u1 = meter(&st, "u1");
    assert_eq!(t2["ok"], false, "{t2}");
    assert_eq!(
        t2["down"], true,
        "silent unit not down after {fault_for:?}: {t2}"
    );
    assert_eq!(h5["ok"], false, "{h5}");
    assert!(h5["failures"].as_i64() >= Some(1), "{h5}");
    assert!(
        r2["crc_errors"].as_i64() > Some(0) || r2["garbage_bytes"].as_i64() > Some(0),
        "noise not counted: {r2}"
    );
    assert!(
        u1["error"]
            .as_str()
            .is_some_and(|e| e.contains("serial port gone")),
        "vanished port not shown: {u1}"
    );
    assert_eq!(
        u1["down"], false,
        "a lost port must not count against its meter: {u1}"
    );

    // Repair everything.
    gateway.set_silent(2, false);
    heat.set_absent(5, false);
    noisy.clear_faults(2);
    let usb2 = SimRtuBus::start(vec![SimMeter::sdm630(1)], None)
        .await
        .expect("usb again");
    let tmp = world.dir.path().join("usb-new");
    std::os::unix::fs::symlink(usb2.path(), &tmp).expect("symlink");
    std::fs::rename(&tmp, &by_id).expect("re-point");
    let repaired = Instant::now();
    let before: Vec<usize> = all.iter().map(|id| count(id)).collect();
    let back = wait_until(LONG, || {
        all.iter().zip(&before).all(|(id, n)| count(id) > *n)
    })
    .await;
    let back_after = repaired.elapsed();
    let (code, _, log) = d.stop();
    assert!(
        back,
        "not every meter delivered again after the repair:\n{log}"
    );
    assert_eq!(code, Some(0), "{log}");

    // The log tells the operator each event.
    assert!(
        log.matches(events::METER_DOWN).count() >= 2,
        "silent meters not logged down:\n{log}"
    );
    assert!(
        log.matches(events::METER_UP).count() >= 2,
        "recoveries not logged:\n{log}"
    );
    assert!(
        log.contains("noise on the line"),
        "noise not logged:\n{log}"
    );
    assert!(
        log.contains("serial port gone"),
        "vanished port not logged:\n{log}"
    );
    assert!(
        log.contains("serial port is back"),
        "returned port not logged:\n{log}"
    );

    // The healthy meters kept their 1 s schedule while the others failed.
    let fault_to = repaired;
    let in_fault = |v: Vec<Instant>| -> Vec<Instant> {
        v.into_iter()
            .filter(|t| *t >= fault_from && *t <= fault_to)
            .collect()
    };
    let healthy = [
        (
            "tcp00",
            worst_gap(&in_fault(
                world.meters[0]
                    .served()
                    .iter()
                    .filter(|s| s.start == 0)
                    .map(|s| s.at)
                    .collect(),
            )),
        ),
        (
            "gateway t1",
            worst_gap(&in_fault(
                gateway
                    .served()
                    .iter()
                    .filter(|s| s.unit == 1)
                    .map(|s| s.at)
                    .collect(),
            )),
        ),
        (
            "rs485 r1",
            worst_gap(&in_fault(
                noisy
                    .served()
                    .iter()
                    .filter(|s| s.unit == 1)
                    .map(|s| s.at)
                    .collect(),
            )),
        ),
    ];
    for (name, gap) in &healthy {
        assert!(
            *gap <= Duration::from_millis(2500),
            "{name} was not polled for {gap:?} during the faults"
        );
    }
    println!(
        "Meters: {:.0} s of faults (silent TCP unit, silent M-Bus meter, garbage + bad CRC on RS-485, USB port gone): \
         worst poll gap of the healthy meters {} (interval 1 s); status showed t2 down, h5 failures {}, r2 crc_errors {} garbage_bytes {}, u1 \"{}\"; \
         every meter delivering again {:.1} s after the repair",
        fault_for.as_secs_f64(),
        healthy
            .iter()
            .map(|(n, g)| format!("{n} {:.2} s", g.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        h5["failures"],
        r2["crc_errors"],
        r2["garbage_bytes"],
        u1["error"].as_str().unwrap_or_default(),
        back_after.as_secs_f64()
    );
}
