//! A strict, scriptable stand-in of the Enectiva import API, served over HTTP/1.1 on loopback.
//!
//! It owns its own listener, connections and in-memory store, and checks every request
//! independently against the wire contract (SPEC §4 and `shared/reference/enectiva-api.md`):
//! paths, headers, the flat `{"data": {...}}` body, the time format and the number text. It
//! must never reuse the crate's payload or sender code, because it exists to prove that code;
//! it is used by tests and by `demo`, never by the daemon's send path. Faults are scripted
//! ([`Answer`], [`Mode`], [`StandIn::reject_import_id`]) so tests can prove the sender's
//! handling of every row of the answer table, and it records every request ([`Attempt`]) and
//! how many it held at once ([`StandIn::concurrency`]) so tests can prove the sender's limits.
//! Nothing in here panics on network input.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper::body::{Body as _, Incoming};
use hyper::header::{
    ACCEPT, ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER,
    USER_AGENT,
};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

/// The only media type the API accepts in `Accept` and `Content-Type` (406/415 otherwise).
const MEDIA_TYPE: &str = "application/vnd.api+json";
/// Every request of ours names the product; anything else reaching the stand-in is a bug.
const USER_AGENT_PREFIX: &str = "enectiva-collector/";
/// Request bodies above this are answered 413; one reading is a few hundred bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// SPEC §3 rounds every value to 15 significant digits (7 for `f32` sources); more digits
/// than that on the wire are spurious (e.g. an `f32` widened to `f64`: `230.10000610351562`).
const MAX_SIGNIFICANT_DIGITS: usize = 15;
const MAX_IMPORT_ID_CHARS: usize = 255;
const MAX_UNIT_CHARS: usize = 50;
const MAX_SENDER_CHARS: usize = 255;
const MAX_SUIT_CHARS: usize = 255;
/// The API's name for the series of a request that carries no `suit`.
const DEFAULT_SUIT: &str = "default";

/// How the whole server behaves, set with [`StandIn::set_mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer every request (after any scripted answers and rejections).
    Normal,
    /// Listener and every open connection closed: clients see "connection refused" (or a reset
    /// on a kept-alive connection) until the mode leaves `Down`, which rebinds the same port.
    Down,
    /// Accept and read each request, never answer: clients run into their timeout.
    Hang,
    /// Read each request, then close its connection without answering.
    Reset,
}

/// A forced answer for one request, queued with [`StandIn::script`]. It is applied after the
/// request was read (so its [`Attempt`] carries the import id) and before normal processing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Answer this status. A 2xx runs normal processing (so only a valid request is stored)
    /// and replaces the status of a 2xx answer; any other status is answered as is, with a
    /// JSON:API error body, and stores nothing.
    Status(u16),
    /// As [`Answer::Status`], with this `Retry-After` value (seconds or an HTTP date).
    StatusRetryAfter(u16, String),
    /// Wait this long, then process the request normally (no further script entry is used).
    Delay(Duration),
    /// Never answer this request (a client timeout).
    Hang,
    /// Close this request's connection without answering.
    Reset,
}

/// Which endpoint a request addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/import/readings/{customer}`
    Readings,
    /// `/import/data_points/{customer}`
    DataPoints,
    /// `/import/readings/{customer}/{import_id}/{suit}/latest`
    LatestReading,
    /// `/import/data_points/{customer}/{import_id}/{suit}/latest`
    LatestDataPoint,
    /// Anything else (answered 404 or 400).
    Unknown,
}

/// One reading or data point the stand-in stored (answered 2xx), as it came over the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// `"reading"` or `"data_point"`.
    pub kind: &'static str,
    pub import_id: String,
    /// Which key carried the identifier: `"import_id"` or `"meter_id"`.
    pub id_field: &'static str,
    /// As sent; `None` when the key was absent (the API's `default` series).
    pub suit: Option<String>,
    /// As sent, e.g. `2026-11-26T10:15:00Z`.
    pub time: String,
    /// `state` of a reading or `value` of a data point.
    pub value: f64,
    /// The number exactly as it appeared in the body, e.g. `0.2301`.
    pub raw_value: String,
    pub unit: Option<String>,
    pub sender: Option<String>,
    /// The id answered in `{"data":{"id":"<id>"}}`.
    pub id: u64,
}

/// One request that reached the handler, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// When its body had been read.
    pub at: Instant,
    /// Which TCP connection carried it (0, 1, …), to check keep-alive.
    pub connection: u64,
    pub endpoint: Endpoint,
    /// From the body (`import_id` or `meter_id`) or the `latest` path, when parsable.
    pub import_id: Option<String>,
    /// The status answered; `None` while pending, and for requests hung or reset.
    pub status: Option<u16>,
}

/// How many requests the handler held at once: a request counts from the moment its body was
/// read until its answer was chosen (or its connection closed). A client sends the next
/// request of a series only after the previous answer reached it, so these are lower bounds of
/// the client's own concurrency: a maximum above a limit proves the client broke it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Concurrency {
    /// Requests held now.
    pub now: usize,
    /// The most held at once.
    pub max: usize,
    /// The most held at once per import id (requests without a parsable id are not counted).
    pub max_per_import_id: HashMap<String, usize>,
}

impl Concurrency {
    /// The largest per-import-id maximum (0 before any request).
    pub fn max_per_series(&self) -> usize {
        self.max_per_import_id.values().copied().max().unwrap_or(0)
    }
}

/// A running stand-in. Clones share one server; it stops with [`StandIn::stop`] or when the
/// last clone is dropped.
///
/// Each request is read whole (body capped at [`MAX_BODY`]) and recorded as an [`Attempt`],
/// then: the [`Mode`] (hang or reset), the delay of [`StandIn::set_delay`], the next scripted
/// [`Answer`], a rejection of its import id, and finally normal processing in the API's order:
/// path (404) and method (405), `Authorization` (401), customer id (404), `Accept` (406),
/// `Content-Type` for posts (415), `User-Agent` (400), body size (413), body (400), duplicate
/// (409), stored (201 with `{"data":{"id":"<n>"}}`). `latest` answers 200 or 404.
#[derive(Clone)]
pub struct StandIn {
    shared: Arc<Shared>,
    /// Cancels every task of the server when the last handle goes away, so a forgotten
    /// `stop` cannot leave a listener behind in a long `demo`.
    _alive: Arc<DropGuard>,
}

impl fmt::Debug for StandIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandIn")
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

impl StandIn {
    /// Binds `127.0.0.1:0` and serves the API of `customer_id`, accepting `Bearer <token>`.
    pub async fn start(customer_id: &str, token: &str) -> io::Result<StandIn> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let root = CancellationToken::new();
        let shared = Arc::new(Shared {
            customer_id: customer_id.to_owned(),
            addr,
            state: Mutex::new(State {
                token: token.to_owned(),
                mode: Mode::Normal,
                delay: Duration::ZERO,
                script: VecDeque::new(),
                rejections: HashMap::new(),
                accepted: Vec::new(),
                stored: HashSet::new(),
                attempts: Vec::new(),
                next_id: 0,
                echo_token: false,
                held: 0,
                max_held: 0,
                held_per_id: HashMap::new(),
                max_held_per_id: HashMap::new(),
            }),
            accepted_tx: watch::Sender::new(0),
            attempts_tx: watch::Sender::new(0),
            connections: AtomicU64::new(0),
            root: root.clone(),
            control: tokio::sync::Mutex::new(Control {
                listening: None,
                stopped: false,
            }),
        });
        let generation = Generation::spawn(&shared, listener);
        shared.control.lock().await.listening = Some(generation);
        Ok(StandIn {
            shared,
            _alive: Arc::new(root.drop_guard()),
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash; the port never changes.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The listening address (the same across `Down` and back).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Accept only `Bearer <token>` from now on (a rotated or revoked token).
    pub fn set_token(&self, token: &str) {
        self.shared.lock().token = token.to_owned();
    }

    /// Queue forced answers for the next requests, in order, after those already queued.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.shared.lock().script.extend(answers);
    }

    /// Answer every request for `import_id` (posts and `latest`, any kind and suit) with
    /// `status` and a JSON:API error body, until [`StandIn::clear_rejection`].
    pub fn reject_import_id(&self, import_id: &str, status: u16) {
        self.shared
            .lock()
            .rejections
            .insert(import_id.to_owned(), status);
    }

    /// Stop rejecting `import_id`.
    pub fn clear_rejection(&self, import_id: &str) {
        self.shared.lock().rejections.remove(import_id);
    }

    /// Switch the server's behaviour. When it returns, the change is in force: after `Down`
    /// the port refuses connections and every open connection is closed; leaving `Down`
    /// rebinds the same port (which fails only if something else took it meanwhile).
    pub async fn set_mode(&self, mode: Mode) -> io::Result<()> {
        let mut control = self.shared.control.lock().await;
        if control.stopped {
            return Err(io::Error::other("the stand-in was stopped"));
        }
        self.shared.lock().mode = mode;
        if mode == Mode::Down {
            if let Some(generation) = control.listening.take() {
                generation.shut().await;
            }
        } else if control.listening.is_none() {
            // tokio sets SO_REUSEADDR, so the port's TIME_WAIT sockets do not block this.
            let listener = TcpListener::bind(self.shared.addr).await?;
            control.listening = Some(Generation::spawn(&self.shared, listener));
        }
        Ok(())
    }

    /// Make every error answer quote the token its request carried (`Bearer <token>` at the
    /// end of the detail), like an API that echoes credentials: the sender must not pass it on
    /// to its logs or database.
    pub fn set_echo_token(&self, on: bool) {
        self.shared.lock().echo_token = on;
    }

    /// Wait this long before answering every request (slow answers). Zero turns it off.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    /// Everything stored (answered 2xx), in arrival order.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.shared.lock().accepted.clone()
    }

