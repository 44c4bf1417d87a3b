//! R3 — disk full: the queue's state directory runs out of space while 10 meters × 10
//! channels are polled every second and the API is down, so the queue has a committed backlog.
//! As root the directory is a small tmpfs filled to the last byte by a filler file. Otherwise
//! (not root, `FAULTS_NO_ROOT=1`, or a mount the kernel refuses, e.g. in a container without
//! CAP_SYS_ADMIN; `FAULTS_REQUIRE_TMPFS=1` makes that a failure) the `shim/enospc.c`
//! LD_PRELOAD shim makes every write that would grow a queue file fail with ENOSPC while a flag
//! file exists; the figures line says which ran. The daemon must not exit (one process
//! throughout), log the disk-full ERROR (`QUEUE_DISK_FULL`) once, hold new readings in memory
//! up to its bound (`memory_limit=300`) and count the rest as dropped, keep delivering its
//! committed backlog once the API is back while the disk is still full, and resume committing
//! within 5 s after the space is freed (`QUEUE_DISK_OK`), the first commit carrying what
//! memory held. After a full drain the counters are exact: enqueued = delivered +
//! dead-lettered + dropped, and the distinct readings the stand-in accepted plus those dropped
//! are exactly the readings read.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use enectiva_collector::events;
use enectiva_collector::queue;
use enectiva_collector::sim::api::Mode;

use crate::harness::{
    Daemon, LONG, World, build_shim, committed_ids, count_message, delivered_set, is_root,
    move_queue, quick_check, readings_read, size, strip_ansi, wait_until,
};

/// Readings the daemon may hold in memory while the disk is full (`ENECTIVA_TEST_QUEUE`).
const MEMORY_LIMIT: usize = 300;
/// Channels per meter (all of them: 2 readings and 8 data points).
const CHANNELS: usize = 10;
/// Meters polled (every second).
const METERS: usize = 10;
/// What the first commit after recovery may carry beyond the memory bound: the readings that
/// arrived since the last failed retry (about one a second, each poll round is
/// `METERS * CHANNELS` readings), with room for a slow CI machine. Holding everything read
/// while the disk was full would carry several times more.
const RETRY_SLACK: usize = 3 * METERS * CHANNELS;

/// A tmpfs mounted for the scenario; unmounted when dropped, also when the test fails.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(dir.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it (a daemon being reaped): detach it now, gone when free.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// How the disk is made full, and freed again.
enum Fault {
    /// As root: a real filesystem out of space.
    Tmpfs { _mount: Tmpfs, filler: PathBuf },
    /// Without a tmpfs: writes that would grow a queue file fail with ENOSPC while `flag`
    /// exists; `why` says why this path ran.
    Shim {
        so: PathBuf,
        flag: PathBuf,
        why: String,
    },
}

impl Fault {
    fn name(&self) -> String {
        match self {
            Fault::Tmpfs { .. } => "tmpfs 8 MiB filled to ENOSPC, as root".into(),
            Fault::Shim { why, .. } => format!("ENOSPC LD_PRELOAD shim, {why}"),
        }
    }

    /// Fills the disk; returns the filler's size (0 for the shim).
    fn fill(&self) -> u64 {
        match self {
            Fault::Tmpfs { filler, .. } => {
                let mut f = std::fs::File::create(filler).expect("filler");
                let chunk = vec![0x5au8; 64 * 1024];
                let mut written = 0u64;
                // Bounded: the tmpfs is 8 MiB. Full chunks, then smaller ones to the last byte.
                let mut size = chunk.len();
                for _ in 0..100_000 {
                    match f.write(&chunk[..size]) {
                        Ok(0) => break,
                        Ok(n) => written += n as u64,
                        Err(e) if e.raw_os_error() == Some(28) => {
                            if size == 1 {
                                break;
                            }
                            size = (size / 2).max(1);
                        }
                        Err(e) => panic!("filler: {e}"),
                    }
                }
                let _ = f.sync_all();
                written
            }
            Fault::Shim { flag, .. } => {
                std::fs::write(flag, b"full").expect("flag");
                0
            }
        }
    }

