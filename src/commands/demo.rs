//! `demo [--seconds N]`: the real pipeline — config validation, bus tasks, the durable queue and
//! the sender — against built-in simulated meters (a Modbus TCP meter, and two Modbus RTU meters
//! on an RS-485 line, and an M-Bus heat meter, both emulated on pseudo-terminals) and the built-in stand-in of the Enectiva
//! API, all on loopback with a temporary queue. Prints each delivery as the stand-in accepts
//! it, then a summary. Needs no hardware, no network and no configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Exit;
use crate::app;
use crate::config::Config;
use crate::modbus::Table;
use crate::queue::QueueOptions;
use crate::sender::SenderSettings;
use crate::sim::api::StandIn;
use crate::sim::mbus::{MbusLineOptions, SimMbus, SimSlave};
use crate::sim::modbus::{SimMeter, SimModbus};
use crate::sim::rtu::{LineTiming, SimRtuBus};

const CUSTOMER: &str = "5d0c1a7e-9b3f-4c2d-8e6a-1f2b3c4d5e6f";
const TOKEN: &str = "demo-token";

/// A fresh private directory for the demo's queue and token, removed at the end.
fn temp_dir() -> std::io::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("enectiva-demo-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn config_text(
    api: &str,
    dir: &std::path::Path,
    tcp: std::net::SocketAddr,
    rtu: &std::path::Path,
    mbus: &std::path::Path,
) -> String {
    format!(
        r#"# The configuration the demo runs with (validated like any other).
[api]
base_url = "{api}"
customer_id = "{CUSTOMER}"
token_file = "{token}"
sender = "demo"

[queue]
path = "{queue}"

[[modbus_tcp]]
name = "demo-tcp"
address = "{tcp}"
timeout = "500ms"

  [[modbus_tcp.meter]]
  name = "sdm630"
  unit_id = 1
  interval = "2s"
  profile = "eastron-sdm630"
  channels = [
    {{ quantity = "import_energy_total", import_id = "DEMO_IMPORT", unit = "kWh" }},
    {{ quantity = "export_energy_total", import_id = "DEMO_EXPORT", unit = "kWh" }},
    {{ quantity = "total_energy", import_id = "DEMO_TOTAL", unit = "kWh" }},
    {{ quantity = "active_power_total", import_id = "DEMO_POWER", unit = "kW", kind = "data_point" }},
    {{ quantity = "voltage_l1", import_id = "DEMO_U1", unit = "V", kind = "data_point" }},
    {{ quantity = "frequency", import_id = "DEMO_FREQ", unit = "Hz", kind = "data_point" }},
  ]

[[modbus_rtu]]
name = "demo-rs485"
port = "{rtu}"
baud = 9600
parity = "even"
timeout = "500ms"
delay = "0ms"

  [[modbus_rtu.meter]]
  name = "sub-1"
  unit_id = 1
  interval = "2s"
  profile = "eastron-sdm630"
  channels = [
    {{ quantity = "import_energy_total", import_id = "RTU1_IMPORT", unit = "kWh" }},
    {{ quantity = "active_power_total", import_id = "RTU1_POWER", unit = "kW", kind = "data_point" }},
  ]

  [[modbus_rtu.meter]]
  name = "sub-2"
  unit_id = 2
  interval = "2s"
  profile = "eastron-sdm630"
  channels = [
    {{ quantity = "import_energy_total", import_id = "RTU2_IMPORT", unit = "kWh" }},
    {{ quantity = "voltage_l1", import_id = "RTU2_U1", unit = "V", kind = "data_point" }},
  ]

[[mbus]]
name = "demo-mbus"
port = "{mbus}"
baud = 2400
timeout = "auto"

  [[mbus.meter]]
  name = "heat-flat-12"
  address = 5
  interval = "2s"
  channels = [
    {{ quantity = "energy", import_id = "HEAT_ENERGY", unit = "kWh" }},
    {{ quantity = "volume", import_id = "HEAT_VOLUME", unit = "m3" }},
    {{ quantity = "flow_temperature", import_id = "HEAT_TFLOW", unit = "°C", kind = "data_point" }},
  ]
"#,
        token = dir.join("token").display(),
        queue = dir.join("queue.db").display(),
        rtu = rtu.display(),
        mbus = mbus.display(),
    )
}

pub async fn run(seconds: u64) -> Exit {
    let dir = match temp_dir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot create a temporary directory: {e}");
            return Exit::Failure;
        }
    };
    let exit = demo(&dir, Duration::from_secs(seconds.max(1))).await;
    let _ = std::fs::remove_dir_all(&dir);
    exit
}