    pub fn accepted_count(&self) -> usize {
        self.shared.lock().accepted.len()
    }

    /// Every request that reached the handler, in arrival order.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.shared.lock().attempts.clone()
    }

    /// Requests held at once, overall and per import id (hold answers with
    /// [`StandIn::set_delay`] to make a client's concurrency visible).
    pub fn concurrency(&self) -> Concurrency {
        let state = self.shared.lock();
        Concurrency {
            now: state.held,
            max: state.max_held,
            max_per_import_id: state.max_held_per_id.clone(),
        }
    }

    /// How many TCP connections were accepted so far (keep-alive keeps this low).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` values were stored, at most `timeout`; false on timeout.
    pub async fn wait_accepted(&self, n: usize, timeout: Duration) -> bool {
        wait_count(&self.shared.accepted_tx, n, timeout).await
    }

    /// Waits until at least `n` requests reached the handler, at most `timeout`.
    pub async fn wait_attempts(&self, n: usize, timeout: Duration) -> bool {
        wait_count(&self.shared.attempts_tx, n, timeout).await
    }

    /// Waits until some request was answered with `status`, at most `timeout`. A request
    /// counts in [`StandIn::wait_attempts`] when it arrives, before its answer is chosen: a
    /// test that changes the behaviour after a given answer waits for the answer itself.
    pub async fn wait_answered(&self, status: u16, timeout: Duration) -> bool {
        let mut rx = self.shared.attempts_tx.subscribe();
        let shared = &self.shared;
        let seen = rx.wait_for(|_| {
            shared
                .lock()
                .attempts
                .iter()
                .any(|a| a.status == Some(status))
        });
        matches!(tokio::time::timeout(timeout, seen).await, Ok(Ok(_)))
    }

    /// Closes the listener and every connection and waits until they are gone.
    pub async fn stop(self) {
        let mut control = self.shared.control.lock().await;
        control.stopped = true;
        self.shared.root.cancel();
        if let Some(generation) = control.listening.take() {
            generation.shut().await;
        }
    }
}

async fn wait_count(counter: &watch::Sender<usize>, n: usize, timeout: Duration) -> bool {
    let mut rx = counter.subscribe();
    matches!(
        tokio::time::timeout(timeout, rx.wait_for(|&count| count >= n)).await,
        Ok(Ok(_))
    )
}

struct Shared {
    customer_id: String,
    addr: SocketAddr,
    state: Mutex<State>,
    accepted_tx: watch::Sender<usize>,
    attempts_tx: watch::Sender<usize>,
    connections: AtomicU64,
    root: CancellationToken,
    /// Serialises mode changes and `stop`; held across the awaits of closing and rebinding.
    control: tokio::sync::Mutex<Control>,
}

impl Shared {
    /// The state lock is never held across an await; a panic elsewhere must not wedge tests.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an arrival and returns its index with the behaviour in force, and the guard
    /// that counts the request as held until it is dropped.
    fn arrive(self: &Arc<Self>, attempt: Attempt) -> (usize, Mode, Duration, Held) {
        let id = attempt.import_id.clone();
        let (index, count, mode, delay) = {
            let mut state = self.lock();
            state.held += 1;
            state.max_held = state.max_held.max(state.held);
            if let Some(id) = &id {
                let held = state.held_per_id.entry(id.clone()).or_insert(0);
                *held += 1;
                let held = *held;
                let max = state.max_held_per_id.entry(id.clone()).or_insert(0);
                *max = (*max).max(held);
            }
            state.attempts.push(attempt);
            let count = state.attempts.len();
            (count - 1, count, state.mode, state.delay)
        };
        self.attempts_tx.send_replace(count);
        let held = Held {
            shared: self.clone(),
            import_id: id,
        };
        (index, mode, delay, held)
    }

    fn answered(&self, index: usize, status: u16) {
        if let Some(attempt) = self.lock().attempts.get_mut(index) {
            attempt.status = Some(status);
        }
        // Wakes `wait_answered` (the count is unchanged).
        self.attempts_tx.send_modify(|_| {});
    }

    fn next_scripted(&self) -> Option<Answer> {
        self.lock().script.pop_front()
    }
}

struct State {
    token: String,
    mode: Mode,
    delay: Duration,
    script: VecDeque<Answer>,
    rejections: HashMap<String, u16>,
    accepted: Vec<Accepted>,
    /// (kind, import id, suit or `default`, time, value bits): the API's 409 identity.
    stored: HashSet<(Kind, String, String, String, u64)>,
    attempts: Vec<Attempt>,
    next_id: u64,
    echo_token: bool,
    /// Requests between arrival and answer, now and at most (see [`Concurrency`]).
    held: usize,
    max_held: usize,
    held_per_id: HashMap<String, usize>,
    max_held_per_id: HashMap<String, usize>,
}

struct Control {
    listening: Option<Generation>,
    stopped: bool,
}

/// One request counted in [`State::held`]; dropping it (answered, closed, or its connection
/// gone while it hung) counts it out.
struct Held {
    shared: Arc<Shared>,
    import_id: Option<String>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.held = state.held.saturating_sub(1);
        if let Some(id) = &self.import_id {
            if let Some(held) = state.held_per_id.get_mut(id) {
                *held = held.saturating_sub(1);
                if *held == 0 {
                    state.held_per_id.remove(id);
                }
            }
        }
    }
}

/// One listening period: the accept loop and every connection it accepted.
struct Generation {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Generation {
    fn spawn(shared: &Arc<Shared>, listener: TcpListener) -> Generation {
        let stop = shared.root.child_token();
        let tasks = TaskTracker::new();
        tasks.spawn(accept_loop(
            shared.clone(),
            listener,
            stop.clone(),
            tasks.clone(),
        ));
        Generation { stop, tasks }
    }

