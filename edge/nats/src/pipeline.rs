//! A pipelined JetStream publisher: one long-lived connection that many
//! callers publish over at once, each waiting only for its own PubAck.
//!
//! [`Pipeline::connect`] performs the handshake and returns the publisher
//! plus two futures the caller must spawn on its executor (workerd's
//! `spawn_local` in a Durable Object, tokio's `LocalSet` natively): the
//! **reader**, which parses everything the server sends, answers its PINGs
//! and resolves PubAcks by reply subject, and the **writer**, which drains a
//! queue of encoded commands to the socket, coalescing whatever queued up
//! while the last write was in flight into one write.
//!
//! Invariants:
//! - No borrow of the shared state is held across an `.await`; publishers
//!   only enqueue bytes and wait on their own oneshot.
//! - A PubAck resolves exactly the publish whose reply subject it names
//!   (`<inbox>.<n>`, one subscription `<inbox>.*` for the connection); a
//!   reply for an unknown or already-resolved `n` is ignored.
//! - Once the connection fails (I/O, EOF, `-ERR`, protocol garbage, or a
//!   caller's [`Pipeline::close`]) every waiting publish gets that error,
//!   every later publish fails at once with it, and both tasks end. The
//!   owner then opens a new connection; it never guesses about the old one.
//! - A publish whose PubAck does not arrive within its timeout fails alone
//!   (its `Nats-Msg-Id` makes a retry on any connection idempotent).

use crate::client::{Conn, ConnectOptions, PublishMsg};
use crate::error::{NatsError, Stage};
use crate::jetstream::PubAck;
use crate::parser::{parse_op, ServerOp};
use crate::timer::Timer;
use crate::wire;
use futures_channel::{mpsc, oneshot};
use futures_util::future::{select, Either};
use futures_util::StreamExt as _;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// The subscription id of the connection's one reply inbox.
const REPLY_SID: u64 = 1;
/// Most bytes the writer gathers from its queue into one socket write.
const MAX_WRITE: usize = 1 << 20;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;

type AckSender = oneshot::Sender<Result<PubAck, NatsError>>;

struct Shared {
    pending: HashMap<u64, AckSender>,
    next: u64,
    closed: Option<NatsError>,
    max_payload: usize,
    /// Stops the reader (which may be parked in a read) on `close`.
    stop_reader: Option<oneshot::Sender<()>>,
    published: u64,
}

impl Shared {
    /// Marks the connection failed and fails every waiting publish.
    fn fail(&mut self, error: NatsError) {
        if self.closed.is_none() {
            self.closed = Some(error.clone());
        }
        for (_, tx) in self.pending.drain() {
            let _ = tx.send(Err(error.clone()));
        }
        if let Some(stop) = self.stop_reader.take() {
            let _ = stop.send(());
        }
    }
}

/// The publishing side of a pipelined connection. Cheap to clone; every
/// clone publishes over the same connection.
pub struct Pipeline<T> {
    shared: Rc<RefCell<Shared>>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    inbox: Rc<str>,
    timer: Rc<T>,
}

impl<T> Clone for Pipeline<T> {
    fn clone(&self) -> Self {
        Pipeline {
            shared: self.shared.clone(),
            out: self.out.clone(),
            inbox: self.inbox.clone(),
            timer: self.timer.clone(),
        }
    }
}

/// What [`Pipeline::connect`] hands back: the publisher and the two tasks
/// to spawn. Both tasks end when the connection fails or is closed.
pub struct Connected<T, R, W> {
    pub pipeline: Pipeline<T>,
    pub reader: R,
    pub writer: W,
}

impl<T: Timer> Pipeline<T> {
    /// Handshakes on `io` (bounded by `opts.timeout_ms`), subscribes the
    /// reply inbox and returns the publisher with its reader and writer
    /// tasks, which the caller must spawn.
    pub async fn connect<S>(
        io: S,
        timer: T,
        opts: &ConnectOptions,
    ) -> Result<
        Connected<T, impl Future<Output = ()> + 'static, impl Future<Output = ()> + 'static>,
        NatsError,
    >
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let conn = Conn::connect(io, &timer, opts).await?;
        let inbox: Rc<str> = Rc::from(conn.inbox_for(opts).as_str());
        let (io, leftover, limits, info) = conn.into_parts();
        let (stop_tx, stop_rx) = oneshot::channel();
        let shared = Rc::new(RefCell::new(Shared {
            pending: HashMap::new(),
            next: 0,
            closed: None,
            max_payload: info.max_payload,
            stop_reader: Some(stop_tx),
            published: 0,
        }));
        let (out, queue) = mpsc::unbounded::<Vec<u8>>();
        let mut first = Vec::new();
        wire::sub(&format!("{inbox}.*"), REPLY_SID, &mut first);
        // Cannot fail: the receiver is alive.
        let _ = out.unbounded_send(first);
        let (rd, wr) = tokio::io::split(io);
        let reader = read_loop(
            rd,
            leftover,
            limits,
            shared.clone(),
            out.clone(),
            inbox.clone(),
            stop_rx,
        );
        let writer = write_loop(wr, queue, shared.clone());
        Ok(Connected {
            pipeline: Pipeline {
                shared,
                out,
                inbox,
                timer: Rc::new(timer),
            },
            reader,
            writer,
        })
    }

    /// Publishes one message to JetStream and waits up to `timeout_ms` for
    /// its PubAck. Many publishes may wait at once.
    pub async fn publish(&self, msg: &PublishMsg, timeout_ms: u64) -> Result<PubAck, NatsError> {
        let (tx, rx) = oneshot::channel();
        let n = {
            let mut sh = self.shared.borrow_mut();
            if let Some(e) = &sh.closed {
                return Err(e.clone());
            }
            let n = sh.next;
            let reply = format!("{}.{n}", self.inbox);
            let mut bytes = Vec::with_capacity(msg.payload.len() + 160);
            wire::hpub(
                &msg.subject,
                &reply,
                &msg.msg_id,
                &msg.headers,
                &msg.payload,
                sh.max_payload,
                &mut bytes,
            )?;
            sh.next += 1;
            sh.published += 1;
            sh.pending.insert(n, tx);
            if self.out.unbounded_send(bytes).is_err() {
                let e = sh.closed.clone().unwrap_or(NatsError::Closed);
                sh.pending.remove(&n);
                return Err(e);
            }
            n
        };
        let sleep = pin!(self.timer.sleep(timeout_ms));
        match select(rx, sleep).await {
            Either::Left((Ok(result), _)) => result,
            Either::Left((Err(_canceled), _)) => Err(self.error_or_closed()),
            Either::Right(((), _)) => {
                self.shared.borrow_mut().pending.remove(&n);
                Err(NatsError::Timeout {
                    stage: Stage::PubAck,
                })
            }
        }
    }

    fn error_or_closed(&self) -> NatsError {
        self.shared
            .borrow()
            .closed
            .clone()
            .unwrap_or(NatsError::Closed)
    }
}