async fn demo(dir: &std::path::Path, length: Duration) -> Exit {
    let api = match StandIn::start(CUSTOMER, TOKEN).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: cannot start the stand-in API: {e}");
            return Exit::Failure;
        }
    };
    let tcp = match SimModbus::start(vec![SimMeter::sdm630(1)]).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot start the simulated Modbus TCP meter: {e}");
            return Exit::Failure;
        }
    };
    // An RS-485 line on a pseudo-terminal, with the wire time of 9600 baud 8E1 emulated.
    let timing = LineTiming {
        baud: 9600,
        bits_per_char: 11,
        latency: Duration::from_millis(5),
    };
    let meters = vec![
        SimMeter::sdm630(1),
        SimMeter::sdm630(2).with_f32(Table::Input, 0x0048, 52_117.5),
    ];
    let rtu = match SimRtuBus::start(meters, Some(timing)).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the simulated RS-485 line: {e}");
            return Exit::Failure;
        }
    };
    // A wired M-Bus with a heat meter behind a (simulated) level converter.
    let mbus = match SimMbus::start(
        vec![SimSlave::heat_meter(5, 12345678)],
        MbusLineOptions::default(),
    )
    .await
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: cannot start the simulated M-Bus: {e}");
            return Exit::Failure;
        }
    };
    // Private like a real token file, so the demo does not warn about its own file.
    let written = std::fs::write(dir.join("token"), TOKEN).and_then(|()| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.join("token"), std::fs::Permissions::from_mode(0o600))
    });
    if let Err(e) = written {
        eprintln!("error: cannot write the demo token: {e}");
        return Exit::Failure;
    }
    let text = config_text(&api.base_url(), dir, tcp.addr(), &rtu.path(), &mbus.path());
    let config = match Config::parse(&text, &dir.join("config.toml")) {
        Ok(c) => c,
        Err(e) => {
            super::print_config_error(&e);
            return Exit::Failure;
        }
    };
    let channels: Vec<String> = config
        .series()
        .iter()
        .map(|(_, _, o)| o.series.import_id.clone())
        .collect();
    println!(
        "enectiva-collector demo: {} s on loopback, nothing leaves this machine",
        length.as_secs()
    );
    println!("  Enectiva API stand-in  {}", api.base_url());
    println!(
        "  Modbus TCP meter       {} (simulated Eastron SDM630, unit 1, read every 2 s)",
        tcp.addr()
    );
    println!(
        "  Modbus RTU line         {} (two simulated SDM630s, units 1 and 2, 9600 baud 8E1 wire time emulated)",
        rtu.path().display()
    );
    println!(
        "  M-Bus line             {} (a simulated Kamstrup-style heat meter at primary address 5, 2400 baud 8E1)",
        mbus.path().display()
    );
    println!(
        "  queue                  {}",
        dir.join("queue.db").display()
    );
    println!("deliveries (as the API accepted them):");

    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(app::run_with(
        config,
        |q| QueueOptions {
            commit_window: Duration::from_millis(100),
            ..QueueOptions::from_settings(q)
        },
        |a| SenderSettings {
            rescan: Duration::from_millis(500),
            ..SenderSettings::from_api(a)
        },
        shutdown.clone(),
    ));
    let started = Instant::now();
    let mut shown = 0;
    while started.elapsed() < length && !daemon.is_finished() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let accepted = api.accepted();
        for a in &accepted[shown.min(accepted.len())..] {
            println!(
                "  [{:>5.1}s] {:<10} {:<12} {:>12} {:<4} at {}",
                started.elapsed().as_secs_f64(),
                a.kind,
                a.import_id,
                a.raw_value,
                a.unit.as_deref().unwrap_or(""),
                a.time
            );
        }
        shown = accepted.len();
    }
    shutdown.cancel();
    let result = match daemon.await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: the pipeline task failed: {e}");
            return Exit::Failure;
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        return Exit::Failure;
    }
    let mut per_series: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for a in api.accepted() {
        let e = per_series.entry(a.import_id.clone()).or_default();
        e.0 += 1;
        e.1 = format!("{} {}", a.raw_value, a.unit.unwrap_or_default());
    }
    println!(
        "summary: {} readings delivered in {:.1} s, {} Modbus TCP and {} Modbus RTU requests, {} M-Bus telegrams",
        api.accepted_count(),
        started.elapsed().as_secs_f64(),
        tcp.requests(),
        rtu.requests(),
        mbus.requests().len()
    );
    let mut missing = Vec::new();
    for ch in &channels {
        match per_series.get(ch) {
            Some((n, last)) => println!("  {ch:<12} {n:>3} delivered, last {last}"),
            None => {
                println!("  {ch:<12}   0 delivered");
                missing.push(ch.clone());
            }
        }
    }
    tcp.stop().await;
    rtu.close().await;
    mbus.close().await;
    api.stop().await;
    if missing.is_empty() {
        println!(
            "every channel was delivered. Next: copy config/example.toml, describe your meters, run `enectiva-collector check`."
        );
        Exit::Ok
    } else {
        eprintln!("error: no delivery for {}", missing.join(", "));
        Exit::Failure
    }
}