    /// Drops the listener and every connection (hung requests included) and waits for it.
    async fn shut(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Our own accept loop (rather than `axum::serve`) so that `Down` can close open keep-alive
/// connections too, not just the listener.
async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let connection = shared.connections.fetch_add(1, Ordering::Relaxed);
                tasks.spawn(serve_connection(
                    shared.clone(),
                    stream,
                    connection,
                    stop.clone(),
                ));
            }
            Err(error) => {
                // Out of file descriptors and the like: pause instead of spinning on accept.
                tracing::debug!(%error, "stand-in: accept failed");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    connection: u64,
    stop: CancellationToken,
) {
    // Only latency is at stake; a failure here changes nothing observable.
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |request| {
        let shared = shared.clone();
        async move { handle(shared, connection, request).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        // Dropping the connection closes the socket: what `Down` and `stop` promise.
        () = stop.cancelled() => {}
        result = conn => {
            if let Err(error) = result {
                tracing::debug!(%error, connection, "stand-in: connection ended");
            }
        }
    }
}

/// Returned by the handler to make hyper close the connection without writing an answer.
#[derive(Debug)]
struct CloseConnection;

impl fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection closed without an answer")
    }
}

impl std::error::Error for CloseConnection {}

async fn handle(
    shared: Arc<Shared>,
    connection: u64,
    request: Request<Incoming>,
) -> Result<Response<String>, CloseConnection> {
    let (parts, body) = request.into_parts();
    // A client that vanishes mid-body gets no answer; there is nobody to read it.
    let body = read_body(body).await.map_err(|_| CloseConnection)?;
    let route = route(parts.uri.path());
    let endpoint = match &route {
        Ok(Route::Import { kind, .. }) => kind.import_endpoint(),
        Ok(Route::Latest { kind, .. }) => kind.latest_endpoint(),
        Err(_) => Endpoint::Unknown,
    };
    let import_id = match &route {
        Ok(Route::Latest { import_id, .. }) => Some(import_id.clone()),
        Ok(Route::Import { .. }) => sniff_import_id(&body),
        Err(_) => None,
    };
    let (index, mode, delay, _held) = shared.arrive(Attempt {
        at: Instant::now(),
        connection,
        endpoint,
        import_id: import_id.clone(),
        status: None,
    });
    match mode {
        Mode::Hang => return std::future::pending().await,
        Mode::Reset => return Err(CloseConnection),
        Mode::Normal | Mode::Down => {}
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let forced = match shared.next_scripted() {
        None => None,
        Some(Answer::Delay(wait)) => {
            tokio::time::sleep(wait).await;
            None
        }
        Some(Answer::Hang) => return std::future::pending().await,
        Some(Answer::Reset) => return Err(CloseConnection),
        Some(Answer::Status(status)) => Some((status, None)),
        Some(Answer::StatusRetryAfter(status, retry_after)) => Some((status, Some(retry_after))),
    };
    let rejection = import_id
        .as_ref()
        .and_then(|id| shared.lock().rejections.get(id).copied());
    let reply = match (forced, rejection) {
        (Some((status, retry_after)), _) if !is_success(status) => {
            Reply::error(status, "scripted answer of the stand-in").retry_after(retry_after)
        }
        (_, Some(status)) => Reply::error(
            status,
            format!(
                "import id {:?} is rejected by the stand-in (reject_import_id)",
                import_id.as_deref().unwrap_or_default()
            ),
        ),
        (Some((status, retry_after)), None) => {
            let mut reply = process(&shared, &parts, route, &body);
            if is_success(reply.status) {
                reply.status = status;
                reply.retry_after = retry_after;
            }
            reply
        }
        (None, None) => process(&shared, &parts, route, &body),
    };
    let echo = shared.lock().echo_token && reply.status >= 400;
    let reply = match parts.headers.get(AUTHORIZATION) {
        Some(sent) if echo => reply.echo(&String::from_utf8_lossy(sent.as_bytes())),
        _ => reply,
    };
    shared.answered(index, reply.status);
    Ok(reply.into_response())
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

enum ReadBody {
    Complete(Vec<u8>),
    TooLarge,
}

async fn read_body(mut body: Incoming) -> Result<ReadBody, hyper::Error> {
    if body.size_hint().lower() > MAX_BODY as u64 {
        return Ok(ReadBody::TooLarge);
    }
    let mut out = Vec::new();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        if let Ok(data) = frame?.into_data() {
            if out.len() + data.len() > MAX_BODY {
                return Ok(ReadBody::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(ReadBody::Complete(out))
}

/// Best effort, for [`Attempt::import_id`] and rejections only; validation is [`parse_body`].
fn sniff_import_id(body: &ReadBody) -> Option<String> {
    let ReadBody::Complete(bytes) = body else {
        return None;
    };
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let data = value.get("data")?;
    let id = data.get("import_id").or_else(|| data.get("meter_id"))?;
    id.as_str().map(str::to_owned)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Reading,
    DataPoint,
}

impl Kind {
    fn from_segment(segment: &str) -> Option<Kind> {
        match segment {
            "readings" => Some(Kind::Reading),
            "data_points" => Some(Kind::DataPoint),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Reading => "reading",
            Kind::DataPoint => "data_point",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Reading => "readings",
            Kind::DataPoint => "data points",
        }
    }

    /// The key of the number: SPEC §4 sends readings as `state`, data points as `value`.
    fn value_key(self) -> &'static str {
        match self {
            Kind::Reading => "state",
            Kind::DataPoint => "value",
        }
    }

    fn import_endpoint(self) -> Endpoint {
        match self {
            Kind::Reading => Endpoint::Readings,
            Kind::DataPoint => Endpoint::DataPoints,
        }
    }

    fn latest_endpoint(self) -> Endpoint {
        match self {
            Kind::Reading => Endpoint::LatestReading,
            Kind::DataPoint => Endpoint::LatestDataPoint,
        }
    }
}

enum Route<'p> {
    Import {
        kind: Kind,
        customer: &'p str,
    },
    Latest {
        kind: Kind,
        customer: &'p str,
        import_id: String,
        suit: String,
    },
}

enum RouteError {
    NotFound,
    BadEscape,
}

/// Exact paths only: a doubled or trailing slash is a 404, as a sign of a badly joined URL.
fn route(path: &str) -> Result<Route<'_>, RouteError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(RouteError::NotFound);
    };
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(RouteError::NotFound);
    }
    match segments.as_slice() {
        ["import", kind, customer] => Ok(Route::Import {
            kind: Kind::from_segment(kind).ok_or(RouteError::NotFound)?,
            customer,
        }),
        ["import", kind, customer, import_id, suit, "latest"] => Ok(Route::Latest {
            kind: Kind::from_segment(kind).ok_or(RouteError::NotFound)?,
            customer,
            import_id: percent_decode(import_id).ok_or(RouteError::BadEscape)?,
            suit: percent_decode(suit).ok_or(RouteError::BadEscape)?,
        }),
        _ => Err(RouteError::NotFound),
    }
}

fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(byte);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

struct Reply {
    status: u16,
    body: String,
    retry_after: Option<String>,
    allow: Option<&'static str>,
}

impl Reply {
    fn json(status: u16, body: String) -> Reply {
        Reply {
            status,
            body,
            retry_after: None,
            allow: None,
        }
    }

    /// A JSON:API error document; every error the stand-in gives carries a `detail`.
    fn error(status: u16, detail: impl Into<String>) -> Reply {
        let title = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let body = serde_json::json!({
            "errors": [{"status": status.to_string(), "title": title, "detail": detail.into()}]
        });
        Reply::json(status, body.to_string())
    }

    /// Appends `authorization` to the detail of an error document ([`StandIn::set_echo_token`]).
    fn echo(mut self, authorization: &str) -> Reply {
        if let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(&self.body) {
            if let Some(detail) = doc.pointer_mut("/errors/0/detail") {
                let text = format!(
                    "{} (request authorized with {authorization})",
                    detail.as_str().unwrap_or_default()
                );
                *detail = serde_json::Value::from(text);
                self.body = doc.to_string();
            }
        }
        self
    }

    fn retry_after(mut self, value: Option<String>) -> Reply {
        self.retry_after = value;
        self
    }

    fn into_response(self) -> Response<String> {
        // A scripted status outside 200..=599 cannot be a final HTTP answer.
        let status = StatusCode::from_u16(self.status)
            .ok()
            .filter(|s| (200..600).contains(&s.as_u16()));
        let Some(status) = status else {
            return Reply::error(
                500,
                format!("the stand-in was scripted with status {}", self.status),
            )
            .into_response();
        };
        let body = if matches!(status.as_u16(), 204 | 304) {
            String::new()
        } else {
            self.body
        };
        let has_body = !body.is_empty();
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        if has_body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
        }
        if let Some(value) = self
            .retry_after
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            headers.insert(RETRY_AFTER, value);
        }
        if let Some(allow) = self.allow {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// What the API itself would answer: routing, headers, body, duplicates, storage.
fn process(
    shared: &Shared,
    parts: &Parts,
    route: Result<Route<'_>, RouteError>,
    body: &ReadBody,
) -> Reply {
    let route = match route {
        Ok(route) => route,
        Err(RouteError::NotFound) => {
            return Reply::error(404, format!("no such path: {}", parts.uri.path()));
        }
        Err(RouteError::BadEscape) => {
            return Reply::error(400, "bad percent-encoding in the path");
        }
    };
    let (method, allow, customer) = match &route {
        Route::Import { customer, .. } => (Method::POST, "POST", *customer),
        Route::Latest { customer, .. } => (Method::GET, "GET", *customer),
    };
    if parts.method != method {
        let mut reply = Reply::error(405, format!("{} is not allowed here", parts.method));
        reply.allow = Some(allow);
        return reply;
    }
    let token = shared.lock().token.clone();
    if let Err(detail) = check_authorization(&parts.headers, &token) {
        return Reply::error(401, detail);
    }
    if customer != shared.customer_id {
        return Reply::error(404, "unknown customer id");
    }
    if let Err(detail) = check_media_type(&parts.headers, ACCEPT) {
        return Reply::error(406, detail);
    }
    if method == Method::POST {
        if let Err(detail) = check_media_type(&parts.headers, CONTENT_TYPE) {
            return Reply::error(415, detail);
        }
    }
    if let Err(detail) = check_user_agent(&parts.headers) {
        return Reply::error(400, detail);
    }
    let bytes = match body {
        ReadBody::Complete(bytes) => bytes,
        ReadBody::TooLarge => {
            return Reply::error(413, format!("request body over {MAX_BODY} bytes"));
        }
    };
    match route {
        Route::Import { kind, .. } => match parse_body(kind, bytes) {
            Ok(candidate) => store(shared, candidate),
            Err(detail) => Reply::error(400, detail),
        },
        Route::Latest {
            kind,
            import_id,
            suit,
            ..
        } => latest(shared, kind, &import_id, &suit),
    }
}

/// The single value of a header, as text; a repeated or non-ASCII header is an error.
fn single_header<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, String> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(format!("{} appears more than once", label(name)));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| format!("{} is not visible ASCII", label(name)))
}

