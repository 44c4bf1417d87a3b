//! The sender: drains the queue to the Enectiva import API, one reading per request.
//!
//! Per series strictly in queue order with one request in flight; up to `max_in_flight` series
//! at once, oldest reading first; HTTP keep-alive over rustls. Each answer is classified by
//! [`classify`] and acted on: delivered readings are removed, rejected ones dead-lettered (unless
//! the breaker trips), and everything else waits — a series backs off on 408/5xx, all series
//! pause on 429/503 (`Retry-After` as a floor), on network failures (global backoff) and on
//! credential or URL problems (retry every minute, token re-read). Nothing here ever drops a
//! reading. All in-flight requests live inside this one task (no spawning), so cancelling the
//! task abandons them; they are re-sent later and the API answers 409. Whatever the API says
//! back is stripped of the token ([`Token::redact`]) before it is logged or stored.

pub mod backoff;
pub mod classify;
pub mod payload;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::config::{Api, IdField};
use crate::events;
use crate::queue::{Queue, QueueError, QueuedReading};
use crate::reading::Series;
use crate::token::{PermissionWarnings, Token, TokenError, TokenSource};
use backoff::Backoff;
use classify::{Breaker, Outcome, Verdict};

/// Everything the sender needs to know; [`SenderSettings::from_api`] fills it from the config.
#[derive(Debug, Clone)]
pub struct SenderSettings {
    pub base_url: String,
    pub customer_id: String,
    pub sender: String,
    pub id_field: IdField,
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub max_backoff: Duration,
    /// The first backoff ceiling (SPEC: 1 s; tests scale it down).
    pub backoff_base: Duration,
    pub ca_file: Option<PathBuf>,
    pub token: Option<TokenSource>,
    /// Pause after a credential/URL problem before trying again (SPEC: every minute).
    pub auth_retry: Duration,
    /// ERROR about a paused sender at most this often (SPEC: every 10 min).
    pub error_log_every: Duration,
    /// How often the queue is scanned for readings added by another process (`dead retry`).
    pub rescan: Duration,
}

