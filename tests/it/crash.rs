//! Crash safety at the library level: a child process commits readings and sends them to the
//! stand-in while the test kills it with SIGKILL at random moments and starts it again. No
//! reading the child saw committed may be lost; after a final drain the counters balance.
//!
//! The child is this same test binary, started with `CRASH_CHILD` set, running the same test
//! function, which then plays the child's part instead of the parent's.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use enectiva_collector::queue::{self, Queue, QueueOptions};
use enectiva_collector::reading::{Kind, Reading, Series};
use enectiva_collector::sender::{Sender, SenderSettings};
use enectiva_collector::sim::api::StandIn;
use tokio_util::sync::CancellationToken;

use crate::common::CUSTOMER;
const TOKEN: &str = "crash-token";
const KILLS: u64 = 12;
/// Values of run k are k × STRIDE + i, so they grow across runs (a cumulative counter).
const STRIDE: u64 = 1_000_000;

fn settings(base_url: String, token_file: &Path) -> SenderSettings {
    SenderSettings {
        max_in_flight: 4,
        max_backoff: Duration::from_secs(1),
        rescan: Duration::from_millis(100),
        ..crate::common::sender_settings(base_url, token_file)
    }
}

/// The child: commits batches of readings (printing what each commit made durable) while its
/// sender drains the queue; with `CRASH_DRAIN` it only drains and exits when the queue is empty.
fn child() {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let dir = std::path::PathBuf::from(var("CRASH_DIR"));
    let run: u64 = var("CRASH_RUN").parse().unwrap_or(0);
    let drain = !var("CRASH_DRAIN").is_empty();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let (q, _) = Queue::open(QueueOptions {
            commit_window: Duration::from_millis(20),
            ..QueueOptions::new(dir.join("queue.db"))
        })
        .expect("queue");
        let shutdown = CancellationToken::new();
        let sender =
            Sender::new(settings(var("CRASH_URL"), &dir.join("token")), q.clone()).expect("sender");
        let task = tokio::spawn(sender.run(shutdown.clone()));
        let mut out = std::io::stdout();
        if drain {
            loop {
                q.flush().await.expect("flush");
                if q.stats().await.expect("stats").pending == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            shutdown.cancel();
            let _ = task.await;
            q.close().await.expect("close");
            let _ = writeln!(out, "drained");
            return;
        }
        let mut i = 0u64;
        loop {
            let first = run * STRIDE + i;
            let batch: Vec<Reading> = (0..5)
                .map(|j| Reading {
                    series: Series::new(Kind::Reading, format!("S{}", j % 2), None),
                    time: 1_795_000_000 + (first + j) as i64,
                    value: (first + j) as f64,
                    unit: Some("kWh".into()),
                    clock_synced: true,
                    invalid: None,
                })
                .collect();
            let _ = writeln!(out, "generating {first} {}", first + 4);
            let rep = match q.commit(batch).await {
                Ok(rep) => rep,
                Err(e) => {
                    // What the daemon does with a fatal queue error: say so and exit 1.
                    let watched = q.fatal().borrow().is_some();
                    let _ = writeln!(out, "fatal watched={watched} {e}");
                    let _ = out.flush();
                    std::process::exit(1);
                }
            };
            assert_eq!(rep.committed, 5);
            let _ = writeln!(out, "committed {first} {}", first + 4);
            let _ = out.flush();
            i += 5;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });
}

fn spawn_child(dir: &Path, url: &str, run: u64, drain: bool) -> Child {
    let exe = std::env::current_exe().expect("exe");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "crash::committed_readings_survive_sigkill",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("CRASH_CHILD", "1")
    .env("CRASH_DIR", dir)
    .env("CRASH_URL", url)
    .env("CRASH_RUN", run.to_string())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    if drain {
        cmd.env("CRASH_DRAIN", "1");
    }
    cmd.spawn().expect("spawn child")
}

/// A small xorshift seeded from the clock: random kill moments without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn quick_check(path: &Path) -> String {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.query_row("PRAGMA quick_check", [], |r| r.get(0))
        .expect("quick_check")
}