/// Header names as the docs spell them, for details (`HeaderName` prints lowercase).
fn label(name: &HeaderName) -> &'static str {
    match name.as_str() {
        "authorization" => "Authorization",
        "accept" => "Accept",
        "content-type" => "Content-Type",
        "user-agent" => "User-Agent",
        _ => "a header",
    }
}

fn check_authorization(headers: &HeaderMap, token: &str) -> Result<(), String> {
    // Never echo what was sent: it may be a real token.
    match single_header(headers, &AUTHORIZATION)? {
        None => Err("missing Authorization header".to_owned()),
        Some(value) => match value.strip_prefix("Bearer ") {
            None => Err("Authorization must be `Bearer <token>`".to_owned()),
            Some(sent) if sent == token => Ok(()),
            Some(_) => Err("invalid token".to_owned()),
        },
    }
}

/// `Accept` and `Content-Type` must be exactly the JSON:API media type, without parameters.
fn check_media_type(headers: &HeaderMap, name: HeaderName) -> Result<(), String> {
    match single_header(headers, &name)? {
        Some(value) if value.trim().eq_ignore_ascii_case(MEDIA_TYPE) => Ok(()),
        Some(value) => Err(format!(
            "{} must be {MEDIA_TYPE}, not {value:?}",
            label(&name)
        )),
        None => Err(format!("missing {}: it must be {MEDIA_TYPE}", label(&name))),
    }
}

fn check_user_agent(headers: &HeaderMap) -> Result<(), String> {
    let value = single_header(headers, &USER_AGENT)?;
    let version = value.and_then(|v| v.strip_prefix(USER_AGENT_PREFIX));
    match version {
        Some(version) if version.starts_with(|c: char| c.is_ascii_alphanumeric()) => Ok(()),
        _ => Err(format!(
            "User-Agent must name the product and version ({USER_AGENT_PREFIX}<version>), got {:?}",
            value.unwrap_or("nothing")
        )),
    }
}

/// A validated request body.
struct Candidate {
    kind: Kind,
    import_id: String,
    id_field: &'static str,
    suit: Option<String>,
    time: String,
    value: f64,
    raw_value: String,
    unit: Option<String>,
    sender: Option<String>,
}

/// The keys of a JSON object in order, with each value's raw text: duplicate keys stay
/// visible (serde_json's own maps keep the last silently) and numbers keep their digits.
struct Pairs(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Pairs, D::Error> {
        struct PairsVisitor;
        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = Pairs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value::<Box<RawValue>>()?;
                    pairs.push((key, value));
                }
                Ok(Pairs(pairs))
            }
        }
        deserializer.deserialize_map(PairsVisitor)
    }
}

/// Checks a body against SPEC §4: `{"data": {...}}` with flat, known fields only.
fn parse_body(kind: Kind, bytes: &[u8]) -> Result<Candidate, String> {
    let top: Pairs = serde_json::from_slice(bytes)
        .map_err(|e| format!("the body must be a JSON object {{\"data\": {{...}}}}: {e}"))?;
    let mut data = None;
    for (key, value) in top.0 {
        match key.as_str() {
            "data" if data.is_none() => data = Some(value),
            "data" => return Err("`data` appears twice".to_owned()),
            other => return Err(format!("unknown top-level key `{other}`")),
        }
    }
    let data = data.ok_or("missing `data`")?;
    let fields: Pairs = serde_json::from_str(data.get())
        .map_err(|e| format!("`data` must be an object of flat fields: {e}"))?;

    let mut seen = HashSet::new();
    let mut import_id = None;
    let mut meter_id = None;
    let mut time = None;
    let mut number = None;
    let mut unit = None;
    let mut sender = None;
    let mut suit = None;
    for (key, raw) in &fields.0 {
        if !seen.insert(key.as_str()) {
            return Err(format!("`{key}` appears twice in `data`"));
        }
        match key.as_str() {
            "import_id" => import_id = Some(json_string(key, raw)?),
            "meter_id" => meter_id = Some(json_string(key, raw)?),
            "time" => time = Some(json_string(key, raw)?),
            "unit" => unit = Some(json_string(key, raw)?),
            "sender" => sender = Some(json_string(key, raw)?),
            "suit" => suit = Some(json_string(key, raw)?),
            k if k == kind.value_key() => number = Some(raw),
            "state" | "value" => {
                return Err(format!(
                    "{} carry `{}`, not `{key}`",
                    kind.plural(),
                    kind.value_key()
                ));
            }
            other => return Err(format!("unknown key `{other}` in `data`")),
        }
    }

    let (import_id, id_field) = match (import_id, meter_id) {
        (Some(_), Some(_)) => {
            return Err("send either `import_id` or `meter_id`, not both".to_owned());
        }
        (Some(id), None) => (id, "import_id"),
        (None, Some(id)) => (id, "meter_id"),
        (None, None) => return Err("missing `import_id`".to_owned()),
    };
    check_identifier(id_field, &import_id, MAX_IMPORT_ID_CHARS)?;
    let time = time.ok_or("missing `time`")?;
    check_time(&time)?;
    let raw = number.ok_or_else(|| format!("missing `{}`", kind.value_key()))?;
    let (value, raw_value) = check_number(kind.value_key(), raw)?;
    if let Some(unit) = &unit {
        check_text("unit", unit, MAX_UNIT_CHARS)?;
    }
    if let Some(sender) = &sender {
        check_text("sender", sender, MAX_SENDER_CHARS)?;
    }
    if let Some(suit) = &suit {
        check_identifier("suit", suit, MAX_SUIT_CHARS)?;
    }
    Ok(Candidate {
        kind,
        import_id,
        id_field,
        suit,
        time,
        value,
        raw_value,
        unit,
        sender,
    })
}

fn json_string(key: &str, raw: &RawValue) -> Result<String, String> {
    serde_json::from_str(raw.get()).map_err(|_| format!("`{key}` must be a JSON string"))
}

/// Optional text fields are omitted when unset, so an empty one is a sender bug.
fn check_text(key: &str, text: &str, max_chars: usize) -> Result<(), String> {
    if text.is_empty() {
        return Err(format!("`{key}` is empty; omit it instead"));
    }
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(format!(
            "`{key}` has {chars} characters, at most {max_chars}"
        ));
    }
    Ok(())
}

fn check_identifier(key: &str, id: &str, max_chars: usize) -> Result<(), String> {
    check_text(key, id, max_chars)?;
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{key}` {id:?} contains whitespace"));
    }
    Ok(())
}

/// Exactly `YYYY-MM-DDTHH:MM:SSZ`: SPEC §4 promises UTC and whole seconds.
fn check_time(time: &str) -> Result<(), String> {
    let bytes = time.as_bytes();
    let shaped = bytes.len() == 20
        && bytes.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'Z',
            _ => c.is_ascii_digit(),
        });
    if !shaped {
        let hint = if time.contains('.') {
            ": fractional seconds are not allowed"
        } else if !time.ends_with('Z') {
            ": the time must be UTC, written with `Z`"
        } else {
            ""
        };
        return Err(format!(
            "`time` {time:?} is not RFC 3339 UTC with whole seconds like 2026-11-26T10:15:00Z{hint}"
        ));
    }
    // All bytes were checked to be ASCII, so these slices are on char boundaries.
    let field = |from: usize, to: usize| -> u32 {
        time.get(from..to)
            .and_then(|s| s.parse().ok())
            .unwrap_or(u32::MAX)
    };
    let (year, month, day) = (field(0, 4), field(5, 7), field(8, 10));
    let (hour, minute, second) = (field(11, 13), field(14, 16), field(17, 19));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => 0,
    };
    if day == 0 || day > days || hour > 23 || minute > 59 || second > 59 {
        return Err(format!("`time` {time:?} is not a valid date and time"));
    }
    Ok(())
}

/// A finite JSON number without spurious digits; returns it with its exact text.
fn check_number(key: &str, raw: &RawValue) -> Result<(f64, String), String> {
    let text = raw.get();
    if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return Err(format!("`{key}` must be a JSON number, not {text}"));
    }
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{key}` {text} is not a number"))?;
    if !value.is_finite() {
        return Err(format!("`{key}` {text} is out of range"));
    }
    let digits = significant_digits(text);
    if digits > MAX_SIGNIFICANT_DIGITS {
        return Err(format!(
            "`{key}` {text} has {digits} significant digits, more than the \
             {MAX_SIGNIFICANT_DIGITS} a value is rounded to: spurious digits \
             (an f32 widened to f64?)"
        ));
    }
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    if let Some((_, fraction)) = mantissa.split_once('.') {
        // `1.0` is how JSON serializers write a whole float; `1.50` is padding.
        if fraction.len() > 1 && fraction.ends_with('0') {
            return Err(format!(
                "`{key}` {text} has trailing zeros: spurious digits"
            ));
        }
    }
    Ok((value, text.to_owned()))
}

