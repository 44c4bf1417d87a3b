//! R5, R6, R7 — network and API faults against one running daemon: connection refused, a black
//! hole (timeouts), random 500s, 429 with `Retry-After` in seconds and as an HTTP date, slow
//! answers, answers lost after the API stored the reading (409 on the resend), 400 for one
//! series, and 401 until the token is fixed. At the end nothing is lost, order per series holds,
//! no request came before a `Retry-After`, the dead letters are exactly the rejected readings,
//! and the per-series backoff delays show full jitter.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use enectiva_collector::events;
use enectiva_collector::queue;
use enectiva_collector::sim::api::{Answer, Mode};

use crate::harness::{
    LONG, Proxy, Rng, World, assert_order, coefficient_of_variation, delivered_set, epoch,
    import_id, redirect_api, size, wait_until,
};

const METERS: usize = 4;
const CAP: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(1);
/// The sender's default `max_in_flight`.
const MAX_IN_FLIGHT: usize = 4;
/// Requests already on the wire when an answer goes out arrive within this.
const IN_FLIGHT_SLACK: Duration = Duration::from_millis(100);

async fn phase(name: &str, d: Duration) {
    println!("  phase {name}: {} s", d.as_secs_f64());
    tokio::time::sleep(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r5_r6_r7_network_and_api_faults_lose_nothing() {
    let _serial = crate::harness::one_at_a_time().await;
    let outage = Duration::from_secs(size(6, 60) as u64);
    let world = World::with_head(METERS, 10, "1s", "timeout = \"1s\"\nmax_backoff = \"2s\"").await;
    let proxy = Proxy::start(world.api.addr()).await;
    redirect_api(&world, &proxy.url());
    let mut rng = Rng::new("r5-r7");
    let api = world.api.clone();
    let started = Instant::now();
    let d = world.start(&[]);
    assert!(d.wait_running().await, "{}", d.log_text());
    phase("normal", Duration::from_secs(3)).await;

    // R5: connection refused.
    api.set_mode(Mode::Down).await.expect("down");
    phase("connection refused", outage).await;
    api.set_mode(Mode::Normal).await.expect("up");
    let up_at = Instant::now();
    let n = api.accepted_count();
    assert!(
        api.wait_accepted(n + 1, CAP * 3).await,
        "no delivery within 3 backoff caps after the refusal ended"
    );
    let refused_recovery = up_at.elapsed();

    // R5: black hole (every request times out).
    proxy.set_black_hole(true);
    let hole_from = Instant::now();
    phase("black hole", outage).await;
    proxy.set_black_hole(false);
    let hole_to = Instant::now();
    let n = api.accepted_count();
    assert!(
        api.wait_accepted(n + 1, CAP * 3 + TIMEOUT).await,
        "no delivery within 3 backoff caps after the black hole ended"
    );
    let hole_recovery = hole_to.elapsed();
    let hole_attempts = proxy
        .accepts()
        .iter()
        .filter(|t| **t >= hole_from && **t < hole_to)
        .count();

    // R6: random 500s (30 %), each answered before normal processing.
    let scripted_500: Vec<Answer> = (0..size(300, 3000))
        .map(|_| {
            if rng.chance(30) {
                Answer::Status(500)
            } else {
                Answer::Status(201)
            }
        })
        .collect();
    let n500 = scripted_500
        .iter()
        .filter(|a| **a == Answer::Status(500))
        .count();
    let first_500 = api.attempts().len();
    api.script(scripted_500);
    let script_done =
        wait_until(LONG, || api.attempts().len() >= first_500 + size(300, 3000)).await;
    assert!(script_done, "the random-500 script was not used up");
    println!("  phase random 500s: {n500} of {} answers", size(300, 3000));

    // R6: 429 with Retry-After in seconds, then as an HTTP date.
    let before = api.attempts().len();
    api.script([Answer::StatusRetryAfter(429, "2".into())]);
    assert!(wait_until(LONG, || api.attempts().len() > before + 1).await);
    let when_date = SystemTime::now() + Duration::from_secs(4);
    let date = httpdate::fmt_http_date(when_date);
    let date_at = Instant::now()
        + when_date
            .duration_since(SystemTime::now())
            .unwrap_or_default();
    // The date has whole seconds: the floor is the second it names.
    let date_floor = date_at
        - Duration::from_nanos(u64::from(
            when_date
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0),
        ));
    let before_date = api.attempts().len();
    api.script([Answer::StatusRetryAfter(429, date.clone())]);
    assert!(wait_until(LONG, || api.attempts().len() > before_date + 1).await);

    // Slow answers (below the timeout).
    api.set_delay(Duration::from_millis(300));
    phase("slow answers (300 ms)", Duration::from_secs(3)).await;
    api.set_delay(Duration::ZERO);

    // R7: answers lost after the API stored the reading: the resend is answered 409.
    let lost_answers = size(3, 20);
    let before_lost = api.attempts().len();
    api.script((0..lost_answers).map(|_| Answer::Delay(TIMEOUT + Duration::from_millis(500))));
    assert!(
        wait_until(LONG, || api.attempts().len()
            >= before_lost + lost_answers + 4)
        .await
    );
    phase("after lost answers", Duration::from_secs(2)).await;

    // R6: 400 for one series.
    let poisoned = import_id(0, "voltage_l1");
    api.reject_import_id(&poisoned, 400);
    phase("400 for one series", Duration::from_secs(4)).await;
    api.clear_rejection(&poisoned);

    // R6: 401 until the token is fixed (written to the token file, then SIGHUP).
    api.set_token("rotated-token");
    phase("401", Duration::from_secs(3)).await;
    std::fs::write(world.dir.path().join("token"), "rotated-token").expect("token");
    let hup_at = Instant::now();
    d.signal("-HUP");
    let n = api.accepted_count();
    assert!(
        api.wait_accepted(n + 10, Duration::from_secs(10)).await,
        "sending did not resume after the token was fixed:\n{}",
        d.log_text()
    );
    let auth_fixed = Instant::now();

    // Drain: wait until every series has caught up with the last poll.
    phase("normal", Duration::from_secs(3)).await;
    let qp = world.queue_path();
    let drained = wait_until(LONG, || {
        queue::status(&qp).is_ok_and(|s| s.pending <= (METERS * 10) as u64)
    })
    .await;
    let (code, _, log) = d.stop();
    assert!(drained, "backlog not drained:\n{log}");
    assert_eq!(code, Some(0), "{log}");
    let acc = api.accepted();
    let attempts = api.attempts();

    // Order per series.
    assert_order(&acc);
    // Nothing lost: every poll of a meter reached the API (or dead letters) for every channel.
    let dead = queue::dead_list(&qp).expect("dead list");
    let mut times: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for a in &acc {
        times
            .entry(a.import_id.clone())
            .or_default()
            .insert(epoch(&a.time));
    }
    let dead_times: BTreeSet<i64> = dead
        .iter()
        .filter(|r| r.series.import_id == poisoned)
        .map(|r| r.time)
        .collect();
    let pending: Vec<(String, i64, f64)> = crate::harness::queue_rows(&qp);
    for m in 0..METERS {
        let reference = &times[&import_id(m, "voltage_l2")];
        for q in crate::harness::QUANTITIES {
            let id = import_id(m, q);
            let mut got = times.get(&id).cloned().unwrap_or_default();
            if id == poisoned {
                assert!(
                    got.is_disjoint(&dead_times),
                    "a rejected reading was also accepted"
                );
                got.extend(&dead_times);
            }
            got.extend(pending.iter().filter(|p| p.0 == id).map(|p| p.1));
            let mut want = reference.clone();
            want.extend(
                pending
                    .iter()
                    .filter(|p| p.0 == import_id(m, "voltage_l2"))
                    .map(|p| p.1),
            );
            assert_eq!(
                got, want,
                "{id}: polls missing compared with voltage_l2 of the same meter"
            );
        }
    }
    // Dead letters are exactly the readings answered 400.
    let rejected = attempts.iter().filter(|a| a.status == Some(400)).count();
    assert!(rejected > 0, "no request was answered 400");
    assert_eq!(dead.len(), rejected, "dead letters vs 400 answers");
    assert!(
        dead.iter()
            .all(|r| r.series.import_id == poisoned && r.status == Some(400))
    );
    // Retry-After: no request before it.
    let at_429: Vec<usize> = attempts
        .iter()
        .enumerate()
        .filter(|(_, a)| a.status == Some(429))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at_429.len(), 2, "two 429 answers");
    // Requests already on the wire when the 429 is answered, or sent while its answer was on
    // its way back (another request finished first), arrive within milliseconds. The first
    // request after that is the one that must wait.
    let next_request = |i: usize| {
        let t0 = attempts[i].at;
        attempts[i + 1..]
            .iter()
            .find(|a| a.at.duration_since(t0) >= IN_FLIGHT_SLACK)
            .expect("a request after the 429")
            .at
    };
    let next_after_seconds = next_request(at_429[0]).duration_since(attempts[at_429[0]].at);
    assert!(
        next_after_seconds >= Duration::from_secs(2),
        "a request came {next_after_seconds:?} after `Retry-After: 2`"
    );
    let next_after_date = next_request(at_429[1]);
    // 50 ms for converting the wall-clock date to the monotonic clock of the attempts.
    assert!(
        next_after_date + Duration::from_millis(50) >= date_floor,
        "a request came before `Retry-After: {date}`"
    );
    let date_wait = next_after_date.duration_since(attempts[at_429[1]].at);
    // Duplicates only from answers that were lost: the scripted ones, and those of requests
    // already stored by the API when the black hole opened (its answer is swallowed and the
    // request times out) — at most one per request in flight (`max_in_flight`, 4).
    let duplicates = attempts.iter().filter(|a| a.status == Some(409)).count();
    assert!(
        duplicates <= lost_answers + MAX_IN_FLIGHT,
        "{duplicates} duplicates for {lost_answers} lost answers and {MAX_IN_FLIGHT} requests in flight when the black hole opened"
    );
    let delivered = delivered_set(&acc);
    assert_eq!(delivered.len(), acc.len(), "a reading was stored twice");
    // Counters: exact.
    let st = queue::status(&qp).expect("status");
    let c = |k: &str| st.counters.get(k).copied().unwrap_or(0);
    assert_eq!(
        c("enqueued"),
        c("delivered") + c("dead_lettered") + c("dropped") + st.pending as i64
    );
    assert_eq!(c("dropped"), 0);
    // A request on the wire at the stop may be stored without its answer being recorded.
    assert!(acc.len() >= c("delivered") as usize && acc.len() - c("delivered") as usize <= 4);
    // The events an operator sees.
    assert!(
        log.contains(events::API_AUTH_FAILED),
        "401 not logged with its MESSAGE_ID:\n{log}"
    );
    assert!(
        log.contains(events::READING_DEAD_LETTERED),
        "400 not logged with its MESSAGE_ID"
    );
    // Full jitter: per-series gaps between consecutive 500-answered attempts and the next.
    let mut last: BTreeMap<String, Instant> = BTreeMap::new();
    let mut gaps = Vec::new();
    for a in &attempts[first_500..] {
        let Some(id) = &a.import_id else { continue };
        if let Some(t) = last.remove(id) {
            gaps.push(a.at.duration_since(t).as_secs_f64());
        }
        if a.status == Some(500) {
            last.insert(id.clone(), a.at);
        }
        if a.at >= attempts[at_429[0]].at {
            break;
        }
    }
    let cv = coefficient_of_variation(&gaps);
    let max_gap = gaps.iter().copied().fold(0.0, f64::max);
    assert!(
        gaps.len() >= 20,
        "too few retries after a 500 to judge jitter: {}",
        gaps.len()
    );
    assert!(
        cv >= 0.4,
        "backoff delays after 500 lack full jitter: CV {cv:.2}"
    );
    assert!(
        max_gap <= CAP.as_secs_f64() + 1.0,
        "a series waited {max_gap:.1} s after a 500 (cap {CAP:?})"
    );
    println!(
        "R5-R7: {} readings delivered, {} dead letters (= {rejected} answers 400), {duplicates} duplicates (409) for {lost_answers} lost answers + up to {MAX_IN_FLIGHT} swallowed by the black hole, \
         {n500} random 500s: {} retry delays, CV {cv:.2}, max {max_gap:.2} s (cap {} s); black hole {} s: {hole_attempts} connection attempts; \
         delivering again {:.2} s after the refusals ended and {:.2} s after the black hole ended; Retry-After 2 s → next request after {:.2} s, HTTP date → after {:.2} s; 401 fixed → resumed in {:.2} s; {:.0} s total",
        acc.len(),
        dead.len(),
        gaps.len(),
        CAP.as_secs(),
        outage.as_secs(),
        refused_recovery.as_secs_f64(),
        hole_recovery.as_secs_f64(),
        next_after_seconds.as_secs_f64(),
        date_wait.as_secs_f64(),
        auth_fixed.duration_since(hup_at).as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
}
