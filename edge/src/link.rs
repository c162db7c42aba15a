//! The link: a Durable Object that owns one long-lived NATS connection for
//! its (region, colo, shard) and publishes every frame handed to it over
//! that connection, coalescing frames for the same subject.
//!
//! Why a Durable Object: workerd binds an I/O object (a socket) to the
//! request that opened it, so a plain Worker must connect, handshake and
//! close per request. Every request to one Durable Object shares the
//! object's I/O context, so a socket it opens serves its later requests.
//!
//! Request flow: the isolate that answered the SDK posts the request's
//! frames (`spoor_core::link` hand-off body) to `/publish` on the link
//! named `<region>:<colo>:<k>`. Each frame joins its subject's pending
//! message; the message goes out when its window (`COALESCE_MS`) ends or it
//! reaches `COALESCE_MAX_BYTES`, as one JetStream publish. Its PubAck
//! answers every frame in it; the link answers the isolate once every
//! frame of the hand-off has a result.
//!
//! Invariants:
//! - No `RefCell` borrow is held across an `.await`.
//! - The connection is opened lazily, once at a time (later callers wait on
//!   the same attempt), and dropped as soon as it fails or a PubAck times
//!   out; the next publish opens a new one. Eviction, deploys and server
//!   restarts therefore cost one reconnect, never a wedged link.
//! - A publish that failed on a connection opened before it was sent (a
//!   stale socket) is retried once on a fresh connection under the same
//!   `Nats-Msg-Id`, which JetStream deduplicates.
//! - A frame is reported stored only on the PubAck of the message holding it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures_channel::oneshot;
use futures_util::future::join_all;
use spoor_core::link::{
    decode_handoff, AddOutcome, FrameResult, HandoffAnswer, HandoffFrame, LinkHealth, Pending,
    RecentFrames,
};
use spoor_edge_nats::{Auth, ConnectOptions, Connected, NatsError, Pipeline, PublishMsg};
use wasm_bindgen_futures::spawn_local;
use worker::{
    console_warn, durable_object, Date, Delay, DurableObject, Env, Method, Request, Response,
    Result, SecureTransport, Socket, State,
};

use crate::config::EdgeConfig;

type Sleeper = fn(u64) -> Delay;

fn sleep(ms: u64) -> Delay {
    Delay::from(Duration::from_millis(ms))
}

/// The Durable Object binding's name in wrangler.toml and the capnp config.
pub const LINK_BINDING: &str = "LINK";
/// Header carrying the link's name on every call (for its health report).
pub const LINK_NAME_HEADER: &str = "X-Spoor-Link";

enum Conn {
    Down,
    Connecting(Vec<oneshot::Sender<std::result::Result<Pipeline<Sleeper>, String>>>),
    Up(Pipeline<Sleeper>),
}

/// A subject's message that is still collecting frames.
struct Open {
    generation: u64,
    pending: Pending,
    waiters: Vec<oneshot::Sender<FrameResult>>,
}

/// How long, and for how many frames, a link remembers what it stored.
/// SDK resends come within seconds to a minute; the relays' event-id window
/// (10 minutes) catches what falls outside.
const RECENT_WINDOW_MS: i64 = 120_000;
const RECENT_MAX: usize = 100_000;

struct Inner {
    config: Option<Rc<EdgeConfig>>,
    conn: Conn,
    open: HashMap<String, Open>,
    next_generation: u64,
    /// Frames stored recently, by id (see `RecentFrames`).
    recent: RecentFrames,
    /// Frames on their way (in an open or a sent message), by id, with the
    /// callers of later copies waiting for the same result.
    in_flight: HashMap<String, Vec<oneshot::Sender<FrameResult>>>,
    health: LinkHealth,
}

#[durable_object]
pub struct Link {
    env: Env,
    inner: Rc<RefCell<Inner>>,
}