fn significant_digits(number: &str) -> usize {
    let mantissa = number.split(['e', 'E']).next().unwrap_or(number);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    digits.trim_start_matches('0').trim_end_matches('0').len()
}

fn suit_key(suit: &Option<String>) -> &str {
    suit.as_deref().unwrap_or(DEFAULT_SUIT)
}

fn store(shared: &Shared, candidate: Candidate) -> Reply {
    // 0.0 and -0.0 are the same reading.
    let bits = if candidate.value == 0.0 {
        0
    } else {
        candidate.value.to_bits()
    };
    let (reply, count) = {
        let mut state = shared.lock();
        let identity = (
            candidate.kind,
            candidate.import_id.clone(),
            suit_key(&candidate.suit).to_owned(),
            candidate.time.clone(),
            bits,
        );
        if !state.stored.insert(identity) {
            return Reply::error(
                409,
                format!("an identical {} is already stored", candidate.kind.name()),
            );
        }
        state.next_id += 1;
        let id = state.next_id;
        state.accepted.push(Accepted {
            kind: candidate.kind.name(),
            import_id: candidate.import_id,
            id_field: candidate.id_field,
            suit: candidate.suit,
            time: candidate.time,
            value: candidate.value,
            raw_value: candidate.raw_value,
            unit: candidate.unit,
            sender: candidate.sender,
            id,
        });
        let body = serde_json::json!({"data": {"id": id.to_string()}});
        (Reply::json(201, body.to_string()), state.accepted.len())
    };
    shared.accepted_tx.send_replace(count);
    reply
}

