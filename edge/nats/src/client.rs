//! The connection: handshake, JetStream publish with per-message PubAcks,
//! plain request/reply, PING/PONG, over any `AsyncRead + AsyncWrite` (a
//! workers-rs `Socket` on the edge, a tokio `TcpStream` natively).
//!
//! It must never wait on the network without a bound: every public async
//! method races its whole exchange against one sleep from the caller's
//! [`Timer`]. It must never report a message as stored unless JetStream's
//! PubAck for exactly that message arrived. After a failure that leaves the
//! byte stream in an unknown state (I/O, timeout, `-ERR`, garbage, EOF) it
//! refuses further work with [`NatsError::Closed`] instead of guessing.

#[cfg(test)]
mod tests;

use crate::error::{NatsError, Stage};
use crate::jetstream::{parse_pub_ack, PubAck};
use crate::parser::{parse_op, Limits, Message, ServerInfo, ServerOp, HARD_MAX_PAYLOAD};
use crate::timer::Timer;
use crate::wire;
use futures_util::future::{select, Either};
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Credentials sent in `CONNECT`.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Auth {
    #[default]
    None,
    UserPass {
        user: String,
        pass: String,
    },
    Token(String),
    /// An nkey user: `seed` is the user's private seed (`SU...`). The seed
    /// never goes on the wire: CONNECT carries the public key and an ed25519
    /// signature of the nonce from the server's INFO, so a server (or
    /// anyone in between) learns nothing it could replay elsewhere.
    NKey {
        seed: String,
    },
}

/// Secrets stay out of logs and error messages: only the kind is shown.
impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::UserPass { user, .. } => {
                write!(f, "UserPass {{ user: {user:?}, pass: <redacted> }}")
            }
            Auth::Token(_) => f.write_str("Token(<redacted>)"),
            Auth::NKey { .. } => f.write_str("NKey { seed: <redacted> }"),
        }
    }
}

/// The public key and the signature of `nonce` for an nkey user's
/// `CONNECT`: the signature is base64url without padding, as nats-server
/// expects it. Fails (never panics) on a bad seed or a missing nonce.
pub fn sign_nonce(seed: &str, nonce: Option<&str>) -> Result<(String, String), NatsError> {
    use base64::Engine as _;
    let pair = nkeys::KeyPair::from_seed(seed.trim())
        .map_err(|e| NatsError::Auth(format!("the nkey seed is not a valid seed ({e})")))?;
    let nonce = nonce.filter(|n| !n.is_empty()).ok_or_else(|| {
        NatsError::Auth(
            "nkey authentication is configured but the server's INFO carries no nonce \
             to sign: the server has no nkey users configured (wrong server or config?)"
                .into(),
        )
    })?;
    let sig = pair
        .sign(nonce.as_bytes())
        .map_err(|e| NatsError::Auth(format!("signing the server's nonce failed: {e}")))?;
    Ok((
        pair.public_key(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig),
    ))
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Client name shown in the server's connection list (`/connz`).
    pub name: String,
    pub auth: Auth,
    /// Bound on the whole handshake: INFO, CONNECT, PING → PONG.
    pub timeout_ms: u64,
    /// Middle token of reply inboxes (`_INBOX.<token>.<sid>.<i>`). The crate
    /// has no randomness; the edge passes one derived from the batch id. When
    /// `None`, the server-assigned `client_id` is used, which is unique per
    /// server process.
    pub inbox_token: Option<String>,
    /// First part of reply inboxes (`<prefix>.<token>.<sid>.<i>`), default
    /// `_INBOX`. A locked-down user may only subscribe below its own prefix
    /// (Spoor's edge role: `_INBOX_EDGE`), so it cannot read other clients'
    /// replies.
    pub inbox_prefix: String,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            name: "spoor-edge".into(),
            auth: Auth::None,
            timeout_ms: 5_000,
            inbox_token: None,
            inbox_prefix: DEFAULT_INBOX_PREFIX.into(),
        }
    }
}

