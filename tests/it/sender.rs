//! The sender end to end: readings committed through the library travel over real HTTP on
//! loopback to the stand-in API, which checks the wire format and fails on command.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enectiva_collector::config::IdField;
use enectiva_collector::queue::{self, DeadSelection, Queue, QueueOptions};
use enectiva_collector::reading::{Kind, Reading};
use enectiva_collector::sender::{Sender, SenderError, SenderSettings};
use enectiva_collector::sim::api::{Accepted, Answer, Mode, StandIn};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::common::{CUSTOMER, reading, sender_settings};

const TOKEN: &str = "test-token-123";

struct Rig {
    dir: tempfile::TempDir,
    queue: Queue,
    api: StandIn,
    token_file: PathBuf,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), SenderError>>>,
}

impl Rig {
    async fn start(token: &str, tune: impl FnOnce(&mut SenderSettings)) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = StandIn::start(CUSTOMER, TOKEN).await.expect("stand-in");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, token).expect("token");
        let (queue, _) = Queue::open(QueueOptions {
            commit_window: Duration::from_millis(20),
            state_interval: Duration::from_millis(100),
            ..QueueOptions::new(dir.path().join("queue.db"))
        })
        .expect("queue");
        let mut s = sender_settings(api.base_url(), &token_file);
        tune(&mut s);
        let shutdown = CancellationToken::new();
        let sender = Sender::new(s, queue.clone()).expect("sender");
        let task = Some(tokio::spawn(sender.run(shutdown.clone())));
        Rig {
            dir,
            queue,
            api,
            token_file,
            shutdown,
            task,
        }
    }

    async fn commit(&self, readings: Vec<Reading>) {
        let rep = self.queue.commit(readings).await.expect("commit");
        assert_eq!(rep.held, 0);
    }

    async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await.expect("join").expect("sender");
        }
        self.queue.close().await.expect("close");
        self.dir
    }

    /// Waits until the sender has processed every answer and the removals are committed.
    async fn drained(&self) -> queue::Stats {
        let deadline = Instant::now() + LONG;
        loop {
            self.queue.flush().await.expect("flush");
            let stats = self.queue.stats().await.expect("stats");
            if stats.pending == 0 || Instant::now() > deadline {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn queue_path(&self) -> PathBuf {
        self.dir.path().join("queue.db")
    }
}

/// `n` readings for each series, interleaved, times a minute apart.
fn interleaved(series: &[&str], n: usize) -> Vec<Reading> {
    let mut out = Vec::new();
    for i in 0..n {
        for s in series {
            out.push(reading(
                Kind::Reading,
                s,
                1_795_000_000 + 60 * i as i64,
                1000.0 + i as f64 * 0.5,
            ));
        }
    }
    out
}

fn of_series<'a>(acc: &'a [Accepted], id: &str) -> Vec<&'a Accepted> {
    acc.iter().filter(|a| a.import_id == id).collect()
}

/// Every series' accepted readings are exactly the committed ones, in order.
fn assert_in_order(acc: &[Accepted], series: &[&str], n: usize) {
    for s in series {
        let got: Vec<f64> = of_series(acc, s).iter().map(|a| a.value).collect();
        let want: Vec<f64> = (0..n).map(|i| 1000.0 + i as f64 * 0.5).collect();
        assert_eq!(got, want, "series {s}");
    }
}

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_in_order_per_series_exactly_once() {
    let rig = Rig::start(TOKEN, |_| {}).await;
    let series = ["A", "B", "C"];
    rig.commit(interleaved(&series, 40)).await;
    let mut data_point = reading(Kind::DataPoint, "TEMP", 1_795_000_000, 0.2301);
    data_point.unit = Some("kW".into());
    data_point.series.suit = Some("test".into());
    rig.commit(vec![data_point]).await;
    assert!(
        rig.api.wait_accepted(121, LONG).await,
        "accepted {}",
        rig.api.accepted_count()
    );
    let acc = rig.api.accepted();
    assert_in_order(&acc, &series, 40);
    // Exactly once: no request beyond the readings.
    assert_eq!(rig.api.attempts().len(), 121);
    let dp = acc
        .iter()
        .find(|a| a.import_id == "TEMP")
        .expect("data point");
    assert_eq!(
        (dp.kind, dp.raw_value.as_str(), dp.suit.as_deref()),
        ("data_point", "0.2301", Some("test"))
    );
    assert_eq!(dp.sender.as_deref(), Some("gateway-test"));
    assert_eq!(acc[0].time, "2026-11-18T11:06:40Z");
    // Keep-alive: far fewer connections than requests.
    assert!(
        rig.api.connections() <= 8,
        "{} connections",
        rig.api.connections()
    );
    let stats = rig.drained().await;
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.counters.get("delivered"), Some(&121));
    assert_eq!(stats.counters.get("duplicates"), None);
    rig.stop().await;
}

