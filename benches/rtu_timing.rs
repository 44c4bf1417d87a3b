//! RS-485 cycle time against the theoretical minimum: ten SDM630-profile meters with ten
//! channels each (two requests per meter: `input 0x0000+80` and `0x0156+2`) on one simulated
//! line with the wire time of 9600 baud 8E1 emulated per frame and `delay = 0`, read by the
//! daemon's own RTU link and poller. The model is modbus.md §4.3: per transaction, request
//! frame + t3.5 + meter latency + answer frame + t3.5. Run with `cargo bench --bench
//! rtu_timing`; figures go into BENCHMARKS.md, nothing is asserted.

use std::time::{Duration, Instant};

use enectiva_collector::config::{Config, Parity};
use enectiva_collector::modbus::poll::MeterPoller;
use enectiva_collector::modbus::rtu::{RtuLink, SerialSettings};
use enectiva_collector::sim::modbus::SimMeter;
use enectiva_collector::sim::rtu::{LineTiming, SimRtuBus};

const METERS: u8 = 10;
const CYCLES: usize = 5;

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let latency = Duration::from_millis(5);
        let timing = LineTiming {
            baud: 9600,
            bits_per_char: 11,
            latency,
        };
        let line = SimRtuBus::start((1..=METERS).map(SimMeter::sdm630).collect(), Some(timing))
            .await
            .expect("line");
        let quantities = [
            "voltage_l1", "voltage_l2", "voltage_l3", "current_l1", "current_l2", "current_l3",
            "active_power_total", "frequency", "import_energy_total", "total_energy",
        ];
        let mut text = format!(
            "[api]\ncustomer_id = \"0c7f4a52-2d1e-4e59-9b0a-6d1f3c2b8e11\"\n[[modbus_rtu]]\nname = \"rs485\"\nport = \"{}\"\nbaud = 9600\nparity = \"even\"\ndelay = \"0ms\"\n",
            line.path().display()
        );
        for unit in 1..=METERS {
            let channels: Vec<String> = quantities
                .iter()
                .map(|q| format!("{{ quantity = \"{q}\", import_id = \"M{unit}_{q}\", kind = \"data_point\" }}"))
                .collect();
            text.push_str(&format!(
                "  [[modbus_rtu.meter]]\n  name = \"m{unit}\"\n  unit_id = {unit}\n  profile = \"eastron-sdm630\"\n  channels = [ {} ]\n",
                channels.join(", ")
            ));
        }
        let config = Config::parse(&text, std::path::Path::new("bench.toml")).expect("config");
        let bus = &config.modbus_rtu[0];
        let mut pollers: Vec<MeterPoller> = bus.meters.iter().cloned().map(MeterPoller::new).collect();
        let mut link = RtuLink::new(SerialSettings {
            path: line.path(),
            baud: 9600,
            parity: Parity::Even,
            data_bits: 8,
            stop_bits: 1,
        });
        // The model, from the requests the planner makes.
        let mut model = Duration::ZERO;
        for p in &pollers {
            for r in &p.plan().requests {
                model += timing.frame_time(8) + timing.t35() + latency + timing.frame_time(5 + 2 * usize::from(r.count)) + timing.t35();
            }
        }
        // One warm-up cycle (opens the port), then measured cycles.
        for p in pollers.iter_mut() {
            p.poll(&mut link).await.expect("poll");
        }
        let started = Instant::now();
        for _ in 0..CYCLES {
            for p in pollers.iter_mut() {
                p.poll(&mut link).await.expect("poll");
            }
        }
        let cycle = started.elapsed() / CYCLES as u32;
        let requests: usize = pollers.iter().map(|p| p.plan().requests.len()).sum();
        println!(
            "RS-485 at 9600 baud 8E1, delay 0, simulator latency {} ms: {METERS} SDM630 meters × 10 channels, {requests} requests per cycle",
            latency.as_millis()
        );
        println!("  theoretical minimum cycle  {:>8.1} ms (modbus.md §4.3 model)", model.as_secs_f64() * 1000.0);
        println!("  measured cycle (mean of {CYCLES}) {:>8.1} ms", cycle.as_secs_f64() * 1000.0);
        println!("  ratio                      {:>8.3}", cycle.as_secs_f64() / model.as_secs_f64());
        line.close().await;
    });
}
