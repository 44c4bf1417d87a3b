//! R8 — corruption: random pages of the queue file overwritten, the file truncated, the
//! write-ahead log damaged, a zero-length file, a file that is not SQLite. Each trial puts back
//! a queue with pending readings (made by the daemon itself while the API was down: one copy
//! stopped cleanly, everything in the main file; one killed with `kill -9`, the newest
//! readings only in the WAL), damages it and starts the daemon against a fresh stand-in API.
//! Within 10 s the daemon must be running and deliver a reading read after the restart; it
//! stays up, logs the event with its MESSAGE_ID, tells the truth about what it carried over
//! (the set-aside event's `salvaged=`, the WAL event's `recovered=`), and delivers every
//! pending reading that was still readable.
//!
//! "Readable" is worked out here, independently of the daemon: where each pending reading's
//! bytes sit in the undamaged template (main-file pages, log frames), and whether one of those
//! places came through the damage intact. A log frame counts only if it can also be verified
//! (its checksum seed, stored just before it, intact) and a verifiable commit frame follows it:
//! a page that cannot be checked is not trusted with readings.
//!
//! Some page-damage and truncation trials turn off the `quick_check` at open
//! (`ENECTIVA_TEST_QUEUE=quick_check_max=0`), as for a queue above 32 MiB after a clean stop:
//! the damage is then found by a later statement and the file is set aside at run time.
//!
//! `R8_REASONS=1` prints each trial's event lines; `R8_KEEP=<dir>` keeps each trial's damaged
//! files and its template there, to take a failure apart.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

use enectiva_collector::events;
use enectiva_collector::sim::api::Mode;

use crate::harness::{QUANTITIES, Rng, World, epoch, import_id, key, queue_rows, size, wait_until};

/// (import id, epoch seconds, value key): one reading.
type Key = (String, i64, u64);

/// R8's bound from start to running and delivering.
const LIMIT: Duration = Duration::from_secs(10);
/// How long a trial may take at most before it fails (bounded waits).
const TRIAL: Duration = Duration::from_secs(40);
const PAGE: usize = 4096;
const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;
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
const METERS: usize = 10;

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

/// What a damage left intact, for the readable count.
enum Harm {
    /// Main-file pages overwritten (0-based).
    Pages(BTreeSet<usize>),
    /// The main file cut to this many bytes.
    Truncated(usize),
    /// These bytes of the log overwritten.
    Log(Range<usize>),
    /// The main file emptied; its log kept or removed.
    Empty {
        log_kept: bool,
    },
    NotSqlite,
}

/// Where one reading's bytes sit in a template.
#[derive(Debug, Clone, Copy)]
enum Place {
    /// Main-file page (0-based) and the offset just past `kind ‖ import id ‖ time` in it.
    Page(usize, usize),
    /// Log frame (0-based).
    Frame(usize),
}

/// A queue with pending readings, kept to be copied back before each trial.
struct Template {
    dir: std::path::PathBuf,
    rows: BTreeSet<Key>,
    places: BTreeMap<Key, Vec<Place>>,
    /// Bytes per log frame, and which frames are commit frames of the log's current round.
    frame_len: usize,
    commits: Vec<usize>,
    frames: usize,
}