/// Accepts every connection on `addr` and closes it at once, noting when: to the sender a
/// connection failure like a refused port, but one that can be counted.
struct Slammer {
    accepted: Arc<Mutex<Vec<Instant>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Slammer {
    async fn start(addr: std::net::SocketAddr) -> Slammer {
        // tokio sets SO_REUSEADDR, so the stand-in's TIME_WAIT sockets do not block this.
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (accepted, stop) = (accepted.clone(), stop.clone());
            async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        a = listener.accept() => {
                            if a.is_ok() {
                                accepted.lock().expect("lock").push(Instant::now());
                            }
                        }
                    }
                }
            }
        });
        Slammer {
            accepted,
            stop,
            task,
        }
    }

    fn accepted(&self) -> Vec<Instant> {
        self.accepted.lock().expect("lock").clone()
    }

    /// Closes the listener (the port refuses again) and returns every accept time.
    async fn stop(self) -> Vec<Instant> {
        let Slammer {
            accepted,
            stop,
            task,
        } = self;
        stop.cancel();
        task.await.expect("join");
        accepted.lock().expect("lock").clone()
    }
}

/// Polls `cond` until it holds, at most [`LONG`]; false on timeout.
async fn until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + LONG;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Seconds between consecutive instants.
fn gaps(times: &[Instant]) -> Vec<f64> {
    times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64())
        .collect()
}

