//! R8 — corruption: random pages of the queue file overwritten, the file truncated, the
//! write-ahead log damaged, a zero-length file, a file that is not SQLite. Each trial puts back
//! a queue with pending readings (made by the daemon itself while the API was down: one copy
//! stopped cleanly, everything in the main file; one killed with `kill -9`, the newest
//! readings only in the WAL), damages it and starts the daemon against a fresh stand-in API.
//! Within 10 s the daemon must log "running" and deliver a reading read after the restart; it
//! stays up, logs the event with its MESSAGE_ID, and delivers every reading it carried over
//! from the damaged file (as many as the set-aside event says it salvaged; after WAL damage,
//! as many as SQLite itself can still see).
//!
//! Some page-damage and truncation trials turn off the `quick_check` at open
//! (`ENECTIVA_TEST_QUEUE=quick_check_max=0`), as for a queue above 32 MiB after a clean stop:
//! the damage is then found by a later statement and the file is set aside at run time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use enectiva_collector::events;
use enectiva_collector::sim::api::Mode;

use crate::harness::{Rng, World, epoch, key, queue_rows, size, wait_until};

/// (import id, epoch seconds, value key): one reading.
type Key = (String, i64, u64);

/// R8's bound from start to running and delivering.
const LIMIT: Duration = Duration::from_secs(10);
/// How long a trial may take at most before it fails (bounded waits).
const TRIAL: Duration = Duration::from_secs(40);
const PAGE: usize = 4096;
/// The queue's files a trial replaces.
const FILES: [&str; 5] = [
    "queue.db",
    "queue.db-wal",
    "queue.db-shm",
    "queue.db-journal",
    "queue.db-acks",
];
/// Readings pending in the cleanly stopped queue, and added in the killed run (mostly in WAL).
const CLEAN_ROWS: usize = 600;
const CRASH_ROWS: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Damage {
    Pages,
    Truncated,
    Wal,
    Empty,
    NotSqlite,
}

impl Damage {
    fn name(self) -> &'static str {
        match self {
            Damage::Pages => "random pages",
            Damage::Truncated => "truncated",
            Damage::Wal => "WAL damaged",
            Damage::Empty => "zero-length",
            Damage::NotSqlite => "not SQLite",
        }
    }

    fn message_id(self) -> &'static str {
        match self {
            Damage::Wal => events::QUEUE_WAL_DAMAGED,
            _ => events::QUEUE_SET_ASIDE,
        }
    }
}

/// A queue with pending readings, kept to be copied back before each trial.
struct Template {
    dir: std::path::PathBuf,
    rows: BTreeSet<Key>,
}