#[test]
fn committed_readings_survive_sigkill() {
    if std::env::var_os("CRASH_CHILD").is_some() {
        child();
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let api = rt
        .block_on(StandIn::start(CUSTOMER, TOKEN))
        .expect("stand-in");
    let url = api.base_url();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), TOKEN).expect("token");
    let seed = Instant::now().elapsed().as_nanos() as u64
        ^ u64::from(std::process::id())
        ^ 0x9E37_79B9_7F4A_7C15;
    let mut rng = Rng(seed | 1);
    let mut committed = BTreeSet::new();
    let mut generated = BTreeSet::new();
    let started = Instant::now();
    for run in 0..KILLS {
        let mut child = spawn_child(dir.path(), &url, run, false);
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.push(line);
            }
            lines
        });
        // Wait for the first commit, then kill at a random moment (50–400 ms later).
        std::thread::sleep(Duration::from_millis(150 + rng.next() % 350));
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        for line in reader.join().expect("reader") {
            // libtest's own "test … ... " may precede the first line on the same line.
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [.., what, a, b] = parts.as_slice() else {
                continue;
            };
            let (what, a, b) = (Some(*what), Some(*a), Some(*b));
            let (Some(a), Some(b)) = (
                a.and_then(|x| x.parse::<u64>().ok()),
                b.and_then(|x| x.parse::<u64>().ok()),
            ) else {
                continue;
            };
            match what {
                Some("committed") => committed.extend(a..=b),
                Some("generating") => generated.extend(a..=b),
                _ => {}
            }
        }
        assert_eq!(
            quick_check(&dir.path().join("queue.db")),
            "ok",
            "after kill {run}"
        );
    }
    // The last run drains everything.
    let mut child = spawn_child(dir.path(), &url, KILLS, true);
    let status = child.wait().expect("drain");
    assert!(status.success(), "drain child failed");
    let accepted: Vec<u64> = api.accepted().iter().map(|a| a.value as u64).collect();
    let delivered: BTreeSet<u64> = accepted.iter().copied().collect();
    let lost: Vec<&u64> = committed.difference(&delivered).collect();
    assert!(
        lost.is_empty(),
        "{} committed readings never delivered: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let invented: Vec<&u64> = delivered.difference(&generated).collect();
    assert!(
        invented.is_empty(),
        "delivered readings never read: {invented:?}"
    );
    assert_eq!(
        accepted.len(),
        delivered.len(),
        "the stand-in stored a reading twice"
    );
    let duplicates = api
        .attempts()
        .iter()
        .filter(|a| a.status == Some(409))
        .count();
    let st = queue::status(&dir.path().join("queue.db")).expect("status");
    let c = |k: &str| st.counters.get(k).copied().unwrap_or(0);
    assert_eq!(st.pending, 0);
    assert_eq!(
        c("enqueued"),
        c("delivered") + c("dead_lettered") + c("dropped")
    );
    assert_eq!(c("dead_lettered") + c("dropped"), 0);
    // Per series, the API saw each series' values in increasing order, apart from re-sends.
    for s in ["S0", "S1"] {
        let vals: Vec<u64> = api
            .accepted()
            .iter()
            .filter(|a| a.import_id == s)
            .map(|a| a.value as u64)
            .collect();
        assert!(
            vals.windows(2).all(|w| w[0] < w[1]),
            "series {s} out of order"
        );
    }
    println!(
        "crash test: {KILLS} SIGKILLs, {} readings committed, {} delivered, {} re-sent after a kill (409), {:.1} s",
        committed.len(),
        delivered.len(),
        duplicates,
        started.elapsed().as_secs_f64()
    );
}

/// An I/O error on commit (every fsync fails from the 30th on, injected with strace): the
/// queue reports it as fatal instead of carrying on, nothing committed before is lost, and the
/// file is intact for the restart.
#[test]
fn io_error_on_commit_is_fatal_and_loses_nothing() {
    if std::env::var_os("CRASH_CHILD").is_some() {
        return;
    }
    if !crate::common::strace_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), TOKEN).expect("token");
    let exe = std::env::current_exe().expect("exe");
    let out = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=fsync,fdatasync",
            "-e",
            "inject=fsync,fdatasync:error=EIO:when=30+",
        ])
        .arg(exe)
        .args([
            "--exact",
            "crash::committed_readings_survive_sigkill",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CRASH_CHILD", "1")
        .env("CRASH_DIR", dir.path())
        .env("CRASH_URL", "http://127.0.0.1:9")
        .env("CRASH_RUN", "0")
        .stderr(Stdio::null())
        .output()
        .expect("strace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the child must stop with status 1:\n{stdout}"
    );
    assert!(
        stdout.contains("fatal watched=true"),
        "no fatal error reported:\n{stdout}"
    );
    assert!(stdout.contains("I/O error"), "{stdout}");
    let mut committed = BTreeSet::new();
    for line in stdout.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let [.., "committed", a, b] = parts.as_slice() {
            if let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) {
                committed.extend(a..=b);
            }
        }
    }
    assert!(!committed.is_empty());
    let path = dir.path().join("queue.db");
    assert_eq!(quick_check(&path), "ok");
    let conn = rusqlite::Connection::open(&path).expect("open");
    let mut stmt = conn.prepare("SELECT value FROM readings").expect("prepare");
    let present: BTreeSet<u64> = stmt
        .query_map([], |r| r.get::<_, f64>(0))
        .expect("query")
        .map(|v| v.expect("row") as u64)
        .collect();
    let lost: Vec<&u64> = committed.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "committed readings lost after the I/O error: {lost:?}"
    );
    println!(
        "io error test: {} readings committed before the injected EIO, all present",
        committed.len()
    );
}