impl<T> Pipeline<T> {
    /// True once the connection has failed or been closed.
    pub fn is_closed(&self) -> bool {
        self.shared.borrow().closed.is_some()
    }

    /// Why the connection failed, once it has.
    pub fn error(&self) -> Option<NatsError> {
        self.shared.borrow().closed.clone()
    }

    /// Publishes waiting for their PubAck.
    pub fn in_flight(&self) -> usize {
        self.shared.borrow().pending.len()
    }

    /// Messages handed to the connection since it opened.
    pub fn published(&self) -> u64 {
        self.shared.borrow().published
    }

    /// Fails every waiting publish with [`NatsError::Closed`] and ends both
    /// tasks; the writer shuts the socket's write side down.
    pub fn close(&self) {
        self.shared.borrow_mut().fail(NatsError::Closed);
        self.out.close_channel();
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Rc<RefCell<Shared>>,
) {
    while let Some(mut buf) = queue.next().await {
        // Whatever queued while the last write was in flight goes out in
        // this one: under load, many publishes per socket write.
        while buf.len() < MAX_WRITE {
            match queue.try_recv() {
                Ok(more) => buf.extend_from_slice(&more),
                _ => break,
            }
        }
        if shared.borrow().closed.is_some() {
            break;
        }
        let written = async {
            wr.write_all(&buf).await?;
            wr.flush().await
        }
        .await;
        if let Err(e) = written {
            shared.borrow_mut().fail(NatsError::from(e));
            break;
        }
    }
    queue.close();
    let _ = wr.shutdown().await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    leftover: Vec<u8>,
    mut limits: crate::parser::Limits,
    shared: Rc<RefCell<Shared>>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    inbox: Rc<str>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut buf = leftover;
    let mut pos = 0;
    loop {
        // Every complete op in the buffer first.
        loop {
            match parse_op(&buf[pos..], &limits) {
                Ok(Some((op, n))) => {
                    pos += n;
                    if let Err(e) = handle(op, &shared, &out, &inbox, &mut limits) {
                        shared.borrow_mut().fail(e);
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    shared.borrow_mut().fail(NatsError::Protocol(e.to_string()));
                    return;
                }
            }
        }
        buf.drain(..pos);
        pos = 0;
        buf.reserve(READ_CHUNK);
        let read = pin!(rd.read_buf(&mut buf));
        match select(read, &mut stop).await {
            Either::Left((Ok(0), _)) => {
                shared.borrow_mut().fail(NatsError::Closed);
                return;
            }
            Either::Left((Ok(_), _)) => {}
            Either::Left((Err(e), _)) => {
                shared.borrow_mut().fail(NatsError::from(e));
                return;
            }
            // Closed by the owner (or the stop sender was dropped).
            Either::Right(_) => return,
        }
    }
}

fn handle(
    op: ServerOp,
    shared: &RefCell<Shared>,
    out: &mpsc::UnboundedSender<Vec<u8>>,
    inbox: &str,
    limits: &mut crate::parser::Limits,
) -> Result<(), NatsError> {
    match op {
        ServerOp::Ping => {
            // The server drops clients that leave its PINGs unanswered.
            let _ = out.unbounded_send(wire::PONG.to_vec());
        }
        ServerOp::Pong | ServerOp::Ok => {}
        ServerOp::Info(info) => {
            let mut sh = shared.borrow_mut();
            sh.max_payload = info.max_payload;
            *limits = crate::client::reply_limits(&info);
        }
        ServerOp::Err(e) => return Err(NatsError::Server(e)),
        ServerOp::Msg(reply) => {
            if reply.sid != REPLY_SID {
                return Ok(());
            }
            let n = reply
                .subject
                .strip_prefix(inbox)
                .and_then(|rest| rest.strip_prefix('.'))
                .and_then(|n| n.parse::<u64>().ok());
            let Some(n) = n else { return Ok(()) };
            let tx = shared.borrow_mut().pending.remove(&n);
            if let Some(tx) = tx {
                // The publish's subject is only for the no-responders
                // message; the reply subject names the same publish.
                let _ = tx.send(crate::client::ack_result(&reply, "a JetStream subject"));
            }
        }
    }
    Ok(())
}