impl Rig {
    /// Readings waiting in the queue, with every acknowledgement applied.
    async fn pending(&self) -> u64 {
        self.queue.flush().await.expect("flush");
        self.queue.stats().await.expect("stats").pending
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_503_then_refused_backs_off_exponentially_accumulates_then_drains_in_order() {
    // Ceilings 25 ms, 50 ms, … 3.2 s, then the 4 s cap: nine failures per phase reach it.
    const BASE: Duration = Duration::from_millis(25);
    const CAP: Duration = Duration::from_secs(4);
    const FAILURES: usize = 9;
    // Scheduling and loopback latency a gap may add to its delay.
    const SLACK: f64 = 0.5;
    let ceiling = |k: usize| (BASE * (1u32 << k)).min(CAP).as_secs_f64();
    // One request at a time, so each failure draws exactly one delay from the schedule.
    let rig = Rig::start(TOKEN, |s| {
        s.backoff_base = BASE;
        s.max_backoff = CAP;
        s.max_in_flight = 1;
    })
    .await;
    let series = ["A", "B"];
    let all = interleaved(&series, 30);

    // 1. 503s: all series pause with the slow-down schedule. The last one asks for 2 s, so
    // the API can go away while nothing is being sent.
    rig.api.script(
        std::iter::repeat_n(Answer::Status(503), FAILURES)
            .chain([Answer::StatusRetryAfter(503, "2".into())]),
    );
    rig.commit(all[..20].to_vec()).await;
    assert_eq!(rig.pending().await, 20);
    assert!(
        until(|| rig
            .api
            .attempts()
            .iter()
            .filter(|a| a.status == Some(503))
            .count()
            > FAILURES)
        .await,
        "503s answered: {:?}",
        rig.api.attempts()
    );
    let slow_down: Vec<Instant> = rig.api.attempts().iter().map(|a| a.at).collect();

    // 2. Connection failures, counted: the network schedule starts again from the base.
    rig.api.set_mode(Mode::Down).await.expect("down");
    let slammer = Slammer::start(rig.api.addr()).await;
    rig.commit(all[20..40].to_vec()).await;
    assert_eq!(
        rig.pending().await,
        40,
        "readings pile up during the outage"
    );
    assert!(
        until(|| slammer.accepted().len() > FAILURES).await,
        "{} connection attempts",
        slammer.accepted().len()
    );
    let unreachable = slammer.stop().await;
    // 3. Refused (nothing listens) while more readings come.
    rig.commit(all[40..].to_vec()).await;
    assert_eq!(
        rig.pending().await,
        60,
        "readings pile up during the outage"
    );
    assert_eq!(rig.api.accepted_count(), 0);
    assert_eq!(
        rig.api.attempts().len(),
        FAILURES + 1,
        "no request reached the stand-in while it was away"
    );

    // Each delay is drawn from [0, ceiling_k] (full jitter, ceiling doubling to the cap).
    let mut early = Vec::new();
    let mut late = Vec::new();
    for (phase, times) in [("503", &slow_down[..]), ("unreachable", &unreachable[..])] {
        let g = gaps(&times[..=FAILURES]);
        for (k, gap) in g.iter().enumerate() {
            assert!(
                *gap <= ceiling(k) + SLACK,
                "{phase}: gap {k} is {gap:.3} s, ceiling {} s: {g:?}",
                ceiling(k)
            );
        }
        early.extend_from_slice(&g[..4]);
        late.extend_from_slice(&g[5..]);
    }
    // The ceiling grows: a schedule stuck at 25 ms could never wait 0.3 s. With full jitter
    // all eight later gaps (ceilings 0.8, 1.6, 3.2 and 4 s, twice) stay under 0.3 s with a
    // chance of (0.375 × 0.1875 × 0.094 × 0.075)² ≈ 2.4e-7.
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        max(&late) > 0.3 && max(&late) > max(&early),
        "no growth: early {early:?}, late {late:?}"
    );
    assert!(
        mean(&late) > mean(&early),
        "no growth: early {early:?}, late {late:?}"
    );

    // Back: everything is delivered once, in order per series, oldest first.
    rig.api.set_mode(Mode::Normal).await.expect("up");
    assert!(
        rig.api.wait_accepted(60, LONG).await,
        "accepted {}",
        rig.api.accepted_count()
    );
    let acc = rig.api.accepted();
    assert_eq!(acc.len(), 60);
    assert_in_order(&acc, &series, 30);
    let stats = rig.drained().await;
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.counters.get("delivered"), Some(&60));
    assert_eq!(stats.counters.get("dead_lettered"), None);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_series_answered_408_or_5xx_backs_off_alone_while_the_others_keep_sending() {
    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(2);
    const SLACK: f64 = 0.5;
    let ceiling = |k: usize| (BASE * (1u32 << k)).min(CAP).as_secs_f64();
    let rig = Rig::start(TOKEN, |s| {
        s.backoff_base = BASE;
        s.max_backoff = CAP;
        s.max_in_flight = 2;
    })
    .await;
    let failing = [("A", 500), ("B", 408), ("C", 502)];
    for (id, status) in failing {
        rig.api.reject_import_id(id, status);
    }
    let series = ["A", "B", "C", "D", "E"];
    rig.commit(interleaved(&series, 20)).await;
    // A, B and C hold the oldest readings, so a pause of all series (or a shared backoff)
    // would keep sending them first and D and E would starve.
    assert!(
        rig.api.wait_accepted(40, LONG).await,
        "the healthy series stalled: accepted {}",
        rig.api.accepted_count()
    );
    let acc = rig.api.accepted();
    assert_in_order(&acc, &["D", "E"], 20);
    let attempts_of = |id: &str| -> Vec<enectiva_collector::sim::api::Attempt> {
        rig.api
            .attempts()
            .into_iter()
            .filter(|a| a.import_id.as_deref() == Some(id))
            .collect()
    };
    let last_delivery = rig
        .api
        .attempts()
        .iter()
        .filter(|a| a.status == Some(201))
        .map(|a| a.at)
        .max()
        .expect("deliveries");
    for (id, _) in failing {
        assert!(
            attempts_of(id)
                .first()
                .is_some_and(|a| a.at < last_delivery),
            "{id} was not failing while the others were delivered"
        );
    }
    // Each failing series retries on its own schedule, with its own ceilings.
    assert!(
        until(|| failing.iter().all(|(id, _)| attempts_of(id).len() >= 7)).await,
        "a failing series stopped retrying"
    );
    for (id, status) in failing {
        let attempts = attempts_of(id);
        assert!(
            attempts
                .iter()
                .all(|a| a.status.is_none_or(|s| s == status)),
            "{id}: {attempts:?}"
        );
        let times: Vec<Instant> = attempts.iter().map(|a| a.at).collect();
        let g = gaps(&times[..7]);
        for (k, gap) in g.iter().enumerate() {
            assert!(
                *gap <= ceiling(k) + SLACK,
                "{id}: gap {k} is {gap:.3} s, ceiling {} s: {g:?}",
                ceiling(k)
            );
        }
    }
    assert_eq!(
        rig.pending().await,
        60,
        "nothing of the failing series is lost"
    );
    // Fixed: the failing series drain in order; nothing was dead-lettered.
    for (id, _) in failing {
        rig.api.clear_rejection(id);
    }
    assert!(
        rig.api.wait_accepted(100, LONG).await,
        "accepted {}",
        rig.api.accepted_count()
    );
    assert_in_order(&rig.api.accepted(), &series, 20);
    let stats = rig.drained().await;
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.counters.get("dead_lettered"), None);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_than_one_request_in_flight_per_series() {
    // Four slots but two series: the spare slots must stay unused.
    let rig = Rig::start(TOKEN, |s| s.max_in_flight = 4).await;
    rig.api.set_delay(Duration::from_millis(150));
    rig.commit(interleaved(&["A", "B"], 8)).await;
    assert!(
        rig.api.wait_accepted(16, LONG).await,
        "accepted {}",
        rig.api.accepted_count()
    );
    let c = rig.api.concurrency();
    assert_eq!(c.max_per_import_id.get("A"), Some(&1), "{c:?}");
    assert_eq!(c.max_per_import_id.get("B"), Some(&1), "{c:?}");
    // Both series were sent at once (the answers were held long enough to overlap).
    assert_eq!(c.max, 2, "{c:?}");
    assert_in_order(&rig.api.accepted(), &["A", "B"], 8);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_than_max_in_flight_requests_at_once() {
    let rig = Rig::start(TOKEN, |s| s.max_in_flight = 3).await;
    rig.api.set_delay(Duration::from_millis(150));
    let series = ["A", "B", "C", "D", "E", "F", "G", "H"];
    rig.commit(interleaved(&series, 3)).await;
    assert!(
        rig.api.wait_accepted(24, LONG).await,
        "accepted {}",
        rig.api.accepted_count()
    );
    let c = rig.api.concurrency();
    // Eight series were ready, three went at once: the limit is used and never exceeded.
    assert_eq!(c.max, 3, "{c:?}");
    assert_eq!(c.max_per_series(), 1, "{c:?}");
    assert_in_order(&rig.api.accepted(), &series, 3);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_pauses_everything() {
    let rig = Rig::start(TOKEN, |_| {}).await;
    rig.api.script([Answer::StatusRetryAfter(429, "3".into())]);
    rig.commit(interleaved(&["A", "B"], 5)).await;
    assert!(rig.api.wait_accepted(10, LONG).await);
    let attempts = rig.api.attempts();
    let first = attempts
        .iter()
        .position(|a| a.status == Some(429))
        .expect("429");
    let t429 = attempts[first].at;
    // A request already in flight when the 429 was answered may land just after it; after
    // that nothing comes for 3 s.
    for a in &attempts[first + 1..] {
        let after = a.at.duration_since(t429);
        assert!(
            after < Duration::from_millis(100) || after >= Duration::from_millis(2990),
            "request {after:?} after a 429 with Retry-After: 3"
        );
    }
    assert!(attempts.last().expect("attempts").at.duration_since(t429) >= Duration::from_secs(3));
    assert_in_order(&rig.api.accepted(), &["A", "B"], 5);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_counts_as_delivered_and_rejection_is_dead_lettered() {
    let rig = Rig::start(TOKEN, |s| s.max_in_flight = 1).await;
    // First request 409 (already stored), second 400 (rejected); the series goes on.
    rig.api.script([Answer::Status(409), Answer::Status(400)]);
    rig.commit(interleaved(&["A"], 6)).await;
    assert!(rig.api.wait_accepted(4, LONG).await);
    assert!(rig.api.wait_attempts(6, LONG).await);
    let got: Vec<f64> = rig.api.accepted().iter().map(|a| a.value).collect();
    assert_eq!(got, vec![1001.0, 1001.5, 1002.0, 1002.5]);
    let stats = rig.drained().await;
    assert_eq!(stats.pending, 0);
    let c = |k: &str| stats.counters.get(k).copied().unwrap_or(0);
    assert_eq!(
        (c("delivered"), c("duplicates"), c("dead_lettered")),
        (5, 1, 1)
    );
    let path = rig.queue_path();
    let dead = queue::dead_list(&path).expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].status, dead[0].value), (Some(400), Some(1000.5)));
    assert!(dead[0].reason.contains("400"), "{}", dead[0].reason);
    // The operator resends it while the daemon runs.
    queue::dead_retry(&path, &DeadSelection::All).expect("retry");
    assert!(rig.api.wait_accepted(5, LONG).await);
    assert_eq!(rig.api.accepted().last().map(|a| a.value), Some(1000.5));
    rig.stop().await;
}

/// Files in `dir` (the queue and its WAL, not the token file) whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n != "token"))
        .filter(|p| {
            std::fs::read(p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_api_echoes_is_redacted_from_last_error_and_dead_letters() {
    const WRONG: &str = "wrong-but-secret-7a1f";
    let rig = Rig::start(WRONG, |s| s.max_in_flight = 1).await;
    rig.api.set_echo_token(true);
    rig.api.reject_import_id("A", 400);
    rig.commit(interleaved(&["A", "B"], 2)).await;
    // 401, whose detail quotes the (wrong) token: it becomes `last_error`.
    assert!(rig.api.wait_answered(401, LONG).await);
    let last_error = || {
        queue::status(&rig.queue_path())
            .ok()
            .and_then(|s| s.state.get("last_error").cloned())
            .unwrap_or_default()
    };
    let mut seen = String::new();
    assert!(
        until(|| {
            seen = last_error();
            seen.contains("401")
        })
        .await,
        "last_error: {seen:?}"
    );
    assert!(
        seen.contains("[token]") && !seen.contains(WRONG),
        "last_error: {seen:?}"
    );
    // The right token: A's readings are rejected with the token in the body (dead letters).
    std::fs::write(&rig.token_file, TOKEN).expect("token");
    assert!(rig.api.wait_accepted(2, LONG).await);
    let stats = rig.drained().await;
    assert_eq!(stats.pending, 0);
    let dead = queue::dead_list(&rig.queue_path()).expect("dead");
    assert_eq!(dead.len(), 2);
    for d in &dead {
        let body = d.body.as_deref().unwrap_or_default();
        assert!(
            d.reason.contains("[token]") && body.contains("[token]"),
            "{d:?}"
        );
        assert!(!d.reason.contains(TOKEN) && !body.contains(TOKEN), "{d:?}");
    }
    let dir = rig.stop().await;
    for token in [TOKEN, WRONG] {
        assert_eq!(
            files_containing(dir.path(), token),
            Vec::<PathBuf>::new(),
            "token in a file"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_drops_nothing_and_resumes_when_the_token_file_is_fixed() {
    let rig = Rig::start("wrong-token", |_| {}).await;
    rig.commit(interleaved(&["A", "B"], 5)).await;
    assert!(rig.api.wait_attempts(3, LONG).await);
    assert_eq!(rig.api.accepted_count(), 0);
    // (A request still being answered shows no status yet.)
    assert!(
        rig.api
            .attempts()
            .iter()
            .all(|a| matches!(a.status, Some(401) | None))
    );
    // While paused, retries come about every auth_retry (300 ms), not in a tight loop.
    let before = rig.api.attempts().len();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let during = rig.api.attempts().len() - before;
    assert!(during <= 3 * 2, "{during} attempts in 700 ms while paused");
    std::fs::write(&rig.token_file, format!("{TOKEN}\n")).expect("fix token");
    assert!(rig.api.wait_accepted(10, LONG).await);
    assert_in_order(&rig.api.accepted(), &["A", "B"], 5);
    assert!(
        queue::dead_list(&rig.queue_path())
            .expect("dead")
            .is_empty()
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_pauses_until_one_appears() {
    let rig = Rig::start("", |_| {}).await;
    std::fs::remove_file(&rig.token_file).expect("rm");
    rig.commit(interleaved(&["A"], 3)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rig.api.attempts().len(), 0, "no request without a token");
    std::fs::write(&rig.token_file, TOKEN).expect("token");
    assert!(rig.api.wait_accepted(3, LONG).await);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_rejections_across_two_series_trip_the_breaker() {
    let rig = Rig::start(TOKEN, |_| {}).await;
    rig.api.reject_import_id("A", 400);
    rig.api.reject_import_id("B", 400);
    rig.commit(interleaved(&["A", "B"], 10)).await;
    assert!(rig.api.wait_attempts(6, LONG).await);
    // Tripped: attempts slow down to one round per auth_retry, dead letters stop growing.
    tokio::time::sleep(Duration::from_millis(800)).await;
    rig.queue.flush().await.expect("flush");
    let dead = queue::dead_list(&rig.queue_path()).expect("dead");
    assert!((4..=5).contains(&dead.len()), "{} dead letters", dead.len());
    let series: std::collections::BTreeSet<_> =
        dead.iter().map(|d| d.series.import_id.clone()).collect();
    assert!(series.len() <= 2);
    let dead_before = dead.len();
    tokio::time::sleep(Duration::from_millis(700)).await;
    rig.queue.flush().await.expect("flush");
    assert_eq!(
        queue::dead_list(&rig.queue_path()).expect("dead").len(),
        dead_before
    );
    // The API accepts again: everything kept is delivered.
    rig.api.clear_rejection("A");
    rig.api.clear_rejection("B");
    assert!(
        rig.api.wait_accepted(20 - dead_before, LONG).await,
        "accepted {}",
        rig.api.accepted_count()
    );
    let stats = rig.drained().await;
    assert_eq!(stats.pending, 0);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_back_off_globally_and_nothing_is_lost() {
    let rig = Rig::start(TOKEN, |s| {
        s.timeout = Duration::from_millis(300);
        s.max_backoff = Duration::from_secs(1);
    })
    .await;
    rig.api.set_mode(Mode::Hang).await.expect("hang");
    rig.commit(interleaved(&["A", "B"], 4)).await;
    assert!(rig.api.wait_attempts(3, LONG).await);
    rig.api.set_mode(Mode::Normal).await.expect("normal");
    assert!(rig.api.wait_accepted(8, LONG).await);
    assert_in_order(&rig.api.accepted(), &["A", "B"], 4);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meter_id_field_and_restart_resumes_from_the_queue() {
    let rig = Rig::start(TOKEN, |s| s.id_field = IdField::MeterId).await;
    rig.api.set_mode(Mode::Down).await.expect("down");
    rig.commit(interleaved(&["A"], 3)).await;
    let dir = rig.stop().await;
    // A new process: the queue holds the three readings.
    let api = StandIn::start(CUSTOMER, TOKEN).await.expect("stand-in");
    let (q, report) = Queue::open(QueueOptions::new(dir.path().join("queue.db"))).expect("queue");
    assert_eq!(report.pending, 3);
    let s = SenderSettings {
        id_field: IdField::MeterId,
        max_in_flight: 4,
        ..sender_settings(api.base_url(), &dir.path().join("token"))
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(
        Sender::new(s, q.clone())
            .expect("sender")
            .run(shutdown.clone()),
    );
    assert!(api.wait_accepted(3, LONG).await);
    assert!(api.accepted().iter().all(|a| a.id_field == "meter_id"));
    let started = Instant::now();
    shutdown.cancel();
    task.await.expect("join").expect("sender");
    assert!(started.elapsed() < Duration::from_secs(2));
    q.close().await.expect("close");
}

/// A private CA and a certificate for `localhost` signed by it; returns (CA PEM, leaf DER, key DER).
fn test_pki() -> (String, Vec<u8>, Vec<u8>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&leaf_key, &ca)
        .expect("leaf");
    (ca.pem(), leaf.der().to_vec(), leaf_key.serialize_der())
}

/// Terminates TLS on 127.0.0.1:0 and forwards every connection to `backend`.
async fn tls_proxy(
    backend: std::net::SocketAddr,
    cert: Vec<u8>,
    key: Vec<u8>,
) -> (u16, CancellationToken) {
    use tokio_rustls::rustls::{self, pki_types};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki_types::CertificateDer::from(cert)],
            pki_types::PrivateKeyDer::Pkcs8(pki_types::PrivatePkcs8KeyDer::from(key)),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let stop = CancellationToken::new();
    let stop2 = stop.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop2.cancelled() => return,
                a = listener.accept() => a,
            };
            let Ok((tcp, _)) = accepted else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_private_ca_file_and_refusal_without_it() {
    let (ca_pem, cert, key) = test_pki();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("private-ca.pem");
    std::fs::write(&ca_file, &ca_pem).expect("ca");
    let api = StandIn::start(CUSTOMER, TOKEN).await.expect("stand-in");
    let (port, stop) = tls_proxy(api.addr(), cert, key).await;
    // Without the CA: the certificate is refused, which is a network failure: nothing sent,
    // nothing lost, the sender backs off.
    let rig = Rig::start(TOKEN, |s| {
        s.base_url = format!("https://localhost:{port}");
        s.max_backoff = Duration::from_secs(1);
    })
    .await;
    rig.commit(interleaved(&["A"], 3)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(api.accepted_count(), 0);
    assert_eq!(rig.queue.stats().await.expect("stats").pending, 3);
    let dir1 = rig.stop().await;
    // With ca_file: delivered over TLS.
    let (q, _) = Queue::open(QueueOptions::new(dir1.path().join("queue.db"))).expect("queue");
    let s = SenderSettings {
        ca_file: Some(ca_file),
        max_backoff: Duration::from_secs(1),
        ..sender_settings(
            format!("https://localhost:{port}"),
            &dir1.path().join("token"),
        )
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(
        Sender::new(s, q.clone())
            .expect("sender")
            .run(shutdown.clone()),
    );
    assert!(
        api.wait_accepted(3, LONG).await,
        "accepted {}",
        api.accepted_count()
    );
    assert_in_order(&api.accepted(), &["A"], 3);
    shutdown.cancel();
    task.await.expect("join").expect("sender");
    q.close().await.expect("close");
    stop.cancel();
}