struct Outcome {
    damage: Damage,
    what: String,
    running: Duration,
    delivering: Duration,
    pending: usize,
    carried: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r8_damaged_queue_recovers_within_10_s() {
    let started = Instant::now();
    let mut rng = Rng::new("r8");
    let plan = [
        (Damage::Pages, size(6, 40)),
        (Damage::Truncated, size(3, 12)),
        (Damage::Wal, size(4, 24)),
        (Damage::Empty, size(1, 4)),
        (Damage::NotSqlite, size(1, 4)),
    ];
    let mut world = World::new(10, 10, "1s").await;
    let (clean, crash) = prepare(&world, &mut rng).await;
    println!(
        "r8: templates: {} readings pending after a clean stop, {} after kill -9 ({} s)",
        clean.rows.len(),
        crash.rows.len(),
        started.elapsed().as_secs()
    );
    let mut outcomes = Vec::new();
    for (damage, trials) in plan {
        for n in 0..trials {
            let template = if damage == Damage::Wal {
                &crash
            } else {
                &clean
            };
            let o = trial(&mut world, template, damage, n, &mut rng).await;
            println!(
                "r8: {} #{n}: {}: running after {:.2} s, delivering after {:.2} s, {}/{} pending readings carried over",
                damage.name(),
                o.what,
                o.running.as_secs_f64(),
                o.delivering.as_secs_f64(),
                o.carried,
                o.pending
            );
            outcomes.push(o);
        }
    }
    let mut per: BTreeMap<Damage, Vec<&Outcome>> = BTreeMap::new();
    for o in &outcomes {
        per.entry(o.damage).or_default().push(o);
    }
    let parts: Vec<String> = per
        .iter()
        .map(|(d, os)| {
            let max = |f: fn(&Outcome) -> Duration| {
                os.iter()
                    .map(|o| f(o))
                    .max()
                    .unwrap_or_default()
                    .as_secs_f64()
            };
            let carried: Vec<String> = os
                .iter()
                .map(|o| format!("{}/{}", o.carried, o.pending))
                .collect();
            format!(
                "{}: {} trials, max {:.1} s to running, {:.1} s to delivering, carried over {}",
                d.name(),
                os.len(),
                max(|o| o.running),
                max(|o| o.delivering),
                carried.join(" ")
            )
        })
        .collect();
    println!(
        "R8: {}; {} trials in {:.0} s",
        parts.join("; "),
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
    for o in &outcomes {
        assert!(
            o.running <= LIMIT && o.delivering <= LIMIT,
            "{} ({}): running after {:?}, delivering after {:?}",
            o.damage.name(),
            o.what,
            o.running,
            o.delivering
        );
    }
}

/// Runs the daemon with the API down until readings pile up: once stopped cleanly, once
/// killed. Returns the two queues as templates.
async fn prepare(world: &World, rng: &mut Rng) -> (Template, Template) {
    let qp = world.queue_path();
    world.api.set_mode(Mode::Down).await.expect("api down");
    let d = world.start(&[]);
    assert!(d.wait_running().await, "{}", d.log_text());
    let piled = wait_until(TRIAL, || queue_rows(&qp).len() >= CLEAN_ROWS).await;
    assert!(piled, "readings did not pile up: {}", d.log_text());
    let (code, _, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    let clean = save(world, "clean");
    let d = world.start(&[]);
    assert!(d.wait_running().await, "{}", d.log_text());
    let target = clean.rows.len() + CRASH_ROWS;
    let piled = wait_until(TRIAL, || queue_rows(&qp).len() >= target).await;
    assert!(piled, "readings did not pile up: {}", d.log_text());
    tokio::time::sleep(Duration::from_millis(rng.range(0, 700))).await;
    d.kill9();
    let crash = save(world, "crash");
    let wal = std::fs::metadata(world.dir.path().join("queue.db-wal")).map_or(0, |m| m.len());
    assert!(wal > 0, "the killed run left no WAL");
    (clean, crash)
}

fn copy_files(from: &Path, to: &Path) {
    for f in FILES {
        let src = from.join(f);
        if src.exists() {
            std::fs::copy(&src, to.join(f)).expect("copy");
        }
    }
}

fn save(world: &World, name: &str) -> Template {
    let dir = world.dir.path().join(format!("template-{name}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    copy_files(world.dir.path(), &dir);
    let rows = rows_of(&dir);
    Template { dir, rows }
}

/// The readings SQLite can read from the queue files in `dir` (read on a scratch copy: opening
/// a WAL database writes its `-shm`).
fn rows_of(dir: &Path) -> BTreeSet<Key> {
    let scratch = tempfile::tempdir().expect("tempdir");
    copy_files(dir, scratch.path());
    queue_rows(&scratch.path().join("queue.db"))
        .into_iter()
        .map(|(id, t, v)| (id, t, key(v)))
        .collect()
}

fn overwrite(bytes: &mut [u8], rng: &mut Rng) {
    for b in bytes {
        *b = rng.next() as u8;
    }
}

/// Damages the queue files in `dir`; says what was done.
fn damage(dir: &Path, damage: Damage, n: usize, rng: &mut Rng) -> String {
    let db = dir.join("queue.db");
    match damage {
        Damage::Pages => {
            let mut bytes = std::fs::read(&db).expect("read");
            let pages = bytes.len() / PAGE;
            let count = (rng.range(1, 17) as usize).min(pages);
            // Partial Fisher-Yates: `count` distinct pages; every third trial hits page 1.
            let mut all: Vec<usize> = (0..pages).collect();
            for i in 0..count {
                let j = if i == 0 && n % 3 == 0 {
                    0
                } else {
                    rng.range(i as u64, pages as u64) as usize
                };
                all.swap(i, j);
            }
            let mut chosen: Vec<usize> = all[..count].to_vec();
            chosen.sort_unstable();
            for p in &chosen {
                overwrite(&mut bytes[p * PAGE..(p + 1) * PAGE], rng);
            }
            std::fs::write(&db, &bytes).expect("write");
            let list: Vec<String> = chosen.iter().map(|p| (p + 1).to_string()).collect();
            format!(
                "{count} of {pages} pages overwritten (page {})",
                list.join(",")
            )
        }
        Damage::Truncated => {
            let len = std::fs::metadata(&db).expect("meta").len();
            let to = match n % 3 {
                0 => rng.range(len / 4, len * 3 / 4),
                1 => rng.range(1, len / 4) / PAGE as u64 * PAGE as u64,
                _ => rng.range(1, 100),
            };
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&db)
                .expect("open");
            f.set_len(to).expect("truncate");
            format!("truncated from {len} to {to} bytes")
        }
        Damage::Wal => {
            let path = dir.join("queue.db-wal");
            let mut wal = std::fs::read(&path).expect("read wal");
            let page = u32::from_be_bytes([wal[8], wal[9], wal[10], wal[11]]) as usize;
            let frame = 24 + page;
            let frames = (wal.len() - 32) / frame;
            let commits: Vec<usize> = (0..frames)
                .filter(|i| {
                    let o = 32 + i * frame + 4;
                    wal[o..o + 4] != [0, 0, 0, 0]
                })
                .collect();
            let last_commit = commits.last().copied().unwrap_or(0);
            let what = if n % 4 == 3 || last_commit == 0 {
                // The header: salts and checksum.
                let at = rng.range(12, 28) as usize;
                overwrite(&mut wal[at..at + 4], rng);
                format!(
                    "WAL header bytes {at}..{} overwritten ({frames} frames, {} commits)",
                    at + 4,
                    commits.len()
                )
            } else {
                let f = rng.range(0, last_commit as u64) as usize;
                let len = rng.range(8, 65) as usize;
                let off = rng.range(0, (frame - len) as u64) as usize;
                let at = 32 + f * frame + off;
                overwrite(&mut wal[at..at + len], rng);
                format!(
                    "frame {} of {frames} ({} commits) overwritten at byte {off}, {len} bytes",
                    f + 1,
                    commits.len()
                )
            };
            std::fs::write(&path, &wal).expect("write wal");
            what
        }
        Damage::Empty => {
            std::fs::write(&db, b"").expect("write");
            for f in ["queue.db-wal", "queue.db-shm"] {
                let _ = std::fs::remove_file(dir.join(f));
            }
            "zero-length queue.db".into()
        }
        Damage::NotSqlite => {
            let line = "this is a text file, not an SQLite database; it is 64 KiB long.\n";
            let text = line.repeat(64 * 1024 / line.len() + 1);
            std::fs::write(&db, &text.as_bytes()[..64 * 1024]).expect("write");
            for f in ["queue.db-wal", "queue.db-shm"] {
                let _ = std::fs::remove_file(dir.join(f));
            }
            "64 KiB of text".into()
        }
    }
}

/// The log without ANSI colour sequences (`ESC [ … letter`).
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `salvaged=N` of the first set-aside event in the log.
fn salvaged(log: &str) -> Option<usize> {
    let log = plain(log);
    let line = log.lines().find(|l| l.contains(events::QUEUE_SET_ASIDE))?;
    let rest = &line[line.find("salvaged=")? + "salvaged=".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

async fn trial(
    world: &mut World,
    template: &Template,
    kind: Damage,
    n: usize,
    rng: &mut Rng,
) -> Outcome {
    world.replace_api().await;
    let dir = world.dir.path().to_path_buf();
    for f in FILES {
        let _ = std::fs::remove_file(dir.join(f));
    }
    copy_files(&template.dir, &dir);
    let what = damage(&dir, kind, n, rng);
    // After WAL damage SQLite reads the valid prefix: that is what can be carried over.
    let visible = (kind == Damage::Wal).then(|| rows_of(&dir));
    let runtime = matches!(kind, Damage::Pages | Damage::Truncated) && n % 2 == 1;
    let env: &[(&str, &str)] = if runtime {
        &[("ENECTIVA_TEST_QUEUE", "quick_check_max=0")]
    } else {
        &[]
    };
    let what = if runtime {
        format!("{what}, no quick_check at open")
    } else {
        what
    };
    let mut d = world.start(env);
    let old = |a: &enectiva_collector::sim::api::Accepted| {
        template
            .rows
            .contains(&(a.import_id.clone(), epoch(&a.time), key(a.value)))
    };
    let (mut running, mut delivering) = (None, None);
    let deadline = Instant::now() + TRIAL;
    while Instant::now() < deadline && (running.is_none() || delivering.is_none()) {
        if let Ok(Some(status)) = d.child.try_wait() {
            panic!(
                "{} ({what}): the daemon exited ({status}):\n{}",
                kind.name(),
                d.log_text()
            );
        }
        if running.is_none() && d.log_text().contains(" running") {
            running = Some(d.started.elapsed());
        }
        if delivering.is_none() && world.api.accepted().iter().any(|a| !old(a)) {
            delivering = Some(d.started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (Some(running), Some(delivering)) = (running, delivering) else {
        let (_, _, log) = d.stop();
        panic!(
            "{} ({what}): not running and delivering after {TRIAL:?}:\n{log}",
            kind.name()
        );
    };
    // Everything carried over is delivered: no reading of the template is left in the queue.
    let qp = world.queue_path();
    let drained = wait_until(TRIAL, || {
        queue_rows(&qp)
            .into_iter()
            .all(|(id, t, v)| !template.rows.contains(&(id, t, key(v))))
    })
    .await;
    let alive = matches!(d.child.try_wait(), Ok(None));
    let (code, _, log) = d.stop();
    assert!(alive, "{} ({what}): the daemon exited:\n{log}", kind.name());
    assert!(
        drained,
        "{} ({what}): carried-over readings not delivered:\n{log}",
        kind.name()
    );
    assert_eq!(code, Some(0), "{} ({what}): {log}", kind.name());
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.contains(kind.message_id()),
        "{} ({what}): no event with MESSAGE_ID {}:\n{log}",
        kind.name(),
        kind.message_id()
    );
    let delivered: BTreeSet<Key> = world
        .api
        .accepted()
        .iter()
        .map(|a| (a.import_id.clone(), epoch(&a.time), key(a.value)))
        .collect();
    let carried = template.rows.intersection(&delivered).count();
    match &visible {
        Some(visible) => {
            let expected = template.rows.intersection(visible).count();
            assert_eq!(
                carried,
                expected,
                "{} ({what}): SQLite sees {expected} readings, {carried} delivered:\n{log}",
                kind.name()
            );
        }
        None => {
            let said = salvaged(&log);
            assert_eq!(
                Some(carried),
                said,
                "{} ({what}): the event says {said:?} salvaged, {carried} delivered:\n{log}",
                kind.name()
            );
        }
    }
    Outcome {
        damage: kind,
        what,
        running,
        delivering,
        pending: template.rows.len(),
        carried,
    }
}