    fn free(&self) {
        match self {
            Fault::Tmpfs { filler, .. } => std::fs::remove_file(filler).expect("remove filler"),
            Fault::Shim { flag, .. } => std::fs::remove_file(flag).expect("remove flag"),
        }
    }
}

/// The daemon, killed if the test fails before it is stopped (so the tmpfs can go).
struct Reaper(Option<Daemon>);

impl Reaper {
    fn d(&mut self) -> &mut Daemon {
        self.0.as_mut().expect("daemon")
    }

    /// The daemon's log so far, without colours.
    fn log(&self) -> String {
        strip_ansi(&self.0.as_ref().map(Daemon::log_text).unwrap_or_default())
    }

    /// The daemon is still the process we started: it never exited.
    fn assert_alive(&mut self, when: &str) {
        let d = self.d();
        let status = d.child.try_wait().expect("try_wait");
        assert!(
            status.is_none(),
            "the daemon exited {when} ({status:?}):\n{}",
            d.log_text()
        );
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            d.kill9();
        }
    }
}

/// The log from the line carrying `marker` on (empty when it is not there yet).
fn after<'a>(log: &'a str, marker: &str) -> &'a str {
    log.find(marker).map_or("", |i| &log[i..])
}

/// The log up to the line carrying `marker`.
fn before<'a>(log: &'a str, marker: &str) -> &'a str {
    log.find(marker).map_or(log, |i| &log[..i])
}