/// The stored value of the series with the greatest `time` (the later arrival on a tie).
fn latest(shared: &Shared, kind: Kind, import_id: &str, suit: &str) -> Reply {
    let state = shared.lock();
    let best = state
        .accepted
        .iter()
        .filter(|a| a.kind == kind.name() && a.import_id == import_id && suit_key(&a.suit) == suit)
        .fold(None::<&Accepted>, |best, a| match best {
            Some(b) if b.time > a.time => Some(b),
            _ => Some(a),
        });
    match best {
        None => Reply::error(
            404,
            format!(
                "no {} stored for import id {import_id:?}, suit {suit:?}",
                kind.plural()
            ),
        ),
        Some(a) => {
            // The number goes out with the text it came in with.
            let time = serde_json::Value::String(a.time.clone());
            Reply::json(
                200,
                format!(
                    r#"{{"data":{{"time":{time},"{}":{}}}}}"#,
                    kind.value_key(),
                    a.raw_value
                ),
            )
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::Value;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    const CUSTOMER: &str = "0c7f5e4a-1111-4222-8333-944455556666";
    const TOKEN: &str = "s3cret-import-token";
    const UA: &str = "enectiva-collector/0.1.0";
    const T0: &str = "2026-11-26T10:15:00Z";
    const WAIT: Duration = Duration::from_secs(5);

    fn client_with_timeout(timeout: Duration) -> reqwest::Client {
        // reqwest is built without a default TLS provider; plain http still builds its config.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder().timeout(timeout).build().unwrap()
    }

    fn client() -> reqwest::Client {
        client_with_timeout(Duration::from_secs(10))
    }

    fn reading(import_id: &str, time: &str, state: &str) -> String {
        format!(
            r#"{{"data":{{"import_id":"{import_id}","time":"{time}","state":{state},"unit":"kWh","sender":"gw-1"}}}}"#
        )
    }

    fn url(api: &StandIn, kind: &str) -> String {
        format!("{}/import/{kind}/{CUSTOMER}", api.base_url())
    }

    fn latest_url(api: &StandIn, kind: &str, import_id: &str, suit: &str) -> String {
        format!(
            "{}/import/{kind}/{CUSTOMER}/{import_id}/{suit}/latest",
            api.base_url()
        )
    }

    fn with_headers(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        with_headers_but(request, "", None)
    }

    /// All four headers of SPEC §4, except `name`, which is left out or set to `value`.
    fn with_headers_but(
        mut request: reqwest::RequestBuilder,
        name: &str,
        value: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let bearer = format!("Bearer {TOKEN}");
        let headers = [
            ("Authorization", bearer.as_str()),
            ("Accept", MEDIA_TYPE),
            ("Content-Type", MEDIA_TYPE),
            ("User-Agent", UA),
        ];
        for (header, default) in headers {
            if header != name {
                request = request.header(header, default);
            } else if let Some(value) = value {
                request = request.header(header, value);
            }
        }
        request
    }

    /// Sends and returns (status, Retry-After, body as JSON or Null).
    async fn send(request: reqwest::RequestBuilder) -> (u16, Option<String>, Value) {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, retry_after, body)
    }

    async fn post(api: &StandIn, kind: &str, body: String) -> (u16, Option<String>, Value) {
        send(with_headers(client().post(url(api, kind))).body(body)).await
    }

    fn detail(body: &Value) -> String {
        assert!(body["errors"][0]["status"].is_string(), "{body}");
        body["errors"][0]["detail"].as_str().unwrap().to_owned()
    }

    async fn start() -> StandIn {
        StandIn::start(CUSTOMER, TOKEN).await.unwrap()
    }

    /// One request over a kept connection; returns (status, body).
    async fn raw_exchange(
        stream: &mut BufReader<TcpStream>,
        request: &str,
    ) -> io::Result<(u16, String)> {
        stream.get_mut().write_all(request.as_bytes()).await?;
        let mut status_line = String::new();
        stream.read_line(&mut status_line).await?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut length = 0;
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await?;
        Ok((status, String::from_utf8(body).unwrap()))
    }

    fn raw_post(body: &str) -> String {
        format!(
            "POST /import/readings/{CUSTOMER} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Accept: {MEDIA_TYPE}\r\nContent-Type: {MEDIA_TYPE}\r\nUser-Agent: {UA}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn stores_a_reading_then_answers_409_for_the_same() {
        let api = start().await;
        let (status, _, body) =
            post(&api, "readings", reading("40AABB_007", T0, "123456.78")).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["data"]["id"], "1");
        let (status, _, body) =
            post(&api, "readings", reading("40AABB_007", T0, "123456.78")).await;
        assert_eq!(status, 409);
        assert!(detail(&body).contains("identical"));
        // Same value written differently is the same reading; another value is not.
        let (status, _, _) = post(&api, "readings", reading("40AABB_007", T0, "1.2345678e5")).await;
        assert_eq!(status, 409);
        let (status, _, _) = post(&api, "readings", reading("40AABB_007", T0, "123456.79")).await;
        assert_eq!(status, 201);
        let accepted = api.accepted();
        assert_eq!(api.accepted_count(), 2);
        assert_eq!(
            accepted[0],
            Accepted {
                kind: "reading",
                import_id: "40AABB_007".into(),
                id_field: "import_id",
                suit: None,
                time: T0.into(),
                value: 123456.78,
                raw_value: "123456.78".into(),
                unit: Some("kWh".into()),
                sender: Some("gw-1".into()),
                id: 1,
            }
        );
        let statuses: Vec<_> = api.attempts().iter().map(|a| a.status).collect();
        assert_eq!(statuses, [Some(201), Some(409), Some(409), Some(201)]);
        assert!(
            api.attempts()
                .iter()
                .all(|a| a.endpoint == Endpoint::Readings
                    && a.import_id.as_deref() == Some("40AABB_007"))
        );
        api.stop().await;
    }

    #[tokio::test]
    async fn header_errors() {
        let api = start().await;
        let body = reading("A", T0, "1");
        let request = |name: &str, value: Option<&str>| {
            with_headers_but(client().post(url(&api, "readings")), name, value).body(body.clone())
        };
        let cases: &[(&str, Option<&str>, u16, &str)] = &[
            ("Authorization", None, 401, "missing Authorization"),
            ("Authorization", Some("Bearer nope"), 401, "invalid token"),
            // The legacy docs' `Bearer: token` typo is not the wire format.
            (
                "Authorization",
                Some("Bearer: s3cret-import-token"),
                401,
                "Bearer <token>",
            ),
            (
                "Authorization",
                Some("bearer s3cret-import-token"),
                401,
                "Bearer <token>",
            ),
            // reqwest fills in `Accept: */*`; the raw request below really leaves it out.
            ("Accept", None, 406, "Accept must be"),
            ("Accept", Some("application/json"), 406, "Accept must be"),
            ("Accept", Some("*/*"), 406, "Accept must be"),
            ("Content-Type", None, 415, "missing Content-Type"),
            (
                "Content-Type",
                Some("application/json"),
                415,
                "Content-Type must be",
            ),
            (
                "Content-Type",
                Some("application/vnd.api+json; charset=utf-8"),
                415,
                "Content-Type must be",
            ),
            ("User-Agent", None, 400, "User-Agent"),
            ("User-Agent", Some("curl/8.5"), 400, "User-Agent"),
            ("User-Agent", Some("enectiva-collector/"), 400, "User-Agent"),
        ];
        for (name, value, status, expected) in cases {
            let (got, _, json) = send(request(name, *value)).await;
            assert_eq!(got, *status, "{name}: {value:?}: {json}");
            let detail = detail(&json);
            assert!(detail.contains(expected), "{name}: {value:?}: {detail}");
            assert!(
                !detail.contains("nope") && !detail.contains(TOKEN),
                "never echo a token"
            );
        }
        // A repeated header is ambiguous, hence refused.
        let twice = with_headers(client().post(url(&api, "readings")))
            .header("User-Agent", UA)
            .body(body.clone());
        let (status, _, json) = send(twice).await;
        assert_eq!(status, 400);
        assert!(detail(&json).contains("more than once"));
        assert_eq!(api.accepted_count(), 0);

        let mut raw = BufReader::new(TcpStream::connect(api.addr()).await.unwrap());
        let no_accept = raw_post(&body).replace(&format!("Accept: {MEDIA_TYPE}\r\n"), "");
        let (status, text) = raw_exchange(&mut raw, &no_accept).await.unwrap();
        assert_eq!(status, 406);
        assert!(text.contains("missing Accept"), "{text}");

        // A rotated token: the old one is refused from now on.
        api.set_token("rotated");
        assert_eq!(send(request("", None)).await.0, 401);
        let rotated = request("Authorization", Some("Bearer rotated"));
        assert_eq!(send(rotated).await.0, 201);
        api.stop().await;
    }

    #[tokio::test]
    async fn body_errors_are_400_with_a_detail() {
        let api = start().await;
        let cases: &[(&str, &str)] = &[
            (
                r#"{"data":{"import_id":"A","time":"2026-11-26T10:15:00.000Z","state":1}}"#,
                "fractional",
            ),
            (
                r#"{"data":{"import_id":"A","time":"2026-11-26T11:15:00+01:00","state":1}}"#,
                "UTC",
            ),
            (
                r#"{"data":{"import_id":"A","time":"2026-02-30T10:15:00Z","state":1}}"#,
                "valid date",
            ),
            (
                r#"{"data":{"import_id":"A","time":"2026-11-26T10:15:00Z"}}"#,
                "missing `state`",
            ),
            (
                r#"{"data":{"import_id":"A","time":"2026-11-26T10:15:00Z","state":"1.5"}}"#,
                "JSON number",
            ),
            (
                r#"{"data":{"import_id":"A","time":"2026-11-26T10:15:00Z","state":null}}"#,
                "JSON number",
            ),
            (
                r#"{"data":{"import_id":"A","time":"2026-11-26T10:15:00Z","value":1}}"#,
                "readings carry `state`",
            ),
            (
                r#"{"data":{"import_id":"A","meter_id":"A","time":"2026-11-26T10:15:00Z","state":1}}"#,
                "not both",
            ),
            (
                r#"{"data":{"import_id":"A","time":"2026-11-26T10:15:00Z","state":1,"note":"x"}}"#,
                "unknown key `note`",
            ),
            (
                r#"{"data":{"import_id":"A","time":"2026-11-26T10:15:00Z","state":1},"meta":{}}"#,
                "unknown top-level key",
            ),
            (
                r#"{"data":{"import_id":"A B","time":"2026-11-26T10:15:00Z","state":1}}"#,
                "whitespace",
            ),
            (
                r#"{"data":{"import_id":"","time":"2026-11-26T10:15:00Z","state":1}}"#,
                "empty",
            ),
            (
                r#"{"data":{"import_id":"A","time":"2026-11-26T10:15:00Z","state":1,"state":2}}"#,
                "twice",
            ),
            (
                r#"{"data":{"import_id":"A","time":"2026-11-26T10:15:00Z","state":230.10000610351562}}"#,
                "spurious",
            ),
            (
                r#"{"data":{"import_id":"A","time":"2026-11-26T10:15:00Z","state":230.10}}"#,
                "spurious",
            ),
            (
                r#"{"data":{"import_id":"A","time":"2026-11-26T10:15:00Z","state":1e400}}"#,
                "out of range",
            ),
            (
                r#"{"data":{"import_id":"A","time":"2026-11-26T10:15:00Z","state":1,"suit":"a b"}}"#,
                "whitespace",
            ),
            (
                r#"{"data":{"import_id":"A","time":"2026-11-26T10:15:00Z","state":1,"unit":null}}"#,
                "JSON string",
            ),
            (
                r#"{"data":{"type":"readings","attributes":{"import_id":"A"}}}"#,
                "unknown key `type`",
            ),
            (r#"{"data":[]}"#, "object"),
            (r#"[1]"#, "JSON object"),
            (
                r#"{"data":{"import_id":"A","time":"2026-11-26T10:15:00Z","state":NaN}}"#,
                "JSON",
            ),
            ("", "JSON"),
        ];
        for (body, expected) in cases {
            let (status, _, json) = post(&api, "readings", (*body).to_owned()).await;
            assert_eq!(status, 400, "{body}: {json}");
            let detail = detail(&json);
            assert!(detail.contains(expected), "{body}: {detail}");
        }
        let long_unit = format!(
            r#"{{"data":{{"import_id":"A","time":"{T0}","state":1,"unit":"{}"}}}}"#,
            "u".repeat(51)
        );
        let (status, _, json) = post(&api, "readings", long_unit).await;
        assert_eq!(status, 400);
        assert!(detail(&json).contains("at most 50"));
        let unit_50 = format!(
            r#"{{"data":{{"import_id":"A","time":"{T0}","state":1,"unit":"{}°"}}}}"#,
            "u".repeat(49)
        );
        assert_eq!(
            post(&api, "readings", unit_50).await.0,
            201,
            "50 characters, 51 bytes"
        );
        assert_eq!(api.accepted_count(), 1);
        api.stop().await;
    }

    #[tokio::test]
    async fn data_points_carry_value_and_meter_id_is_recorded() {
        let api = start().await;
        let point = format!(
            r#"{{"data":{{"import_id":"WX_T","time":"{T0}","value":-3.5,"unit":"°C","suit":"test"}}}}"#
        );
        assert_eq!(post(&api, "data_points", point).await.0, 201);
        let with_state = format!(r#"{{"data":{{"import_id":"WX_T","time":"{T0}","state":1}}}}"#);
        let (status, _, json) = post(&api, "data_points", with_state).await;
        assert_eq!(status, 400);
        assert!(detail(&json).contains("data points carry `value`"));
        let legacy = format!(r#"{{"data":{{"meter_id":"40AABB_007","time":"{T0}","state":7}}}}"#);
        assert_eq!(post(&api, "readings", legacy).await.0, 201);
        let accepted = api.accepted();
        assert_eq!(accepted[0].kind, "data_point");
        assert_eq!(accepted[0].raw_value, "-3.5");
        assert_eq!(accepted[0].suit.as_deref(), Some("test"));
        assert_eq!(accepted[1].kind, "reading");
        assert_eq!(accepted[1].id_field, "meter_id");
        assert_eq!(accepted[1].import_id, "40AABB_007");
        api.stop().await;
    }

    #[tokio::test]
    async fn keeps_the_raw_number_text() {
        let api = start().await;
        let numbers = [
            "0.2301",
            "230.1",
            "1.0",
            "12",
            "-0",
            "1.5e3",
            "0.30000000000001",
        ];
        for (minute, number) in numbers.iter().enumerate() {
            let time = format!("2026-11-26T10:{minute:02}:00Z");
            let (status, _, json) = post(&api, "readings", reading("R", &time, number)).await;
            assert_eq!(status, 201, "{number}: {json}");
        }
        let raw: Vec<_> = api.accepted().into_iter().map(|a| a.raw_value).collect();
        assert_eq!(raw, numbers);
        assert_eq!(api.accepted()[5].value, 1500.0);
        api.stop().await;
    }

    #[tokio::test]
    async fn latest_is_404_then_the_greatest_time() {
        let api = start().await;
        let get = |u: String| with_headers(client().get(u));
        let (status, _, json) = send(get(latest_url(&api, "readings", "M1", "default"))).await;
        assert_eq!(status, 404);
        assert!(detail(&json).contains("M1"));
        post(
            &api,
            "readings",
            reading("M1", "2026-11-26T10:15:00Z", "10.5"),
        )
        .await;
        // An older reading arriving later does not become the latest.
        post(
            &api,
            "readings",
            reading("M1", "2026-11-26T10:00:00Z", "10"),
        )
        .await;
        let (status, _, json) = send(get(latest_url(&api, "readings", "M1", "default"))).await;
        assert_eq!(status, 200);
        assert_eq!(
            json,
            serde_json::json!({"data": {"time": "2026-11-26T10:15:00Z", "state": 10.5}})
        );
        // Another suit is another series.
        assert_eq!(
            send(get(latest_url(&api, "readings", "M1", "test")))
                .await
                .0,
            404
        );
        assert_eq!(
            send(get(latest_url(&api, "data_points", "M1", "default")))
                .await
                .0,
            404
        );
        let point =
            format!(r#"{{"data":{{"import_id":"P","time":"{T0}","value":2,"suit":"test"}}}}"#);
        post(&api, "data_points", point).await;
        let (status, _, json) = send(get(latest_url(&api, "data_points", "P", "test"))).await;
        assert_eq!(status, 200);
        assert_eq!(json["data"]["value"], 2);
        // `latest` needs the same credentials and Accept.
        let bad_accept = with_headers_but(
            client().get(latest_url(&api, "data_points", "P", "test")),
            "Accept",
            Some("*/*"),
        );
        assert_eq!(send(bad_accept).await.0, 406);
        let bad_token = with_headers_but(
            client().get(latest_url(&api, "data_points", "P", "test")),
            "Authorization",
            Some("Bearer x"),
        );
        assert_eq!(send(bad_token).await.0, 401);
        let kinds: Vec<_> = api.attempts().iter().map(|a| a.endpoint).collect();
        assert_eq!(kinds[0], Endpoint::LatestReading);
        assert_eq!(api.attempts()[0].import_id.as_deref(), Some("M1"));
        api.stop().await;
    }

    #[tokio::test]
    async fn routing_errors() {
        let api = start().await;
        let body = reading("A", T0, "1");
        let other_customer = format!("{}/import/readings/someone-else", api.base_url());
        let (status, _, json) =
            send(with_headers(client().post(other_customer)).body(body.clone())).await;
        assert_eq!(status, 404);
        assert!(detail(&json).contains("customer"));
        let unknown = format!("{}/import/profiles/{CUSTOMER}", api.base_url());
        assert_eq!(
            send(with_headers(client().post(unknown)).body(body.clone()))
                .await
                .0,
            404
        );
        let doubled = format!("{}//import/readings/{CUSTOMER}", api.base_url());
        assert_eq!(
            send(with_headers(client().post(doubled)).body(body.clone()))
                .await
                .0,
            404
        );
        let trailing = format!("{}/import/readings/{CUSTOMER}/", api.base_url());
        assert_eq!(
            send(with_headers(client().post(trailing)).body(body.clone()))
                .await
                .0,
            404
        );
        let response = with_headers(client().get(url(&api, "readings")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 405);
        assert_eq!(response.headers()["allow"], "POST");
        let post_latest = with_headers(client().post(latest_url(&api, "readings", "A", "default")));
        assert_eq!(send(post_latest).await.0, 405);
        let bad_escape =
            with_headers(client().get(latest_url(&api, "readings", "A%zz", "default")));
        assert_eq!(send(bad_escape).await.0, 400);
        assert!(api.attempts().iter().all(|a| a.status.is_some()));
        api.stop().await;
    }

    #[tokio::test]
    async fn scripted_answers_come_first_and_in_order() {
        let api = start().await;
        let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
        api.script([
            Answer::StatusRetryAfter(503, "7".into()),
            Answer::StatusRetryAfter(429, date.clone()),
            Answer::Status(500),
            Answer::Status(200),
        ]);
        let (status, retry_after, json) = post(&api, "readings", reading("A", T0, "1")).await;
        assert_eq!((status, retry_after.as_deref()), (503, Some("7")));
        assert_eq!(json["errors"][0]["status"], "503");
        let (status, retry_after, _) = post(&api, "readings", reading("A", T0, "1")).await;
        assert_eq!((status, retry_after), (429, Some(date)));
        assert_eq!(post(&api, "readings", reading("A", T0, "1")).await.0, 500);
        assert_eq!(api.accepted_count(), 0, "a scripted error stores nothing");
        // A scripted 2xx stores (a valid request only).
        let (status, _, json) = post(&api, "readings", reading("A", T0, "1")).await;
        assert_eq!((status, &json["data"]["id"]), (200, &Value::from("1")));
        assert_eq!(post(&api, "readings", reading("A", T0, "1")).await.0, 409);
        api.script([Answer::Status(202)]);
        assert_eq!(post(&api, "readings", reading("A", T0, "x")).await.0, 400);
        let statuses: Vec<_> = api.attempts().iter().map(|a| a.status.unwrap()).collect();
        assert_eq!(statuses, [503, 429, 500, 200, 409, 400]);
        assert_eq!(api.accepted_count(), 1);
        api.stop().await;
    }

    #[tokio::test]
    async fn delays_slow_the_answer() {
        let api = start().await;
        api.script([Answer::Delay(Duration::from_millis(200))]);
        let started = Instant::now();
        assert_eq!(post(&api, "readings", reading("A", T0, "1")).await.0, 201);
        assert!(started.elapsed() >= Duration::from_millis(200));
        api.set_delay(Duration::from_secs(2));
        let quick = client_with_timeout(Duration::from_millis(200));
        let error = with_headers(quick.post(url(&api, "readings")))
            .body(reading("A", "2026-11-26T10:16:00Z", "2"))
            .send()
            .await
            .unwrap_err();
        assert!(error.is_timeout(), "{error}");
        api.set_delay(Duration::ZERO);
        api.stop().await;
    }

    #[tokio::test]
    async fn echoes_the_token_in_error_details_on_request() {
        let api = start().await;
        api.reject_import_id("BAD", 400);
        let (status, _, json) = post(&api, "readings", reading("BAD", T0, "1")).await;
        assert_eq!(status, 400);
        assert!(!detail(&json).contains(TOKEN), "no echo unless asked");
        api.set_echo_token(true);
        let (status, _, json) = post(&api, "readings", reading("BAD", T0, "1")).await;
        assert_eq!(status, 400);
        assert!(detail(&json).contains("is rejected"), "{json}");
        assert!(
            detail(&json).ends_with(&format!("Bearer {TOKEN})")),
            "{json}"
        );
        // Answers that are not errors stay as they were.
        let (status, _, json) = post(&api, "readings", reading("GOOD", T0, "1")).await;
        assert_eq!(status, 201);
        assert!(!json.to_string().contains(TOKEN), "{json}");
        api.stop().await;
    }

    #[tokio::test]
    async fn rejects_one_series_only() {
        let api = start().await;
        api.reject_import_id("BAD", 422);
        let (status, _, json) = post(&api, "readings", reading("BAD", T0, "1")).await;
        assert_eq!(status, 422);
        assert!(detail(&json).contains("BAD"));
        assert_eq!(
            post(&api, "readings", reading("GOOD", T0, "1")).await.0,
            201
        );
        let get = with_headers(client().get(latest_url(&api, "readings", "BAD", "default")));
        assert_eq!(send(get).await.0, 422);
        api.clear_rejection("BAD");
        assert_eq!(post(&api, "readings", reading("BAD", T0, "1")).await.0, 201);
        let ids: Vec<_> = api.accepted().into_iter().map(|a| a.import_id).collect();
        assert_eq!(ids, ["GOOD", "BAD"]);
        let first = &api.attempts()[0];
        assert_eq!(
            (first.import_id.as_deref(), first.status),
            (Some("BAD"), Some(422))
        );
        api.stop().await;
    }

    #[tokio::test]
    async fn down_refuses_and_closes_then_normal_serves_on_the_same_port() {
        let api = start().await;
        let addr = api.addr();
        let mut kept = BufReader::new(TcpStream::connect(addr).await.unwrap());
        let (status, _) = raw_exchange(&mut kept, &raw_post(&reading("A", T0, "1")))
            .await
            .unwrap();
        assert_eq!(status, 201);
        let client = client();
        assert_eq!(
            send(with_headers(client.post(url(&api, "readings"))).body(reading("A", T0, "2")))
                .await
                .0,
            201
        );

        api.set_mode(Mode::Down).await.unwrap();
        let refused = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        // The kept-alive connection was closed too: EOF or a reset, never an answer.
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(WAIT, kept.read(&mut byte))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let error = with_headers(client.post(url(&api, "readings")))
            .body(reading("A", T0, "3"))
            .send()
            .await
            .unwrap_err();
        assert!(!error.is_timeout(), "{error}");

        // Our side closed first, so the port has TIME_WAIT sockets; SO_REUSEADDR rebinds it.
        api.set_mode(Mode::Normal).await.unwrap();
        assert_eq!(api.base_url(), format!("http://{addr}"));
        assert_eq!(
            send(with_headers(client.post(url(&api, "readings"))).body(reading("A", T0, "3")))
                .await
                .0,
            201
        );
        assert_eq!(api.accepted_count(), 3);
        api.stop().await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "stop closes the port"
        );
    }

    #[tokio::test]
    async fn wait_answered_waits_for_the_answer_not_the_arrival() {
        let api = start().await;
        // A request that is held before its answer: it has arrived, but nothing answered 503.
        api.script([
            Answer::Delay(Duration::from_millis(200)),
            Answer::Status(503),
        ]);
        let first = tokio::spawn({
            let url = url(&api, "readings");
            async move { send(with_headers(client().post(url)).body(reading("A", T0, "1"))).await }
        });
        assert!(api.wait_attempts(1, WAIT).await);
        assert!(!api.wait_answered(503, Duration::from_millis(50)).await);
        assert_eq!(first.await.unwrap().0, 201);
        assert_eq!(post(&api, "readings", reading("A", T0, "2")).await.0, 503);
        assert!(api.wait_answered(503, WAIT).await);
        assert!(api.wait_answered(201, WAIT).await);
    }

    #[tokio::test]
    async fn concurrency_counts_held_requests_overall_and_per_import_id() {
        let api = start().await;
        assert_eq!(api.concurrency(), Concurrency::default());
        // Sequential requests never overlap.
        for minute in 0..3 {
            let time = format!("2026-11-26T10:{minute:02}:00Z");
            assert_eq!(
                post(&api, "readings", reading("A", &time, "1")).await.0,
                201
            );
        }
        let c = api.concurrency();
        assert_eq!((c.now, c.max, c.max_per_series()), (0, 1, 1));
        // Held answers (long enough to see all three even on a slow machine): two requests
        // for A and one for B at once.
        api.set_delay(Duration::from_secs(1));
        let sends: Vec<_> = [("A", "10:10"), ("A", "10:11"), ("B", "10:10")]
            .into_iter()
            .map(|(id, hm)| {
                let request = with_headers(client().post(url(&api, "readings"))).body(reading(
                    id,
                    &format!("2026-11-26T{hm}:00Z"),
                    "1",
                ));
                tokio::spawn(send(request))
            })
            .collect();
        assert!(api.wait_attempts(6, WAIT).await);
        assert_eq!(api.concurrency().now, 3);
        for s in sends {
            assert_eq!(s.await.unwrap().0, 201);
        }
        let c = api.concurrency();
        assert_eq!((c.now, c.max), (0, 3));
        assert_eq!(c.max_per_import_id.get("A"), Some(&2));
        assert_eq!(c.max_per_import_id.get("B"), Some(&1));
        assert_eq!(c.max_per_series(), 2);
        // A hung request is held until its connection goes away.
        api.set_delay(Duration::ZERO);
        api.set_mode(Mode::Hang).await.unwrap();
        let quick = client_with_timeout(Duration::from_millis(200));
        let error = with_headers(quick.post(url(&api, "readings")))
            .body(reading("C", T0, "1"))
            .send()
            .await
            .unwrap_err();
        assert!(error.is_timeout(), "{error}");
        drop(quick);
        let deadline = Instant::now() + WAIT;
        while api.concurrency().now != 0 {
            assert!(Instant::now() < deadline, "a dropped request is still held");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(api.concurrency().max, 3);
        api.stop().await;
    }

    #[tokio::test]
    async fn hang_leads_to_a_client_timeout() {
        let api = start().await;
        api.set_mode(Mode::Hang).await.unwrap();
        let quick = client_with_timeout(Duration::from_millis(300));
        let error = with_headers(quick.post(url(&api, "readings")))
            .body(reading("A", T0, "1"))
            .send()
            .await
            .unwrap_err();
        assert!(error.is_timeout(), "{error}");
        assert!(api.wait_attempts(1, WAIT).await);
        let attempt = &api.attempts()[0];
        assert_eq!(
            (attempt.import_id.as_deref(), attempt.status),
            (Some("A"), None)
        );
        api.set_mode(Mode::Normal).await.unwrap();
        assert_eq!(post(&api, "readings", reading("A", T0, "1")).await.0, 201);
        // A one-shot hang.
        api.script([Answer::Hang]);
        let error = with_headers(quick.post(url(&api, "readings")))
            .body(reading("A", T0, "2"))
            .send()
            .await
            .unwrap_err();
        assert!(error.is_timeout(), "{error}");
        api.stop().await;
    }

    #[tokio::test]
    async fn reset_closes_without_an_answer() {
        let api = start().await;
        api.set_mode(Mode::Reset).await.unwrap();
        let mut stream = BufReader::new(TcpStream::connect(api.addr()).await.unwrap());
        let result = tokio::time::timeout(
            WAIT,
            raw_exchange(&mut stream, &raw_post(&reading("A", T0, "1"))),
        )
        .await
        .unwrap();
        assert!(result.is_err(), "{result:?}");
        api.set_mode(Mode::Normal).await.unwrap();
        api.script([Answer::Reset]);
        let error = with_headers(client().post(url(&api, "readings")))
            .body(reading("A", T0, "1"))
            .send()
            .await
            .unwrap_err();
        assert!(!error.is_timeout(), "{error}");
        assert_eq!(post(&api, "readings", reading("A", T0, "1")).await.0, 201);
        let statuses: Vec<_> = api.attempts().iter().map(|a| a.status).collect();
        assert_eq!(statuses, [None, None, Some(201)]);
        api.stop().await;
    }

    #[tokio::test]
    async fn keep_alive_serves_many_requests_on_one_connection() {
        let api = start().await;
        let mut stream = BufReader::new(TcpStream::connect(api.addr()).await.unwrap());
        for minute in 0..5 {
            let time = format!("2026-11-26T10:{minute:02}:00Z");
            let (status, body) = raw_exchange(&mut stream, &raw_post(&reading("K", &time, "1")))
                .await
                .unwrap();
            assert_eq!(status, 201, "{body}");
        }
        assert_eq!(api.connections(), 1);
        let client = client();
        for minute in 5..10 {
            let time = format!("2026-11-26T10:{minute:02}:00Z");
            let request =
                with_headers(client.post(url(&api, "readings"))).body(reading("K", &time, "1"));
            assert_eq!(send(request).await.0, 201);
        }
        assert_eq!(api.connections(), 2);
        let attempts = api.attempts();
        assert!(attempts[..5].iter().all(|a| a.connection == 0));
        assert!(attempts[5..].iter().all(|a| a.connection == 1));
        assert!(attempts.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(api.wait_accepted(10, WAIT).await);
        api.stop().await;
    }

    #[tokio::test]
    async fn garbage_never_takes_it_down() {
        let api = start().await;
        let huge = format!(
            r#"{{"data":{{"import_id":"A","time":"{T0}","state":1,"sender":"{}"}}}}"#,
            "x".repeat(MAX_BODY)
        );
        let (status, _, json) = post(&api, "readings", huge).await;
        assert_eq!(status, 413);
        assert!(detail(&json).contains("body"));
        let deep = "[".repeat(60_000);
        assert_eq!(post(&api, "readings", deep).await.0, 400);
        let deep_inside = format!(r#"{{"data":{{"unit":{}}}}}"#, "[".repeat(60_000));
        assert_eq!(post(&api, "readings", deep_inside).await.0, 400);
        let not_utf8 =
            with_headers(client().post(url(&api, "readings"))).body(vec![0xff, 0xfe, b'{']);
        assert_eq!(send(not_utf8).await.0, 400);
        // Not HTTP at all: hyper answers or closes; the server keeps serving.
        let mut junk = TcpStream::connect(api.addr()).await.unwrap();
        junk.write_all(b"\x00\x01garbage\r\n\r\n").await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(WAIT, junk.read_to_end(&mut sink))
            .await
            .unwrap();
        assert_eq!(post(&api, "readings", reading("A", T0, "1")).await.0, 201);
        api.stop().await;
    }

    #[tokio::test]
    async fn dropping_every_handle_stops_the_server() {
        let api = start().await;
        let addr = api.addr();
        let copy = api.clone();
        drop(api);
        assert_eq!(post(&copy, "readings", reading("A", T0, "1")).await.0, 201);
        drop(copy);
        // Cancellation reaches the tasks asynchronously: poll, bounded.
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(addr).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "still listening after the last handle"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn number_and_time_rules() {
        assert_eq!(significant_digits("0.2301"), 4);
        assert_eq!(significant_digits("-1200"), 2);
        assert_eq!(significant_digits("1.5e-3"), 2);
        assert_eq!(significant_digits("0"), 0);
        assert!(check_time("2024-02-29T23:59:59Z").is_ok());
        assert!(check_time("2025-02-29T00:00:00Z").is_err());
        assert!(check_time("2026-11-26T24:00:00Z").is_err());
        assert!(check_time("2026-11-26t10:15:00z").is_err());
        assert!(check_time("2026-11-26 10:15:00Z").is_err());
        assert!(check_time("२०२६-11-26T10:15:00Z").is_err());
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