/// NATS's conventional reply-inbox prefix.
pub const DEFAULT_INBOX_PREFIX: &str = "_INBOX";

/// One message for [`Client::publish_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishMsg {
    pub subject: String,
    /// Sent as `Nats-Msg-Id`: JetStream drops a second message with the same
    /// id within the stream's duplicate window, which makes retries safe.
    pub msg_id: String,
    /// Extra headers, after `Nats-Msg-Id`.
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl PublishMsg {
    pub fn new(
        subject: impl Into<String>,
        msg_id: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        PublishMsg {
            subject: subject.into(),
            msg_id: msg_id.into(),
            headers: Vec::new(),
            payload: payload.into(),
        }
    }
}

/// A connected, authenticated NATS client.
pub struct Client<S, T> {
    conn: Conn<S>,
    timer: T,
    inbox_prefix: String,
    next_sid: u64,
    broken: bool,
}

impl<S, T> Client<S, T>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Timer,
{
    /// Performs the handshake on an open socket: reads INFO, sends CONNECT
    /// and PING, and waits for PONG, so bad credentials fail here as
    /// [`NatsError::Server`] rather than on the first publish.
    pub async fn connect(io: S, timer: T, opts: &ConnectOptions) -> Result<Self, NatsError> {
        let conn = Conn::connect(io, &timer, opts).await?;
        let inbox_prefix = conn.inbox_for(opts);
        Ok(Client {
            conn,
            timer,
            inbox_prefix,
            next_sid: 1,
            broken: false,
        })
    }

    /// The server's latest INFO.
    pub fn server_info(&self) -> &ServerInfo {
        &self.conn.info
    }

    /// The largest message (headers + payload) the server accepts.
    pub fn max_payload(&self) -> usize {
        self.conn.info.max_payload
    }

    /// True once a failure has made the connection unusable.
    pub fn is_closed(&self) -> bool {
        self.broken
    }