impl SenderSettings {
    pub fn from_api(api: &Api) -> SenderSettings {
        SenderSettings {
            base_url: api.base_url.clone(),
            customer_id: api.customer_id.clone(),
            sender: api.sender.clone(),
            id_field: api.id_field,
            timeout: api.timeout,
            max_in_flight: api.max_in_flight.max(1),
            max_backoff: api.max_backoff,
            backoff_base: backoff::BASE,
            ca_file: api.ca_file.clone(),
            token: TokenSource::resolve(api.token_file.as_deref()),
            auth_retry: Duration::from_secs(60),
            error_log_every: Duration::from_secs(600),
            rescan: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error("ca_file {path} {error}")]
    CaFile { path: PathBuf, error: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The HTTP client: rustls (ring), keep-alive, no redirects (a redirected POST would turn into
/// a GET), the configured timeout, and `ca_file` added to the system roots.
pub fn http_client(s: &SenderSettings) -> Result<reqwest::Client, SenderError> {
    // Installing twice is harmless: the first provider stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .user_agent(payload::user_agent())
        .timeout(s.timeout)
        .connect_timeout(s.timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(50))
        .pool_max_idle_per_host(s.max_in_flight.max(1) + 2)
        .tcp_keepalive(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &s.ca_file {
        let ders = crate::ca::load(path).map_err(|error| SenderError::CaFile {
            path: path.clone(),
            error,
        })?;
        let certs = ders
            .iter()
            .map(|der| reqwest::Certificate::from_der(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SenderError::CaFile {
                path: path.clone(),
                error: e.to_string(),
            })?;
        b = b.tls_certs_merge(certs);
    }
    b.build().map_err(|e| SenderError::Client(e.to_string()))
}

/// What one request produced.
#[derive(Debug)]
enum Answer {
    Http {
        status: u16,
        retry_after: Option<String>,
        /// The answer's `Date` header: a `Retry-After` date is measured against it, so a
        /// local clock that is off (an RTC-less gateway before NTP) does not stretch or skip
        /// the wait.
        server_time: Option<SystemTime>,
        body: String,
    },
    Failed(String),
}

impl Answer {
    /// Takes `token` out of everything the API (or the HTTP stack) said, before any of it is
    /// logged or stored.
    fn redact(self, token: Option<&Token>) -> Answer {
        let Some(token) = token else {
            return self;
        };
        match self {
            Answer::Http {
                status,
                retry_after,
                server_time,
                body,
            } => Answer::Http {
                status,
                retry_after,
                server_time,
                body: token.redact(&body).into_owned(),
            },
            Answer::Failed(err) => Answer::Failed(token.redact(&err).into_owned()),
        }
    }
}

/// Reads at most this much of an answer body (API answers are small).
const MAX_BODY: usize = 64 * 1024;

async fn read_body(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    // Reading to the end lets the connection go back to the pool.
    while let Ok(Some(chunk)) = resp.chunk().await {
        buf.extend_from_slice(&chunk);
        if buf.len() >= MAX_BODY {
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn describe_failure(e: &reqwest::Error) -> String {
    // The chain carries the useful part (connection refused, certificate, …). URLs carry no
    // secret (the token travels in a header), so the message is safe to log.
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    if e.is_timeout() {
        msg.push_str(" (timeout)");
    }
    msg
}

/// The `Authorization` value marked sensitive, so no debug output of the request shows it.
fn sensitive(value: &str) -> reqwest::header::HeaderValue {
    match reqwest::header::HeaderValue::from_str(value) {
        Ok(mut v) => {
            v.set_sensitive(true);
            v
        }
        // Token::new refuses anything a header cannot carry; an empty value gets a 401.
        Err(_) => reqwest::header::HeaderValue::from_static(""),
    }
}

async fn post(client: reqwest::Client, url: String, auth: String, body: Vec<u8>) -> Answer {
    let sent = client
        .post(url)
        .header(reqwest::header::AUTHORIZATION, sensitive(&auth))
        .header(reqwest::header::CONTENT_TYPE, payload::MEDIA_TYPE)
        .header(reqwest::header::ACCEPT, payload::MEDIA_TYPE)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let server_time = resp
                .headers()
                .get(reqwest::header::DATE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok());
            let body = read_body(resp).await;
            Answer::Http {
                status,
                retry_after,
                server_time,
                body,
            }
        }
        Err(e) => Answer::Failed(describe_failure(&e)),
    }
}

/// Rate limit for repeated log lines.
#[derive(Debug)]
struct Every {
    period: Duration,
    last: Option<Instant>,
}

impl Every {
    fn new(period: Duration) -> Every {
        Every { period, last: None }
    }

    fn due(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= self.period)
        {
            self.last = Some(now);
            true
        } else {
            false
        }
    }

    fn reset(&mut self) {
        self.last = None;
    }
}

#[derive(Debug)]
struct SeriesState {
    /// The id of the last reading taken from the queue.
    cursor: i64,
    buffer: VecDeque<QueuedReading>,
    /// The id of the oldest reading known to wait (for oldest-first scheduling).
    next_hint: i64,
    backoff: Backoff,
    not_before: Option<Instant>,
    busy: bool,
    /// A fetch found nothing since the last commit notification.
    exhausted: bool,
    /// The last fetch returned fewer than it asked for: once the buffer is empty the series
    /// is exhausted without asking again (a scan that sees newer readings clears this).
    complete: bool,
    failing: bool,
}

impl SeriesState {
    fn new(base: Duration, cap: Duration) -> SeriesState {
        SeriesState {
            cursor: 0,
            buffer: VecDeque::new(),
            next_hint: i64::MAX,
            backoff: Backoff::with_base(base, cap),
            not_before: None,
            busy: false,
            exhausted: false,
            complete: false,
            failing: false,
        }
    }

    fn next_id(&self) -> i64 {
        self.buffer.front().map_or(self.next_hint, |r| r.id)
    }
}

/// Why everything waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PauseKind {
    /// No token, or 401/403/404/406/415: retry every `auth_retry`.
    Auth,
    /// The breaker tripped.
    Breaker,
    /// 429/503.
    SlowDown,
    /// Timeouts, refused connections, TLS failures.
    Network,
}

/// Reading fetched from the queue per series at a time.
const FETCH: usize = 64;

/// Series whose empty buffers one prefetch fills at most.
const PREFETCH_SERIES: usize = 32;

/// The sender task.
#[derive(Debug)]
pub struct Sender {
    s: SenderSettings,
    queue: Queue,
    client: reqwest::Client,
    token: Option<Token>,
    /// The token is read again after every credential problem; a loose file is said once.
    permission_warnings: PermissionWarnings,
    series: HashMap<Series, SeriesState>,
    pause: Option<(PauseKind, Instant)>,
    network: Backoff,
    slowdown: Backoff,
    breaker: Breaker,
    auth_log: Every,
    warn_log: Every,
    last_delivery_record: Option<Instant>,
    outage_since: Option<(Instant, u32)>,
    need_scan: bool,
    last_scan: Option<Instant>,
    /// The newest reading id any scan has seen.
    scanned_upto: i64,
    health: Option<std::sync::Arc<crate::notify::Health>>,
}

impl Sender {
    pub fn new(s: SenderSettings, queue: Queue) -> Result<Sender, SenderError> {
        let client = http_client(&s)?;
        let (base, cap) = (s.backoff_base, s.max_backoff);
        Ok(Sender {
            auth_log: Every::new(s.error_log_every),
            warn_log: Every::new(Duration::from_secs(60)),
            s,
            queue,
            client,
            token: None,
            permission_warnings: PermissionWarnings::default(),
            series: HashMap::new(),
            pause: None,
            network: Backoff::with_base(base, cap),
            slowdown: Backoff::with_base(base, cap),
            breaker: Breaker::default(),
            last_delivery_record: None,
            outage_since: None,
            need_scan: true,
            last_scan: None,
            scanned_upto: 0,
            health: None,
        })
    }

    /// Reports progress (and deliveries) to the watchdog's health view.
    pub fn with_health(mut self, health: std::sync::Arc<crate::notify::Health>) -> Sender {
        self.health = Some(health);
        self
    }

    fn load_token(&mut self) -> Result<(), TokenError> {
        let Some(src) = &self.s.token else {
            self.token = None;
            return Err(TokenError::NoSource);
        };
        if let Some(w) = self.permission_warnings.check(src) {
            tracing::warn!("{w}");
        }
        match src.read() {
            Ok(t) => {
                self.token = Some(t);
                Ok(())
            }
            Err(e) => {
                self.token = None;
                Err(e)
            }
        }
    }

    fn paused(&self, now: Instant) -> bool {
        self.pause.is_some_and(|(_, until)| until > now)
    }

    /// Pauses everything until at least `d` from now (an existing longer pause stays).
    fn pause_all(&mut self, kind: PauseKind, d: Duration) {
        let until = Instant::now() + d;
        match self.pause {
            Some((_, u)) if u >= until => {}
            _ => self.pause = Some((kind, until)),
        }
        let _ = self.queue.record_state(
            "sending",
            match kind {
                PauseKind::Auth => "paused: credentials or URL refused",
                PauseKind::Breaker => "paused: the API rejects every reading (breaker)",
                PauseKind::SlowDown => "paused: the API asked to slow down",
                PauseKind::Network => "paused: API unreachable",
            },
        );
    }

    fn record_error(&mut self, msg: &str) {
        let _ = self.queue.record_state("last_error", msg);
        let _ = self
            .queue
            .record_state("last_error_at", crate::queue::now_unix().to_string());
    }

    fn auth_error(&mut self, msg: String) {
        self.record_error(&msg);
        if self.auth_log.due() {
            tracing::error!(
                message_id = events::API_AUTH_FAILED,
                error = %msg,
                retry_in_s = self.s.auth_retry.as_secs(),
                "sending paused: nothing is dropped; fix the problem and sending resumes"
            );
        }
    }

    /// Runs until `shutdown`; returns Err only when the queue failed.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), SenderError> {
        if let Err(e) = self.load_token() {
            self.auth_error(e.to_string());
            self.pause_all(PauseKind::Auth, self.s.auth_retry);
        }
        let mut commits = self.queue.commits();
        let mut inflight = FuturesUnordered::new();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let now = Instant::now();
            self.resume_if_due(now);
            if self
                .last_scan
                .is_none_or(|t| now.duration_since(t) >= self.s.rescan)
            {
                self.scan().await?;
            } else if self.need_scan {
                self.scan_new().await?;
            }
            if inflight.len() < self.s.max_in_flight && !self.paused(Instant::now()) {
                self.prefetch(Instant::now()).await?;
            }
            while inflight.len() < self.s.max_in_flight && !self.paused(Instant::now()) {
                let Some(series) = self.pick(Instant::now()) else {
                    break;
                };
                let Some(reading) = self.take(&series).await? else {
                    continue;
                };
                let Some(req) = self.request(&reading) else {
                    // Cannot happen for a committed reading (the queue refuses NaN); keep the
                    // guarantee anyway: such a value goes to the dead letters, not the wire.
                    self.queue
                        .dead_letter(reading.id, "not a finite number".into(), None, None)?;
                    if let Some(st) = self.series.get_mut(&series) {
                        st.busy = false;
                    }
                    continue;
                };
                let client = self.client.clone();
                // The token this request carries is the one its answer could echo.
                let sent_with = self.token.clone();
                inflight.push(async move {
                    let (url, auth, body) = req;
                    let answer = post(client, url, auth, body).await;
                    (series, reading, answer.redact(sent_with.as_ref()))
                });
            }
            let wake = self.next_wake(Instant::now());
            if let Some(h) = &self.health {
                // Back by the next wake-up (or an answer, which comes within the timeout);
                // queue calls on the way are quick unless the queue is stuck.
                if h.fault == crate::notify::Fault::StallSender {
                    h.promise("sender", Duration::from_secs(1));
                    // Test-only: hang like a deadlocked task (but still stop on shutdown).
                    shutdown.cancelled().await;
                    break;
                }
                h.promise(
                    "sender",
                    wake.saturating_duration_since(Instant::now())
                        + self.s.timeout.min(Duration::from_secs(5)),
                );
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some((series, reading, answer)) = inflight.next(), if !inflight.is_empty() => {
                    self.handle(series, reading, answer)?;
                }
                changed = commits.changed() => {
                    if changed.is_err() {
                        // The queue is gone; the app decides what happens next.
                        break;
                    }
                    self.need_scan = true;
                }
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        Ok(())
    }

    /// When the loop must look again if nothing happens.
    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = self.last_scan.map_or(now, |t| t + self.s.rescan);
        if let Some((_, until)) = self.pause {
            if until > now {
                return until.min(wake);
            }
        }
        for st in self.series.values() {
            if let Some(nb) = st.not_before {
                if nb > now && (!st.buffer.is_empty() || !st.exhausted) {
                    wake = wake.min(nb);
                }
            }
        }
        wake.max(now + Duration::from_millis(1))
    }

    fn resume_if_due(&mut self, now: Instant) {
        let Some((kind, until)) = self.pause else {
            return;
        };
        if until > now {
            return;
        }
        self.pause = None;
        if kind == PauseKind::Auth {
            // A fixed token_file takes effect without a restart.
            if let Err(e) = self.load_token() {
                self.auth_error(e.to_string());
                self.pause_all(PauseKind::Auth, self.s.auth_retry);
            }
        }
    }

    /// Every series with queued readings (at start, every `rescan`, and so readings another
    /// process added are seen).
    async fn scan(&mut self) -> Result<(), SenderError> {
        self.need_scan = false;
        self.last_scan = Some(Instant::now());
        let pending = self.queue.pending_series().await?;
        self.note_pending(&pending);
        // Forget idle series without backoff state, so the map follows the configuration.
        self.series.retain(|_, st| {
            st.busy || !st.buffer.is_empty() || st.not_before.is_some() || st.next_hint != i64::MAX
        });
        Ok(())
    }

    /// After a commit: only the series with readings above the newest id seen so far. Ids only
    /// grow (AUTOINCREMENT), so this sees every reading the commit added; the full scan every
    /// `rescan` stays the safety net.
    async fn scan_new(&mut self) -> Result<(), SenderError> {
        self.need_scan = false;
        let pending = self.queue.pending_since(self.scanned_upto).await?;
        self.note_pending(&pending);
        Ok(())
    }

    fn note_pending(&mut self, pending: &[crate::queue::PendingSeries]) {
        let (base, cap) = (self.s.backoff_base, self.s.max_backoff);
        for p in pending {
            self.scanned_upto = self.scanned_upto.max(p.last_id);
            let st = match self.series.get_mut(&p.series) {
                Some(st) => st,
                None => self
                    .series
                    .entry(p.series.clone())
                    .or_insert_with(|| SeriesState::new(base, cap)),
            };
            if p.last_id > st.cursor {
                st.exhausted = false;
                st.complete = false;
                st.next_hint = st.next_hint.min(p.first_id.max(st.cursor + 1));
            }
        }
    }

    /// The eligible series whose next reading is the oldest.
    fn pick(&self, now: Instant) -> Option<Series> {
        self.series
            .iter()
            .filter(|(_, st)| {
                !st.busy
                    && st.not_before.is_none_or(|t| t <= now)
                    && (!st.buffer.is_empty() || !st.exhausted)
            })
            .min_by_key(|(_, st)| st.next_id())
            .map(|(s, _)| s.clone())
    }

    /// Fills the empty buffers of the series due next (oldest first) in one round trip to
    /// the queue instead of one fetch per series: after a commit, most series have exactly
    /// one new reading. Same query and cursor rules as [`Sender::take`].
    async fn prefetch(&mut self, now: Instant) -> Result<(), SenderError> {
        let mut due: Vec<(i64, &Series, i64)> = self
            .series
            .iter()
            .filter(|(_, st)| {
                st.buffer.is_empty() && !st.exhausted && st.not_before.is_none_or(|t| t <= now)
            })
            .map(|(s, st)| (st.next_id(), s, st.cursor))
            .collect();
        if due.len() < 2 {
            return Ok(());
        }
        due.sort_unstable_by_key(|(next, _, _)| *next);
        due.truncate(PREFETCH_SERIES);
        let wanted: Vec<(Series, i64)> = due
            .into_iter()
            .map(|(_, s, cursor)| (s.clone(), cursor))
            .collect();
        let fetched = self.queue.fetch_many(wanted.clone(), FETCH).await?;
        for ((series, cursor), rows) in wanted.into_iter().zip(fetched) {
            let Some(st) = self.series.get_mut(&series) else {
                continue;
            };
            // Nothing else touched the series while the fetch was out (this task owns it),
            // but stay safe: only a buffer still in the same place is filled.
            if st.cursor != cursor || !st.buffer.is_empty() {
                continue;
            }
            st.complete = rows.len() < FETCH;
            match rows.last() {
                Some(last) => {
                    st.cursor = last.id;
                    st.buffer.extend(rows);
                    st.next_hint = st.buffer.front().map_or(st.cursor + 1, |n| n.id);
                }
                None => {
                    st.exhausted = true;
                    st.next_hint = i64::MAX;
                }
            }
        }
        Ok(())
    }

    /// Takes the series' next reading (fetching from the queue when its buffer is empty) and
    /// marks the series busy.
    async fn take(&mut self, series: &Series) -> Result<Option<QueuedReading>, SenderError> {
        let (empty, cursor) = match self.series.get(series) {
            Some(st) => (st.buffer.is_empty(), st.cursor),
            None => return Ok(None),
        };
        let fetched = if empty {
            self.queue.fetch(series, cursor, FETCH).await?
        } else {
            Vec::new()
        };
        let Some(st) = self.series.get_mut(series) else {
            return Ok(None);
        };
        if empty {
            st.complete = fetched.len() < FETCH;
        }
        if let Some(last) = fetched.last() {
            st.cursor = last.id;
        }
        st.buffer.extend(fetched);
        match st.buffer.pop_front() {
            Some(r) => {
                st.busy = true;
                if st.buffer.is_empty() && st.complete {
                    // Nothing newer was queued when the buffer was filled, and no scan has
                    // seen anything since: no need to ask the queue again.
                    st.exhausted = true;
                    st.next_hint = i64::MAX;
                } else {
                    st.next_hint = st.buffer.front().map_or(st.cursor + 1, |n| n.id);
                }
                Ok(Some(r))
            }
            None => {
                st.exhausted = true;
                st.next_hint = i64::MAX;
                Ok(None)
            }
        }
    }

    fn request(&self, r: &QueuedReading) -> Option<(String, String, Vec<u8>)> {
        let body = payload::body(&r.reading, &self.s.sender, self.s.id_field)?;
        let url = payload::post_url(&self.s.base_url, &self.s.customer_id, r.reading.series.kind);
        // Without a token the sender is paused and never gets here; an empty header would be
        // answered 401, which pauses it again: never a loss.
        let auth = self
            .token
            .as_ref()
            .map(Token::header_value)
            .unwrap_or_default();
        Some((url, auth, body))
    }

    /// Puts a reading back at the front of its series (it will be sent again).
    fn put_back(&mut self, series: &Series, reading: QueuedReading) {
        if let Some(st) = self.series.get_mut(series) {
            st.next_hint = reading.id;
            st.buffer.push_front(reading);
        }
    }

    fn handle(
        &mut self,
        series: Series,
        reading: QueuedReading,
        answer: Answer,
    ) -> Result<(), SenderError> {
        if let Some(st) = self.series.get_mut(&series) {
            st.busy = false;
        }
        // And the token held now, should it have been re-read while the request was out.
        let answer = answer.redact(self.token.as_ref());
        let (status, retry_after, server_time, body) = match answer {
            Answer::Http {
                status,
                retry_after,
                server_time,
                body,
            } => (status, retry_after, server_time, body),
            Answer::Failed(err) => {
                self.put_back(&series, reading);
                let delay = self.network.next_delay();
                let since = self.outage_since.get_or_insert((Instant::now(), 0));
                since.1 += 1;
                if since.1 == 1 {
                    tracing::warn!(error = %err, "API unreachable; readings wait in the queue");
                }
                self.record_error(&format!("API unreachable: {err}"));
                self.pause_all(PauseKind::Network, delay);
                return Ok(());
            }
        };
        if let Some((since, attempts)) = self.outage_since.take() {
            tracing::info!(
                down_s = since.elapsed().as_secs(),
                failed_attempts = attempts,
                "API reachable again"
            );
        }
        self.network.reset();
        let now = server_time.unwrap_or_else(SystemTime::now);
        let outcome = classify::classify(status, retry_after.as_deref(), now);
        match outcome {
            Outcome::Delivered | Outcome::Duplicate => {
                self.queue
                    .delivered(reading.id, outcome == Outcome::Duplicate)?;
                self.breaker.on_other_answer(true);
                self.slowdown.reset();
                if let Some(st) = self.series.get_mut(&series) {
                    st.backoff.reset();
                    st.not_before = None;
                    if st.failing {
                        st.failing = false;
                        tracing::info!(import_id = %series.import_id, "series delivered again");
                    }
                }
                self.on_success();
            }
            Outcome::Rejected => match self.breaker.on_rejected(status, &series) {
                Verdict::DeadLetter => {
                    let detail = payload::error_detail(&body);
                    let reason = format!("rejected by the API ({status}): {detail}");
                    tracing::warn!(
                        message_id = events::READING_DEAD_LETTERED,
                        import_id = %series.import_id,
                        status,
                        detail = %detail,
                        "reading rejected by the API; kept as a dead letter, the series continues"
                    );
                    let body = payload::truncate(&body, 1024).to_string();
                    self.queue
                        .dead_letter(reading.id, reason, Some(status), Some(body))?;
                }
                Verdict::Trip | Verdict::StillTripped => {
                    self.put_back(&series, reading);
                    let detail = payload::error_detail(&body);
                    self.auth_error(format!(
                        "the API rejects readings of several series with {status}: {detail} (breaker open; earlier rejected readings are in `dead list`)"
                    ));
                    self.pause_all(PauseKind::Breaker, self.s.auth_retry);
                }
            },
            Outcome::PauseAll { reread_token } => {
                self.put_back(&series, reading);
                self.breaker.on_other_answer(false);
                let detail = payload::error_detail(&body);
                let hint = match status {
                    401 | 403 => "check the token",
                    404 => "check api.base_url and api.customer_id",
                    _ => "check api.base_url",
                };
                self.auth_error(format!("the API answered {status}: {detail} ({hint})"));
                self.pause_all(PauseKind::Auth, self.s.auth_retry);
                if reread_token {
                    // Read again at the end of the pause; reading now as well means a token
                    // fixed before the pause ends is not missed if the file vanishes later.
                    let _ = self.load_token();
                }
            }
            Outcome::SlowDown { retry_after } => {
                self.put_back(&series, reading);
                self.breaker.on_other_answer(false);
                let backoff = self.slowdown.next_delay();
                let delay = retry_after.map_or(backoff, |ra| ra.max(backoff));
                if self.warn_log.due() {
                    tracing::warn!(
                        status,
                        delay_ms = delay.as_millis() as u64,
                        "the API asks to slow down; all series wait"
                    );
                }
                self.record_error(&format!("the API answered {status} (slow down)"));
                self.pause_all(PauseKind::SlowDown, delay);
            }
            Outcome::RetrySeries => {
                self.put_back(&series, reading);
                self.breaker.on_other_answer(false);
                let warn = self.warn_log.due();
                if let Some(st) = self.series.get_mut(&series) {
                    let delay = st.backoff.next_delay();
                    st.not_before = Some(Instant::now() + delay);
                    if !st.failing || warn {
                        tracing::warn!(
                            import_id = %series.import_id,
                            status,
                            retry_in_ms = delay.as_millis() as u64,
                            "API error for this series; it backs off"
                        );
                    }
                    st.failing = true;
                }
                self.record_error(&format!(
                    "the API answered {status} for {}",
                    series.import_id
                ));
            }
            Outcome::NetworkDown => {}
        }
        Ok(())
    }

    fn on_success(&mut self) {
        if let Some(h) = &self.health {
            h.delivered(crate::queue::now_unix());
        }
        if self.pause.is_none() && self.auth_log.last.is_some() {
            self.auth_log.reset();
            tracing::info!(message_id = events::API_RESUMED, "sending resumed");
            let _ = self.queue.record_state("sending", "ok");
        }
        let now = Instant::now();
        if self
            .last_delivery_record
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_delivery_record = Some(now);
            let _ = self
                .queue
                .record_state("last_delivery", crate::queue::now_unix().to_string());
        }
    }
}

/// What `check --online` learns about one series.
#[derive(Debug, Clone, PartialEq)]
pub enum Latest {
    /// 200: the latest stored value (time and value as the API gave them).
    Found {
        time: Option<String>,
        value: Option<String>,
    },
    /// 404: nothing stored yet (or an unknown import id).
    NotFound,
    /// Any other answer.
    Refused { status: u16, detail: String },
}

/// `GET …/latest` for one series (read-only).
pub async fn latest(
    client: &reqwest::Client,
    s: &SenderSettings,
    token: &Token,
    series: &Series,
) -> Result<Latest, String> {
    let url = payload::latest_url(&s.base_url, &s.customer_id, series)?;
    let resp = client
        .get(url)
        .header(
            reqwest::header::AUTHORIZATION,
            sensitive(&token.header_value()),
        )
        .header(reqwest::header::ACCEPT, payload::MEDIA_TYPE)
        .send()
        .await
        .map_err(|e| token.redact(&describe_failure(&e)).into_owned())?;
    let status = resp.status().as_u16();
    let body = read_body(resp).await;
    let body = token.redact(&body);
    Ok(match status {
        200 => {
            let (time, value) = payload::latest_fields(&body);
            Latest::Found { time, value }
        }
        404 => Latest::NotFound,
        _ => Latest::Refused {
            status,
            detail: payload::error_detail(&body),
        },
    })
}