impl DurableObject for Link {
    fn new(_state: State, env: Env) -> Self {
        Link {
            env,
            inner: Rc::new(RefCell::new(Inner {
                config: None,
                conn: Conn::Down,
                open: HashMap::new(),
                next_generation: 0,
                recent: RecentFrames::new(RECENT_WINDOW_MS, RECENT_MAX),
                in_flight: HashMap::new(),
                health: LinkHealth::default(),
            })),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        if let Some(name) = req.headers().get(LINK_NAME_HEADER)? {
            let mut inner = self.inner.borrow_mut();
            if inner.health.name.is_empty() {
                inner.health.name = name;
            }
        }
        match (req.method(), req.path().as_str()) {
            (Method::Get, "/health") => Response::from_json(&self.health()),
            (Method::Post, "/publish") => {
                let body = req.bytes().await?;
                let (frames, alone) = match decode_handoff(&body) {
                    Ok(h) => (h.frames, h.alone),
                    Err(e) => return Response::error(e.to_string(), 400),
                };
                let config = match self.config() {
                    Ok(c) => c,
                    Err(e) => {
                        let results = frames
                            .iter()
                            .map(|_| FrameResult {
                                seq: None,
                                error: Some(format!("the link's configuration is invalid: {e}")),
                                stream_full: false,
                            })
                            .collect();
                        return Response::from_json(&HandoffAnswer { results });
                    }
                };
                if config.discard_at_link {
                    // Benchmarks only: the hand-off's cost without NATS.
                    let results = frames
                        .iter()
                        .map(|_| FrameResult {
                            seq: Some(0),
                            error: None,
                            stream_full: false,
                        })
                        .collect();
                    return Response::from_json(&HandoffAnswer { results });
                }
                let waits: Vec<_> = frames
                    .into_iter()
                    .map(|f| enqueue(&self.inner, &config, f, alone))
                    .collect();
                let results = join_all(waits.into_iter().map(|rx| async move {
                    rx.await.unwrap_or_else(|_| FrameResult {
                        seq: None,
                        error: Some("the link dropped the frame".into()),
                        stream_full: false,
                    })
                }))
                .await;
                Response::from_json(&HandoffAnswer { results })
            }
            _ => Response::error("link endpoints: POST /publish, GET /health", 404),
        }
    }
}

impl Link {
    fn config(&self) -> std::result::Result<Rc<EdgeConfig>, String> {
        if let Some(c) = &self.inner.borrow().config {
            return Ok(c.clone());
        }
        // An object's env never changes: parse it once.
        let config = EdgeConfig::cached(&self.env)?;
        self.inner.borrow_mut().config = Some(config.clone());
        Ok(config)
    }