/// The `pending=` of the last `committed` line.
fn last_pending(log: &str) -> Option<u64> {
    log.lines()
        .filter(|l| l.contains("committed") && l.contains("max_id="))
        .filter_map(|l| {
            let rest = &l[l.find("pending=")? + "pending=".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .next_back()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_disk_full_holds_readings_counts_drops_and_resumes() {
    let _serial = crate::harness::one_at_a_time().await;
    let started = Instant::now();
    // How long the disk stays full after the backlog went out (long mode: more drops).
    let extra_full = Duration::from_secs(size(5, 60) as u64);
    let world = World::with_head(METERS, CHANNELS, "1s", "max_backoff = \"2s\"").await;
    let state = world.dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let tmpfs = if std::env::var_os("FAULTS_NO_ROOT").is_some() {
        Err("FAULTS_NO_ROOT=1".to_string())
    } else if !is_root() {
        Err("not root".to_string())
    } else {
        Tmpfs::mount(&state, "8m").map_err(|e| {
            assert!(
                std::env::var_os("FAULTS_REQUIRE_TMPFS").is_none(),
                "mount a tmpfs as root: {e}"
            );
            format!(
                "root but the tmpfs mount was refused: {}",
                e.lines().next().unwrap_or_default().trim()
            )
        })
    };
    let fault = match tmpfs {
        Ok(mount) => Fault::Tmpfs {
            _mount: mount,
            filler: state.join("filler"),
        },
        Err(why) => Fault::Shim {
            so: build_shim("enospc", world.dir.path()),
            flag: world.dir.path().join("disk-full"),
            why,
        },
    };
    let qp = move_queue(&world, &state);
    let limit = format!("memory_limit={MEMORY_LIMIT}");
    let mut env: Vec<(&str, String)> = vec![
        ("RUST_LOG", "info,enectiva_collector::queue=debug".into()),
        ("ENECTIVA_TEST_QUEUE", limit),
    ];
    if let Fault::Shim { so, flag, .. } = &fault {
        env.push(("LD_PRELOAD", so.to_str().expect("utf8").into()));
        env.push(("ENOSPC_DIR", state.to_str().expect("utf8").into()));
        env.push(("ENOSPC_FLAG", flag.to_str().expect("utf8").into()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // The API is down: the queue builds a committed backlog.
    world.api.set_mode(Mode::Down).await.expect("api down");
    let mut d = Reaper(Some(world.start(&env)));
    assert!(d.d().wait_running().await, "{}", d.d().log_text());
    assert!(
        wait_until(LONG, || committed_ids(&d.log()).len() >= 3).await,
        "no commits before the fault:\n{}",
        d.d().log_text()
    );

    // The disk fills up.
    let filler = fault.fill();
    let filled = Instant::now();
    assert!(
        wait_until(LONG, || d.log().contains(events::QUEUE_DISK_FULL)).await,
        "no disk-full ERROR:\n{}",
        d.log()
    );
    let detected = filled.elapsed();
    d.assert_alive("after the disk filled up");
    let log = d.log();
    let full_line = log
        .lines()
        .find(|l| l.contains(events::QUEUE_DISK_FULL))
        .unwrap_or_default()
        .to_string();
    assert!(full_line.contains("ERROR"), "{full_line}");
    let head = before(&log, events::QUEUE_DISK_FULL);
    let committed_before = committed_ids(head).into_iter().max().unwrap_or(0);
    let backlog = last_pending(head).unwrap_or(0);
    assert!(backlog > 0, "no committed backlog before the fault:\n{log}");

    // New readings beyond the memory bound are dropped (and counted, see the end).
    let read_at_full = readings_read(&world, CHANNELS);
    assert!(
        wait_until(LONG, || readings_read(&world, CHANNELS)
            >= read_at_full + MEMORY_LIMIT + 100)
        .await,
        "polling stopped while the disk was full"
    );
    d.assert_alive("with the memory bound reached");

    // The API returns while the disk is still full: the committed backlog goes out.
    world.api.set_mode(Mode::Normal).await.expect("api up");
    assert!(
        wait_until(LONG, || delivered_set(&world.api.accepted()).len() as u64
            >= backlog)
        .await,
        "the committed backlog ({backlog}) was not delivered while the disk was full: {} accepted\n{}",
        world.api.accepted_count(),
        d.log()
    );
    let delivered_while_full = delivered_set(&world.api.accepted()).len();
    tokio::time::sleep(extra_full).await;
    let log = d.log();
    assert!(
        !log.contains(events::QUEUE_DISK_OK),
        "the queue reported the disk writable while it was still full:\n{log}"
    );
    assert!(
        log.contains(events::QUEUE_DROPPED),
        "no drop WARN while the memory bound was exceeded:\n{log}"
    );
    d.assert_alive("while the disk was full");

    // Space returns: commits resume within seconds.
    fault.free();
    let freed = Instant::now();
    assert!(
        wait_until(LONG, || d.log().contains(events::QUEUE_DISK_OK)).await,
        "the queue did not resume after space was freed:\n{}",
        d.log()
    );
    let resumed = freed.elapsed();
    assert!(
        resumed <= Duration::from_secs(5),
        "resumed {resumed:?} after space was freed (promise: 5 s)"
    );
    assert!(
        wait_until(LONG, || !committed_ids(after(
            &d.log(),
            events::QUEUE_DISK_OK
        ))
        .is_empty())
        .await,
        "no commit after the disk became writable:\n{}",
        d.log()
    );
    let log = d.log();
    let first_after = committed_ids(after(&log, events::QUEUE_DISK_OK))
        .first()
        .copied()
        .unwrap_or(0);
    let carried = first_after - committed_before;
    assert!(
        carried >= MEMORY_LIMIT as i64,
        "the first commit after the disk returned carried {carried} readings, fewer than the {MEMORY_LIMIT} held in memory"
    );
    assert!(
        carried <= (MEMORY_LIMIT + RETRY_SLACK) as i64,
        "the first commit after the disk returned carried {carried} readings: more than the memory bound {MEMORY_LIMIT} allows (+{RETRY_SLACK} read since the last retry)"
    );
    d.assert_alive("after the disk returned");

    // Drain: the meters fall silent, so what was read is final; everything goes out.
    for sim in &world.meters {
        sim.set_silent(1, true);
    }
    let read = readings_read(&world, CHANNELS);
    let balanced = wait_until(LONG, || {
        let Ok(st) = queue::status(&qp) else {
            return false;
        };
        let dropped = st.counters.get("dropped").copied().unwrap_or(0) as usize;
        st.pending == 0 && delivered_set(&world.api.accepted()).len() + dropped == read
    })
    .await;
    d.assert_alive("at the end");
    let (code, _, log) = d.0.take().expect("daemon").stop();
    let log = strip_ansi(&log);
    assert_eq!(code, Some(0), "{log}");
    let st = queue::status(&qp).expect("status");
    let c = |k: &str| st.counters.get(k).copied().unwrap_or(0);
    let accepted = delivered_set(&world.api.accepted()).len();
    assert!(
        balanced,
        "after the drain: {accepted} accepted + {} dropped != {read} read; counters {:?}",
        c("dropped"),
        st.counters
    );
    assert_eq!(st.pending, 0);
    assert_eq!(
        c("enqueued"),
        c("delivered") + c("dead_lettered") + c("dropped"),
        "counters {:?}",
        st.counters
    );
    assert_eq!(c("dead_lettered"), 0, "counters {:?}", st.counters);
    assert!(
        c("dropped") > 0,
        "nothing was dropped: the bound was never reached"
    );
    assert_eq!(accepted as i64 + c("dropped"), read as i64);
    assert_eq!(
        accepted as i64,
        c("delivered"),
        "distinct readings accepted != delivered counter: {:?}",
        st.counters
    );
    assert_eq!(
        count_message(&log, events::QUEUE_DISK_FULL),
        1,
        "the disk-full ERROR must be logged once:\n{log}"
    );
    assert_eq!(count_message(&log, events::QUEUE_DISK_OK), 1, "{log}");
    assert_eq!(
        log.lines().filter(|l| l.contains(" running")).count(),
        1,
        "the daemon started more than once:\n{log}"
    );
    assert!(
        !log.contains(events::QUEUE_IO_ERROR),
        "a full disk was taken for an I/O error:\n{log}"
    );
    assert_eq!(quick_check(&qp), "ok");

    // A start on a full disk (power returns to a gateway whose disk filled up): SQLite cannot
    // create the `-wal` file, so the queue cannot open. The daemon must neither exit (a crash
    // loop under `Restart=on-failure`) nor report running; it waits and starts once space
    // returns, losing nothing that was queued.
    let pending_before = queue::status(&qp).expect("status").pending;
    fault.fill();
    let mut d = Reaper(Some(world.start(&env)));
    assert!(
        wait_until(LONG, || d.log().contains(events::QUEUE_DISK_FULL)).await,
        "no disk-full ERROR when starting on a full disk:\n{}",
        d.log()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    d.assert_alive("when started on a full disk");
    assert!(
        !d.log().contains(" running"),
        "running without a queue:\n{}",
        d.log()
    );
    fault.free();
    let freed_at_start = Instant::now();
    assert!(d.d().wait_running().await, "{}", d.log());
    let started_after_free = freed_at_start.elapsed();
    assert!(
        started_after_free <= Duration::from_secs(10),
        "running {started_after_free:?} after space was freed"
    );
    let (code, _, start_log) = d.0.take().expect("daemon").stop();
    let start_log = strip_ansi(&start_log);
    assert_eq!(code, Some(0), "{start_log}");
    assert_eq!(
        count_message(&start_log, events::QUEUE_DISK_FULL),
        1,
        "{start_log}"
    );
    assert!(
        !start_log.contains(events::QUEUE_SET_ASIDE),
        "a full disk was taken for a damaged queue:\n{start_log}"
    );
    assert_eq!(quick_check(&qp), "ok");
    assert!(queue::status(&qp).expect("status").pending >= pending_before);

    let mode = fault.name();
    let fill_note = match &fault {
        Fault::Tmpfs { .. } => format!("filler {} KiB", filler / 1024),
        Fault::Shim { .. } => "flag file".to_string(),
    };
    // Unmounts the tmpfs.
    drop(fault);

    println!(
        "R3 ({mode}): 1 process throughout, exit 0; disk-full ERROR logged once, {:.1} s after the fill ({fill_note}); {backlog} committed readings delivered while the disk was full ({delivered_while_full} accepted by then); memory bound {MEMORY_LIMIT}: first commit after recovery carried {carried} readings; resumed {:.1} s after space was freed; {read} read = {accepted} delivered + {} dropped; enqueued {} = delivered {} + dead-lettered {} + dropped {}; quick_check ok; started on a full disk: waited without exiting, running {:.1} s after space was freed; {:.0} s",
        detected.as_secs_f64(),
        resumed.as_secs_f64(),
        c("dropped"),
        c("enqueued"),
        c("delivered"),
        c("dead_lettered"),
        c("dropped"),
        started_after_free.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