    /// Publishes every message to JetStream and waits for each one's reply.
    ///
    /// The result has one entry per message, in order: `Ok(PubAck)` means
    /// that message is stored (or was a duplicate of a stored one). Messages
    /// that cannot be sent (too large, invalid subject) fail alone and are not
    /// sent; the others still are. If the connection fails or `timeout_ms`
    /// passes, messages already acknowledged keep their `Ok` and every
    /// unanswered one gets that error.
    pub async fn publish_all(
        &mut self,
        msgs: &[PublishMsg],
        timeout_ms: u64,
    ) -> Vec<Result<PubAck, NatsError>> {
        let mut results: Vec<Option<Result<PubAck, NatsError>>> = vec![None; msgs.len()];
        if self.broken {
            return vec![Err(NatsError::Closed); msgs.len()];
        }
        let sid = self.take_sid();
        let inbox = format!("{}.{sid}", self.inbox_prefix);
        let max = self.conn.info.max_payload;
        let mut hpubs = Vec::new();
        let mut pending = 0;
        for (i, m) in msgs.iter().enumerate() {
            let reply = format!("{inbox}.{i}");
            match wire::hpub(
                &m.subject, &reply, &m.msg_id, &m.headers, &m.payload, max, &mut hpubs,
            ) {
                Ok(()) => pending += 1,
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        if pending > 0 {
            // SUB and the auto-UNSUB go first in the same write: the server
            // handles a connection's commands in order, so the inbox exists
            // before the first ack is sent to it.
            let mut batch = Vec::with_capacity(hpubs.len() + 128);
            wire::sub(&format!("{inbox}.*"), sid, &mut batch);
            wire::unsub_after(sid, pending, &mut batch);
            batch.extend_from_slice(&hpubs);
            drop(hpubs);
            let stage = Cell::new(Stage::Write);
            let waited =
                self.conn
                    .publish_round(&batch, sid, &inbox, msgs, &mut results, pending, &stage);
            if let Err(e) = bounded(&self.timer, timeout_ms, &stage, waited).await {
                self.broken = true;
                for slot in results.iter_mut().filter(|s| s.is_none()) {
                    *slot = Some(Err(e.clone()));
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(NatsError::Protocol("no reply recorded".into()))))
            .collect()
    }

    /// Sends `payload` to `subject` with a reply inbox and returns the first
    /// reply. A `503` status reply becomes [`NatsError::NoResponders`]. For
    /// JetStream API calls, pass the reply's payload to
    /// [`crate::check_api_response`].
    pub async fn request(
        &mut self,
        subject: &str,
        payload: &[u8],
        timeout_ms: u64,
    ) -> Result<Message, NatsError> {
        if self.broken {
            return Err(NatsError::Closed);
        }
        wire::check_subject(subject, false)?;
        let max = self.conn.info.max_payload;
        if payload.len() > max {
            return Err(NatsError::PayloadTooLarge {
                size: payload.len(),
                max,
            });
        }
        let sid = self.take_sid();
        let inbox = format!("{}.{sid}", self.inbox_prefix);
        let mut out = Vec::with_capacity(payload.len() + 128);
        wire::sub(&inbox, sid, &mut out);
        wire::unsub_after(sid, 1, &mut out);
        wire::publish(subject, Some(&inbox), payload, &mut out);
        let stage = Cell::new(Stage::Write);
        let reply = bounded(
            &self.timer,
            timeout_ms,
            &stage,
            self.conn.request_round(&out, sid, &stage),
        )
        .await;
        let reply = reply.inspect_err(|_| self.broken = true)?;
        if reply.status() == Some(503) {
            return Err(NatsError::NoResponders {
                subject: subject.to_string(),
            });
        }
        Ok(reply)
    }

    /// Round-trips a PING: proves the connection is alive and that the
    /// server has processed everything sent before it.
    pub async fn ping(&mut self, timeout_ms: u64) -> Result<(), NatsError> {
        if self.broken {
            return Err(NatsError::Closed);
        }
        let stage = Cell::new(Stage::Write);
        let r = bounded(
            &self.timer,
            timeout_ms,
            &stage,
            self.conn.ping_round(&stage),
        )
        .await;
        r.inspect_err(|_| self.broken = true)
    }

    /// Flushes and shuts the socket's write side down.
    pub async fn close(mut self, timeout_ms: u64) -> Result<(), NatsError> {
        let stage = Cell::new(Stage::Close);
        let io = &mut self.conn.io;
        bounded(&self.timer, timeout_ms, &stage, async move {
            io.flush().await?;
            io.shutdown().await?;
            Ok(())
        })
        .await
    }

    fn take_sid(&mut self) -> u64 {
        let sid = self.next_sid;
        self.next_sid += 1;
        sid
    }
}

fn check_inbox_token(token: &str) -> Result<(), NatsError> {
    if token.contains(['.', '*', '>']) {
        return Err(NatsError::InvalidInput(format!(
            "inbox token {token:?} must be a single subject token (no '.', '*', '>')"
        )));
    }
    wire::check_subject(token, false)
}

/// Runs `fut` unless `timer` fires first; then the error names the stage
/// `fut` had reached. `fut` is dropped either way before this returns.
async fn bounded<T: Timer, R>(
    timer: &T,
    ms: u64,
    stage: &Cell<Stage>,
    fut: impl Future<Output = Result<R, NatsError>>,
) -> Result<R, NatsError> {
    let fut = pin!(fut);
    let sleep = pin!(timer.sleep(ms));
    match select(fut, sleep).await {
        Either::Left((result, _)) => result,
        Either::Right(((), _)) => Err(NatsError::Timeout { stage: stage.get() }),
    }
}

/// The reply to one HPUB as the caller's result.
pub(crate) fn ack_result(reply: &Message, subject: &str) -> Result<PubAck, NatsError> {
    match reply
        .headers
        .as_ref()
        .and_then(|h| h.status.map(|s| (s, &h.description)))
    {
        Some((503, _)) => Err(NatsError::NoResponders {
            subject: subject.to_string(),
        }),
        Some((code, desc)) => Err(NatsError::Protocol(format!(
            "status {code} {desc:?} in reply to a publish"
        ))),
        None => parse_pub_ack(&reply.payload),
    }
}

/// What the read loop hands back after dealing with PING, +OK and INFO.
enum Event {
    Pong,
    Msg(Message),
}

/// Read and write halves of the protocol over one socket.
pub(crate) struct Conn<S> {
    io: S,
    /// Unparsed bytes are `rbuf[rpos..]`. The parser asks for more only while
    /// an op is incomplete and within its limits, so this stays below one
    /// control line or one message plus a read chunk.
    rbuf: Vec<u8>,
    rpos: usize,
    limits: Limits,
    info: ServerInfo,
}

const READ_CHUNK: usize = 16 * 1024;

/// What the parser accepts from a server that sent `info`: replies to us
/// are small, but the server may deliver anything up to its own
/// max_payload plus headers; stay within NATS's hard cap.
pub(crate) fn reply_limits(info: &ServerInfo) -> Limits {
    Limits {
        max_payload: info
            .max_payload
            .saturating_add(64 * 1024)
            .clamp(Limits::default().max_payload, HARD_MAX_PAYLOAD),
        ..Limits::default()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(io: S) -> Self {
        Conn {
            io,
            rbuf: Vec::new(),
            rpos: 0,
            limits: Limits::default(),
            info: ServerInfo::default(),
        }
    }

    fn set_info(&mut self, info: ServerInfo) {
        self.limits = reply_limits(&info);
        self.info = info;
    }

    /// Opens a connection: the whole handshake, bounded by `opts.timeout_ms`.
    pub(crate) async fn connect<T: Timer>(
        io: S,
        timer: &T,
        opts: &ConnectOptions,
    ) -> Result<Self, NatsError> {
        if let Some(token) = &opts.inbox_token {
            check_inbox_token(token)?;
        }
        wire::check_subject(&opts.inbox_prefix, false)
            .map_err(|e| NatsError::InvalidInput(format!("inbox prefix: {e}")))?;
        let mut conn = Conn::new(io);
        let stage = Cell::new(Stage::Info);
        bounded(timer, opts.timeout_ms, &stage, conn.handshake(opts, &stage)).await?;
        Ok(conn)
    }

    /// The prefix of this connection's reply inboxes.
    pub(crate) fn inbox_for(&self, opts: &ConnectOptions) -> String {
        let token = match &opts.inbox_token {
            Some(t) => t.clone(),
            None => format!("c{}", self.info.client_id.unwrap_or(0)),
        };
        format!("{}.{token}", opts.inbox_prefix)
    }

    /// The socket, the bytes read but not yet parsed, the parser's limits
    /// and the server's INFO.
    pub(crate) fn into_parts(self) -> (S, Vec<u8>, Limits, ServerInfo) {
        let leftover = self.rbuf[self.rpos..].to_vec();
        (self.io, leftover, self.limits, self.info)
    }

    async fn read_op(&mut self) -> Result<ServerOp, NatsError> {
        loop {
            match parse_op(&self.rbuf[self.rpos..], &self.limits) {
                Ok(Some((op, n))) => {
                    self.rpos += n;
                    return Ok(op);
                }
                Ok(None) => {}
                Err(e) => return Err(NatsError::Protocol(e.to_string())),
            }
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
            self.rbuf.reserve(READ_CHUNK);
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(NatsError::Closed);
            }
        }
    }

    async fn next_event(&mut self) -> Result<Event, NatsError> {
        loop {
            match self.read_op().await? {
                // The server disconnects clients that leave its PINGs
                // unanswered, which a long batch could otherwise do.
                ServerOp::Ping => self.send(wire::PONG).await?,
                ServerOp::Ok => {}
                ServerOp::Info(info) => self.set_info(*info),
                ServerOp::Err(e) => return Err(NatsError::Server(e)),
                ServerOp::Pong => return Ok(Event::Pong),
                ServerOp::Msg(m) => return Ok(Event::Msg(m)),
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), NatsError> {
        self.io.write_all(bytes).await?;
        self.io.flush().await?;
        Ok(())
    }

    async fn handshake(
        &mut self,
        opts: &ConnectOptions,
        stage: &Cell<Stage>,
    ) -> Result<(), NatsError> {
        stage.set(Stage::Info);
        match self.read_op().await? {
            ServerOp::Info(info) => self.set_info(*info),
            ServerOp::Err(e) => return Err(NatsError::Server(e)),
            other => {
                return Err(NatsError::Protocol(format!(
                    "expected INFO first, got {}",
                    other.name()
                )))
            }
        }
        if !self.info.headers {
            // HPUB, Nats-Msg-Id and no-responders all need headers (NATS 2.2+).
            return Err(NatsError::Protocol(
                "server does not support headers".into(),
            ));
        }
        let (user, pass, auth_token) = match &opts.auth {
            Auth::None | Auth::NKey { .. } => (None, None, None),
            Auth::UserPass { user, pass } => (Some(user.as_str()), Some(pass.as_str()), None),
            Auth::Token(t) => (None, None, Some(t.as_str())),
        };
        let signed = match &opts.auth {
            Auth::NKey { seed } => Some(sign_nonce(seed, self.info.nonce.as_deref())?),
            _ => None,
        };
        let mut out = Vec::new();
        wire::connect(
            &wire::ConnectInfo {
                verbose: false,
                pedantic: false,
                tls_required: false,
                name: &opts.name,
                lang: "rust",
                version: env!("CARGO_PKG_VERSION"),
                protocol: 1,
                headers: true,
                no_responders: true,
                user,
                pass,
                auth_token,
                nkey: signed.as_ref().map(|(public, _)| public.as_str()),
                sig: signed.as_ref().map(|(_, sig)| sig.as_str()),
            },
            &mut out,
        );
        out.extend_from_slice(wire::PING);
        stage.set(Stage::Write);
        self.send(&out).await?;
        stage.set(Stage::Handshake);
        loop {
            if let Event::Pong = self.next_event().await? {
                return Ok(());
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn publish_round(
        &mut self,
        batch: &[u8],
        sid: u64,
        inbox: &str,
        msgs: &[PublishMsg],
        results: &mut [Option<Result<PubAck, NatsError>>],
        mut pending: usize,
        stage: &Cell<Stage>,
    ) -> Result<(), NatsError> {
        stage.set(Stage::Write);
        self.send(batch).await?;
        stage.set(Stage::PubAck);
        while pending > 0 {
            let Event::Msg(reply) = self.next_event().await? else {
                continue;
            };
            if reply.sid != sid {
                continue;
            }
            let index = reply
                .subject
                .strip_prefix(inbox)
                .and_then(|rest| rest.strip_prefix('.'))
                .and_then(|i| i.parse::<usize>().ok());
            // A reply we cannot place, or a second one for the same message,
            // must not count towards completion.
            let Some(i) = index else { continue };
            let (Some(slot), Some(msg)) = (results.get_mut(i), msgs.get(i)) else {
                continue;
            };
            if slot.is_none() {
                *slot = Some(ack_result(&reply, &msg.subject));
                pending -= 1;
            }
        }
        Ok(())
    }

    async fn request_round(
        &mut self,
        out: &[u8],
        sid: u64,
        stage: &Cell<Stage>,
    ) -> Result<Message, NatsError> {
        stage.set(Stage::Write);
        self.send(out).await?;
        stage.set(Stage::Reply);
        loop {
            if let Event::Msg(m) = self.next_event().await? {
                if m.sid == sid {
                    return Ok(m);
                }
            }
        }
    }

    async fn ping_round(&mut self, stage: &Cell<Stage>) -> Result<(), NatsError> {
        stage.set(Stage::Write);
        self.send(wire::PING).await?;
        stage.set(Stage::Pong);
        loop {
            if let Event::Pong = self.next_event().await? {
                return Ok(());
            }
        }
    }
}