    fn health(&self) -> LinkHealth {
        let inner = self.inner.borrow();
        let mut h = inner.health.clone();
        if let Conn::Up(p) = &inner.conn {
            h.connected = !p.is_closed();
            h.in_flight = p.in_flight();
        }
        h
    }
}

/// Adds a frame to its subject's open message; the receiver gets the
/// frame's result once that message is answered.
fn enqueue(
    inner: &Rc<RefCell<Inner>>,
    config: &Rc<EdgeConfig>,
    frame: HandoffFrame,
    alone: bool,
) -> oneshot::Receiver<FrameResult> {
    let (tx, rx) = oneshot::channel();
    let limits = config.coalesce;
    let subject = frame.subject.clone();
    {
        // A frame this link stored, or is storing, under the same id gets
        // that result: published again inside another message it would be
        // stored twice under another id.
        let mut i = inner.borrow_mut();
        let now = Date::now().as_millis() as i64;
        if let Some(seq) = i.recent.get(&frame.msg_id, now) {
            i.health.duplicate_frames += 1;
            let _ = tx.send(FrameResult {
                seq: Some(seq),
                error: None,
                stream_full: false,
            });
            return rx;
        }
        if let Some(waiters) = i.in_flight.get_mut(&frame.msg_id) {
            waiters.push(tx);
            i.health.duplicate_frames += 1;
            return rx;
        }
        i.in_flight.insert(frame.msg_id.clone(), Vec::new());
    }
    if alone {
        let mut pending = Pending::default();
        pending.add(frame, limits);
        let open = Open {
            generation: 0,
            pending,
            waiters: vec![tx],
        };
        send(inner.clone(), config.clone(), subject, open);
        return rx;
    }
    let mut i = inner.borrow_mut();
    // A frame that would overflow the open message sends that one first.
    if i.open
        .get(&subject)
        .is_some_and(|o| !o.pending.fits(&frame, limits))
    {
        if let Some(full) = i.open.remove(&subject) {
            send(inner.clone(), config.clone(), subject.clone(), full);
        }
    }
    let generation = i.next_generation;
    let open = i.open.entry(subject.clone()).or_insert_with(|| Open {
        generation,
        pending: Pending::default(),
        waiters: Vec::new(),
    });
    open.waiters.push(tx);
    let outcome = open.pending.add(frame, limits);
    let this_generation = open.generation;
    if this_generation == generation {
        i.next_generation += 1;
    }
    match outcome {
        AddOutcome::Joined => {}
        AddOutcome::Full => {
            if let Some(full) = i.open.remove(&subject) {
                send(inner.clone(), config.clone(), subject, full);
            }
        }
        AddOutcome::Opened => {
            let (inner, config) = (inner.clone(), config.clone());
            spawn_local(async move {
                sleep(config.coalesce.window_ms).await;
                let due = {
                    let mut i = inner.borrow_mut();
                    match i.open.get(&subject) {
                        Some(o) if o.generation == this_generation => i.open.remove(&subject),
                        _ => None,
                    }
                };
                if let Some(due) = due {
                    send(inner, config, subject, due);
                }
            });
        }
    }
    rx
}

/// Publishes a closed message in the background and answers its frames.
fn send(inner: Rc<RefCell<Inner>>, config: Rc<EdgeConfig>, subject: String, open: Open) {
    spawn_local(async move {
        let (msg_id, payload) = open.pending.message();
        let frames = open.pending.frames.len() as u64;
        let ids: Vec<String> = open
            .pending
            .frames
            .iter()
            .map(|f| f.msg_id.clone())
            .collect();
        let msg = PublishMsg::new(subject, msg_id, payload);
        let result = publish(&inner, &config, &msg).await;
        let mut waiters = open.waiters;
        {
            let mut i = inner.borrow_mut();
            let now = Date::now().as_millis() as i64;
            for id in ids {
                waiters.extend(i.in_flight.remove(&id).unwrap_or_default());
                if let Ok(seq) = &result {
                    i.recent.insert(&id, *seq, now);
                }
            }
            match &result {
                Ok(_) => {
                    i.health.messages += 1;
                    i.health.frames += frames;
                }
                Err(e) => {
                    let now = Date::now().as_millis() as i64;
                    i.health.failed_frames += frames;
                    i.health.last_error = Some(e.message.clone());
                    i.health.last_error_at_ms = Some(now);
                    if e.stream_full {
                        i.health.stream_full_frames += frames;
                        i.health.last_stream_full_at_ms = Some(now);
                    }
                }
            }
        }
        for w in waiters {
            let _ = w.send(match &result {
                Ok(seq) => FrameResult {
                    seq: Some(*seq),
                    error: None,
                    stream_full: false,
                },
                Err(e) => FrameResult {
                    seq: None,
                    error: Some(e.message.clone()),
                    stream_full: e.stream_full,
                },
            });
        }
    });
}

/// Why a message was not stored.
struct NotStored {
    message: String,
    /// JetStream refused it for lack of room (`NatsError::StreamFull`).
    stream_full: bool,
}

impl From<String> for NotStored {
    fn from(message: String) -> Self {
        NotStored {
            message,
            stream_full: false,
        }
    }
}

/// One JetStream publish over the link's connection, with one retry on a
/// fresh connection when the one it used had gone stale. A full stream's
/// refusal is answered as such at once: the connection is fine, and the
/// stream makes no room within a retry.
async fn publish(
    inner: &Rc<RefCell<Inner>>,
    config: &EdgeConfig,
    msg: &PublishMsg,
) -> std::result::Result<u64, NotStored> {
    let mut last = String::new();
    for attempt in 0..2 {
        let pipeline = pipeline(inner, config).await?;
        let connected_before = pipeline.published() > 0 || attempt > 0;
        match pipeline.publish(msg, config.publish_timeout_ms).await {
            Ok(ack) => return Ok(ack.seq),
            Err(e @ NatsError::StreamFull { .. }) => {
                return Err(NotStored {
                    message: format!(
                        "JetStream refused the message via {}:{}: {e}",
                        config.home.host, config.home.port
                    ),
                    stream_full: true,
                })
            }
            Err(e) => {
                let stale = matches!(e, NatsError::Closed | NatsError::Io(_));
                if pipeline.is_closed() || matches!(e, NatsError::Timeout { .. }) {
                    // Whatever state the socket is in, the next publish
                    // opens a new one.
                    pipeline.close();
                    let mut i = inner.borrow_mut();
                    if matches!(&i.conn, Conn::Up(p) if p.is_closed()) {
                        i.conn = Conn::Down;
                    }
                }
                last = format!(
                    "JetStream did not acknowledge via {}:{}: {e}",
                    config.home.host, config.home.port
                );
                if !(stale && connected_before && attempt == 0) {
                    break;
                }
            }
        }
    }
    Err(last.into())
}

/// The link's connection, opening it if there is none. Concurrent callers
/// share one attempt; the attempt runs in its own task so that no caller's
/// cancellation can leave the link half-connected.
async fn pipeline(
    inner: &Rc<RefCell<Inner>>,
    config: &EdgeConfig,
) -> std::result::Result<Pipeline<Sleeper>, String> {
    let (tx, rx) = oneshot::channel();
    let start = {
        let mut i = inner.borrow_mut();
        match &mut i.conn {
            Conn::Up(p) if !p.is_closed() => return Ok(p.clone()),
            Conn::Connecting(waiters) => {
                waiters.push(tx);
                false
            }
            _ => {
                i.conn = Conn::Connecting(vec![tx]);
                true
            }
        }
    };
    if start {
        let inner = inner.clone();
        let target = config.home.clone();
        let (tls, auth, timeout_ms, name) = (
            config.nats_tls,
            config.nats_auth(),
            config.publish_timeout_ms,
            format!("spoor-edge-link-{}", config.region),
        );
        spawn_local(async move {
            // A handshake cut off or stalled is tried again at once (seen
            // when a freshly started runtime opens its first TLS connections
            // under load: the server logs the client's EOF, the client's
            // read never returns); a refusal by the server (credentials,
            // permissions, a certificate) is not.
            let mut result: std::result::Result<Pipeline<Sleeper>, ConnectError> =
                Err(ConnectError {
                    message: String::new(),
                    retryable: false,
                });
            for attempt in 0..CONNECT_ATTEMPTS {
                if attempt > 0 {
                    sleep(50 * u64::from(attempt)).await;
                }
                result = connect(
                    &target.host,
                    target.port,
                    tls,
                    auth.clone(),
                    timeout_ms.min(CONNECT_TIMEOUT_MS),
                    name.clone(),
                )
                .await;
                match &result {
                    Ok(_) => break,
                    Err(e) if e.retryable => {
                        inner.borrow_mut().health.connect_retries += 1;
                        console_warn!("spoor-edge link: {}; trying again", e.message);
                    }
                    Err(_) => break,
                }
            }
            let result = result.map_err(|e| e.message);
            let waiters = {
                let mut i = inner.borrow_mut();
                let next = match &result {
                    Ok(p) => {
                        i.health.connects += 1;
                        Conn::Up(p.clone())
                    }
                    Err(e) => {
                        i.health.last_error = Some(e.clone());
                        i.health.last_error_at_ms = Some(Date::now().as_millis() as i64);
                        Conn::Down
                    }
                };
                match std::mem::replace(&mut i.conn, next) {
                    Conn::Connecting(w) => w,
                    _ => Vec::new(),
                }
            };
            if let Err(e) = &result {
                console_warn!("spoor-edge link: {e}");
            }
            for w in waiters {
                let _ = w.send(result.clone());
            }
        });
    }
    rx.await
        .unwrap_or_else(|_| Err("the link's connection attempt was dropped".into()))
}

/// Connection attempts per connect, when the network cuts them off.
const CONNECT_ATTEMPTS: u32 = 4;
/// Bound on one attempt's handshake (TCP, TLS, INFO, CONNECT, PONG).
const CONNECT_TIMEOUT_MS: u64 = 2_000;

struct ConnectError {
    message: String,
    /// The socket failed (I/O, EOF), not the server's verdict.
    retryable: bool,
}

async fn connect(
    host: &str,
    port: u16,
    tls: bool,
    auth: Auth,
    timeout_ms: u64,
    name: String,
) -> std::result::Result<Pipeline<Sleeper>, ConnectError> {
    let socket = Socket::builder()
        .secure_transport(if tls {
            SecureTransport::On
        } else {
            SecureTransport::Off
        })
        .connect(host.to_string(), port)
        .map_err(|e| ConnectError {
            message: format!("cannot reach NATS at {host}:{port}: {e}"),
            retryable: true,
        })?;
    let opts = ConnectOptions {
        name,
        auth,
        timeout_ms,
        inbox_token: Some(inbox_token()),
        inbox_prefix: crate::config::INBOX_PREFIX.into(),
    };
    let Connected {
        pipeline,
        reader,
        writer,
    } = Pipeline::connect(socket, sleep as Sleeper, &opts)
        .await
        .map_err(|e| ConnectError {
            // The server's own timeout is not a verdict on the credentials.
            retryable: match &e {
                NatsError::Io(_) | NatsError::Closed | NatsError::Timeout { .. } => true,
                NatsError::Server(text) => text.contains("Authentication Timeout"),
                _ => false,
            },
            message: format!("NATS handshake with {host}:{port} failed: {e}"),
        })?;
    spawn_local(reader);
    spawn_local(writer);
    Ok(pipeline)
}

/// A reply-inbox token unique among live connections: two links sharing
/// one would read each other's PubAcks.
pub(crate) fn inbox_token() -> String {
    let a = (js_sys::Math::random() * 4_294_967_296.0) as u64;
    let b = (js_sys::Math::random() * 4_294_967_296.0) as u64;
    format!("L{:016x}", (a << 32) | b)
}