struct Outcome {
    damage: Damage,
    what: String,
    running: Duration,
    delivering: Duration,
    pending: usize,
    readable: usize,
    carried: usize,
    logged: bool,
    harmless: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r8_damaged_queue_recovers_within_10_s() {
    let _serial = crate::harness::one_at_a_time().await;
    let started = Instant::now();
    let mut rng = Rng::new("r8");
    let plan = [
        (Damage::Pages, size(10, 60)),
        (Damage::Truncated, size(4, 20)),
        (Damage::Wal, size(6, 30)),
        (Damage::Empty, size(2, 6)),
        (Damage::NotSqlite, size(2, 6)),
    ];
    let mut world = World::new(METERS, 10, "1s").await;
    let (clean, crash) = prepare(&world, &mut rng).await;
    println!(
        "r8: templates: {} readings pending after a clean stop, {} after kill -9 ({} of {} log frames up to the last commit) ({} s)",
        clean.rows.len(),
        crash.rows.len(),
        crash.commits.last().map_or(0, |c| c + 1),
        crash.frames,
        started.elapsed().as_secs()
    );
    let mut outcomes = Vec::new();
    for (damage, trials) in plan {
        for n in 0..trials {
            // Odd zero-length trials keep the killed run's log beside the emptied file.
            let template = if damage == Damage::Wal || (damage == Damage::Empty && n % 2 == 1) {
                &crash
            } else {
                &clean
            };
            let o = trial(&mut world, template, damage, n, &mut rng).await;
            println!(
                "r8: {} #{n}: {}: running after {:.2} s, delivering after {:.2} s, {} of {} readable carried over ({} pending)",
                damage.name(),
                o.what,
                o.running.as_secs_f64(),
                o.delivering.as_secs_f64(),
                o.carried,
                o.readable,
                o.pending
            );
            outcomes.push(o);
        }
    }
    let count = |d: Damage| outcomes.iter().filter(|o| o.damage == d).count();
    let worst = outcomes
        .iter()
        .map(|o| o.running.max(o.delivering))
        .max()
        .unwrap_or_default();
    let mean = outcomes
        .iter()
        .map(|o| o.running.max(o.delivering).as_secs_f64())
        .sum::<f64>()
        / outcomes.len().max(1) as f64;
    let carried: usize = outcomes.iter().map(|o| o.carried).sum();
    let readable: usize = outcomes.iter().map(|o| o.readable).sum();
    let pending: usize = outcomes.iter().map(|o| o.pending).sum();
    let logged = outcomes.iter().filter(|o| o.logged).count();
    let harmless = outcomes.iter().filter(|o| o.harmless).count();
    println!(
        "R8: {} damages (pages ×{}, truncated ×{}, WAL ×{}, empty ×{}, not SQLite ×{}): delivering again after max {:.2} s (mean {:.2} s), rows carried over {carried} of {readable} readable ({pending} pending before the damage), MESSAGE_ID logged {logged}/{}{}; {:.0} s",
        outcomes.len(),
        count(Damage::Pages),
        count(Damage::Truncated),
        count(Damage::Wal),
        count(Damage::Empty),
        count(Damage::NotSqlite),
        worst.as_secs_f64(),
        mean,
        outcomes.len(),
        if harmless > 0 {
            format!(
                " ({harmless} overwritten only pages nothing reads: nothing lost, nothing to log)"
            )
        } else {
            String::new()
        },
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
    assert!(crash.frames > 0, "the killed run left no WAL");
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

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Every `kind ‖ import id ‖ time` in the live cells of a table-leaf page: a readings row
/// stores kind, import id, suit (empty here, so no bytes) and time next to each other, the time
/// in 4 bytes for these epochs. Only the cell content area counts: the rest of a page (and a
/// page that was a leaf before a split made it an interior page) can hold stale copies, which
/// are not the row.
fn find_rows(
    page: &[u8],
    ids: &[(String, &'static str)],
    mut found: impl FnMut(String, i64, usize),
) {
    if page.first() != Some(&0x0D) || page.len() < 8 {
        return;
    }
    let content = match usize::from(u16::from_be_bytes([page[5], page[6]])) {
        0 => 65536,
        n => n,
    };
    let bytes = page;
    for at in content..bytes.len() {
        for kind in ["reading", "data_point"] {
            if !bytes[at..].starts_with(kind.as_bytes()) {
                continue;
            }
            let after = at + kind.len();
            for (id, k) in ids {
                if *k != kind || !bytes[after..].starts_with(id.as_bytes()) {
                    continue;
                }
                let t = after + id.len();
                if let Some(time) = bytes.get(t..t + 4) {
                    let time = i64::from(i32::from_be_bytes([time[0], time[1], time[2], time[3]]));
                    found(id.clone(), time, t + 4);
                }
            }
        }
    }
}

fn save(world: &World, name: &str) -> Template {
    let dir = world.dir.path().join(format!("template-{name}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    copy_files(world.dir.path(), &dir);
    let rows = rows_of(&dir);
    let by_time: BTreeMap<(String, i64), Key> = rows
        .iter()
        .map(|k| ((k.0.clone(), k.1), k.clone()))
        .collect();
    let ids: Vec<(String, &'static str)> = (0..METERS)
        .flat_map(|m| {
            QUANTITIES.iter().map(move |q| {
                let kind = if q.contains("energy") {
                    "reading"
                } else {
                    "data_point"
                };
                (import_id(m, q), kind)
            })
        })
        .collect();
    let mut places: BTreeMap<Key, Vec<Place>> = BTreeMap::new();
    let main = std::fs::read(dir.join("queue.db")).expect("read");
    for (p, page) in main.chunks(PAGE).enumerate().skip(1) {
        find_rows(page, &ids, |id, time, end| {
            if let Some(k) = by_time.get(&(id, time)) {
                places
                    .entry(k.clone())
                    .or_default()
                    .push(Place::Page(p, end));
            }
        });
    }
    let wal = std::fs::read(dir.join("queue.db-wal")).unwrap_or_default();
    let (mut frame_len, mut commits, mut frames) = (PAGE + FRAME_HEADER, Vec::new(), 0);
    if wal.len() >= WAL_HEADER {
        frame_len = be32(&wal, 8) as usize + FRAME_HEADER;
        frames = (wal.len() - WAL_HEADER) / frame_len;
        for f in 0..frames {
            let frame = &wal[WAL_HEADER + f * frame_len..WAL_HEADER + (f + 1) * frame_len];
            // Frames of an earlier round of the log (other salts) are not the log's content.
            if frame[8..16] != wal[16..24] {
                continue;
            }
            if be32(frame, 4) != 0 {
                commits.push(f);
            }
            find_rows(&frame[FRAME_HEADER..], &ids, |id, time, _| {
                if let Some(k) = by_time.get(&(id, time)) {
                    places.entry(k.clone()).or_default().push(Place::Frame(f));
                }
            });
        }
    }
    // The finder must see every pending reading of the undamaged template, or "readable"
    // would undercount.
    let unplaced: Vec<&Key> = rows.iter().filter(|k| !places.contains_key(*k)).collect();
    assert!(
        unplaced.is_empty(),
        "{name}: {} readings not found in the files: {:?}",
        unplaced.len(),
        unplaced.iter().take(3).collect::<Vec<_>>()
    );
    Template {
        dir,
        rows,
        places,
        frame_len,
        commits,
        frames,
    }
}

/// How many of the template's pending readings still sit somewhere intact after `harm`.
fn readable(t: &Template, harm: &Harm) -> usize {
    let touches = |r: &Range<usize>, a: usize, b: usize| r.start < b && a < r.end;
    // A frame can be trusted when its bytes are intact and so is the checksum it is seeded
    // with (the previous frame's stored one; for the first, the header's stored one or the
    // header fields it is computed from).
    let verifiable = |f: usize| match harm {
        Harm::Log(r) => {
            let start = WAL_HEADER + f * t.frame_len;
            let seed = if f == 0 {
                !touches(r, 24, 32) || !touches(r, 0, 24)
            } else {
                let prev = start - t.frame_len;
                !touches(r, prev + 16, prev + 24)
            };
            seed && !touches(r, start, start + t.frame_len)
        }
        Harm::Empty { log_kept } => *log_kept,
        Harm::NotSqlite => false,
        Harm::Pages(_) | Harm::Truncated(_) => true,
    };
    // ...and a verifiable commit frame follows it (or is it).
    let last_commit = t.commits.iter().rev().find(|c| verifiable(**c)).copied();
    let frame_ok = |f: usize| verifiable(f) && last_commit.is_some_and(|c| f <= c);
    let page_ok = |p: usize, end: usize| match harm {
        Harm::Pages(hit) => !hit.contains(&p),
        // A page cut in two keeps the readings whose cells end before the cut: the value
        // (at most 8 bytes) and the unit (at most 3) follow the time.
        Harm::Truncated(len) => (p + 1) * PAGE <= *len || p * PAGE + end + 11 <= *len,
        Harm::Log(_) => true,
        Harm::Empty { .. } | Harm::NotSqlite => false,
    };
    t.rows
        .iter()
        .filter(|k| {
            t.places.get(*k).is_some_and(|ps| {
                ps.iter().any(|p| match *p {
                    Place::Page(p, end) => page_ok(p, end),
                    Place::Frame(f) => frame_ok(f),
                })
            })
        })
        .count()
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

/// Damages the queue files in `dir`; says what was done and what it hit.
fn damage(dir: &Path, damage: Damage, n: usize, rng: &mut Rng) -> (String, Harm) {
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
            let chosen: BTreeSet<usize> = all[..count].iter().copied().collect();
            for p in &chosen {
                overwrite(&mut bytes[p * PAGE..(p + 1) * PAGE], rng);
            }
            std::fs::write(&db, &bytes).expect("write");
            let list: Vec<String> = chosen.iter().map(|p| (p + 1).to_string()).collect();
            (
                format!(
                    "{count} of {pages} pages overwritten (page {})",
                    list.join(",")
                ),
                Harm::Pages(chosen),
            )
        }
        Damage::Truncated => {
            let len = std::fs::metadata(&db).expect("meta").len();
            let to = match n % 4 {
                0 => rng.range(len / 4, len * 3 / 4),
                1 => rng.range(1, len / 4) / PAGE as u64 * PAGE as u64,
                2 => rng.range(1, 100),
                _ => rng.range(len - 4 * PAGE as u64, len),
            };
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&db)
                .expect("open");
            f.set_len(to).expect("truncate");
            (
                format!("truncated from {len} to {to} bytes"),
                Harm::Truncated(to as usize),
            )
        }
        Damage::Wal => {
            let path = dir.join("queue.db-wal");
            let mut wal = std::fs::read(&path).expect("read wal");
            let page = be32(&wal, 8) as usize;
            let frame = FRAME_HEADER + page;
            let frames = (wal.len() - WAL_HEADER) / frame;
            let commits: Vec<usize> = (0..frames)
                .filter(|i| be32(&wal, WAL_HEADER + i * frame + 4) != 0)
                .collect();
            let last_commit = commits.last().copied().unwrap_or(0);
            let (what, range) = if n % 4 == 3 || last_commit == 0 {
                // The header: checkpoint sequence, salts, checksum.
                let at = rng.range(12, 28) as usize;
                overwrite(&mut wal[at..at + 4], rng);
                (
                    format!(
                        "WAL header bytes {at}..{} overwritten ({frames} frames, {} commits)",
                        at + 4,
                        commits.len()
                    ),
                    at..at + 4,
                )
            } else {
                let f = rng.range(0, last_commit as u64) as usize;
                let len = rng.range(8, 65) as usize;
                let off = rng.range(0, (frame - len) as u64) as usize;
                let at = WAL_HEADER + f * frame + off;
                overwrite(&mut wal[at..at + len], rng);
                (
                    format!(
                        "frame {} of {frames} ({} commits) overwritten at byte {off}, {len} bytes",
                        f + 1,
                        commits.len()
                    ),
                    at..at + len,
                )
            };
            std::fs::write(&path, &wal).expect("write wal");
            (what, Harm::Log(range))
        }
        Damage::Empty => {
            std::fs::write(&db, b"").expect("write");
            if n % 2 == 1 && dir.join("queue.db-wal").exists() {
                return (
                    "zero-length queue.db beside its WAL".into(),
                    Harm::Empty { log_kept: true },
                );
            }
            for f in ["queue.db-wal", "queue.db-shm"] {
                let _ = std::fs::remove_file(dir.join(f));
            }
            (
                "zero-length queue.db".into(),
                Harm::Empty { log_kept: false },
            )
        }
        Damage::NotSqlite => {
            let line = "this is a text file, not an SQLite database; it is 64 KiB long.\n";
            let text = line.repeat(64 * 1024 / line.len() + 1);
            std::fs::write(&db, &text.as_bytes()[..64 * 1024]).expect("write");
            for f in ["queue.db-wal", "queue.db-shm"] {
                let _ = std::fs::remove_file(dir.join(f));
            }
            ("64 KiB of text".into(), Harm::NotSqlite)
        }
    }
}

/// The number in `field=N` on the first log line with `message_id`.
fn field(log: &str, message_id: &str, field: &str) -> Option<usize> {
    let log = crate::harness::strip_ansi(log);
    let line = log.lines().find(|l| l.contains(message_id))?;
    let pat = format!(" {field}=");
    let rest = &line[line.find(&pat)? + pat.len()..];
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
    let (what, harm) = damage(&dir, kind, n, rng);
    let readable = readable(template, &harm);
    if let Some(keep) = std::env::var_os("R8_KEEP") {
        let to = Path::new(&keep).join(format!("{}-{n}", kind.name().replace(' ', "_")));
        std::fs::create_dir_all(&to).expect("keep");
        copy_files(&dir, &to);
        std::fs::create_dir_all(to.join("template")).expect("keep");
        copy_files(&template.dir, &to.join("template"));
    }
    // After WAL damage SQLite itself reads the valid prefix; the rest comes from the frames.
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
    // Pending readings the API had accepted when the event first showed in the log: at run
    // time some leave the old file (delivered) before the damage is found.
    let accepted_old = || world.api.accepted().iter().filter(|a| old(a)).count();
    let mut before_event: Option<usize> = None;
    let mut watch_event = |log: &str| {
        if before_event.is_none() && log.contains(kind.message_id()) {
            before_event = Some(accepted_old());
        }
    };
    let (mut running, mut delivering) = (None, None);
    let deadline = Instant::now() + TRIAL;
    while Instant::now() < deadline && (running.is_none() || delivering.is_none()) {
        watch_event(&d.log_text());
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
        watch_event(&d.log_text());
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
    let delivered: BTreeSet<Key> = world
        .api
        .accepted()
        .iter()
        .map(|a| (a.import_id.clone(), epoch(&a.time), key(a.value)))
        .collect();
    let carried = template.rows.intersection(&delivered).count();
    let logged = log.contains(kind.message_id());
    // Overwritten pages that nothing reads (free pages, the unused end of the file) are
    // harmless: nothing to log as long as nothing was lost.
    let harmless = !logged && kind == Damage::Pages && carried == template.rows.len();
    assert!(
        logged || harmless,
        "{} ({what}): no event with MESSAGE_ID {}:\n{log}",
        kind.name(),
        kind.message_id()
    );
    let text = crate::harness::strip_ansi(&log);
    let at_run_time = matches!(
        (text.find(kind.message_id()), text.find(" running")),
        (Some(event), Some(up)) if event > up
    );
    let what = match () {
        _ if harmless => format!("{what}, not noticed (nothing lost)"),
        _ if at_run_time => format!("{what}, found at run time"),
        _ => what,
    };
    if std::env::var_os("R8_REASONS").is_some() {
        for l in text.lines().filter(|l| l.contains(kind.message_id())) {
            println!("r8:   {l}");
        }
    }
    // Nothing readable lost.
    assert!(
        carried >= readable,
        "{} ({what}): {readable} pending readings were readable, {carried} delivered:\n{log}",
        kind.name()
    );
    // The event tells the truth about what was carried over.
    match &visible {
        Some(visible) => {
            let seen = template.rows.intersection(visible).count();
            let recovered = field(&log, events::QUEUE_WAL_DAMAGED, "recovered");
            assert_eq!(
                Some(carried),
                recovered.map(|r| seen + r),
                "{} ({what}): SQLite sees {seen} readings, the event says {recovered:?} recovered from the log, {carried} delivered:\n{log}",
                kind.name()
            );
        }
        None if harmless => {}
        None if at_run_time => {
            // The old file had delivered some pending readings (and taken new ones) by then:
            // every pending reading delivered was salvaged or accepted before the event.
            let said = field(&log, events::QUEUE_SET_ASIDE, "salvaged");
            let before = before_event.unwrap_or(carried);
            assert!(
                said.is_some_and(|s| s + before >= carried),
                "{} ({what}): the event says {said:?} salvaged, {before} delivered before it, {carried} delivered in all:\n{log}",
                kind.name()
            );
        }
        None => {
            let said = field(&log, events::QUEUE_SET_ASIDE, "salvaged");
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
        readable,
        carried,
        logged,
        harmless,
    }
}
