//! `spoor dead-letters list | replay`: the operator's side of the
//! `SPOOR_DEAD` stream the relay fills (see `spoor_core::contract` for the
//! stream's name and the headers, which are the contract).
//!
//! Replay republishes a dead letter's original bytes to its original
//! subject, waits for the events stream's PubAck, and only then deletes the
//! dead letter, so a failure anywhere leaves the dead letter in place. The
//! replay's `Nats-Msg-Id` is `replay:<dead seq>:<original msg id>`: the
//! original id may still be inside JetStream's duplicate window (the copy
//! would be dropped), and a deterministic id makes a replay repeated after a
//! crash before the delete a JetStream duplicate. It never touches frames
//! that are not dead letters. A dead letter of rows (`Spoor-Dead-Rows`)
//! replays the same way, marked `Spoor-Replay-Of-Dead-Rows` instead of
//! `Spoor-Replay-Of-Stream-Seq`: its original is not superseded (its other
//! rows are stored), and the relay checks ClickHouse for its events rather
//! than dropping them as duplicates of their first copies.

use async_nats::jetstream;
use bytes::Bytes;
use serde::Serialize;
use spoor_core::contract::{dead_letter_header as header, DEAD_STREAM, DEAD_SUBJECT_PREFIX};

use crate::connect::{self, NatsEndpoint, NatsUnreachable};
use crate::window::format_time;
use spoor_runtime::stream_read::{self, ReadError, StoredMessage};

/// One message of `SPOOR_DEAD`, as its headers describe it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeadLetter {
    /// Sequence in `SPOOR_DEAD`: what `replay --seq` takes.
    pub seq: u64,
    /// When it was dead-lettered, RFC 3339.
    pub time: String,
    pub reason: String,
    pub detail: String,
    pub original_stream: String,
    pub original_subject: String,
    pub original_msg_id: String,
    pub original_stream_seq: Option<u64>,
    pub original_time: String,
    /// Payload bytes (the original frame, or the rows re-encoded).
    pub size: usize,
    /// Events it holds when it holds rows of a decoded frame, re-encoded
    /// (`Spoor-Dead-Rows`: an unknown project, rows ClickHouse refused),
    /// rather than the original bytes.
    pub rows: Option<u64>,
    #[serde(skip)]
    pub payload: Bytes,
}

impl DeadLetter {
    fn from_stored(m: StoredMessage) -> DeadLetter {
        let text = |name: &str| m.header(name).unwrap_or_default().to_string();
        let reason = match m.header(header::REASON) {
            Some(r) => r.to_string(),
            // Written by hand, not by a relay: the subject still says why.
            None => m
                .subject
                .strip_prefix(DEAD_SUBJECT_PREFIX)
                .unwrap_or_default()
                .to_string(),
        };
        DeadLetter {
            seq: m.seq,
            time: format_time(m.published),
            reason,
            detail: text(header::DETAIL),
            original_stream: text(header::ORIGINAL_STREAM),
            original_subject: text(header::ORIGINAL_SUBJECT),
            original_msg_id: text(header::ORIGINAL_MSG_ID),
            original_stream_seq: m
                .header(header::ORIGINAL_STREAM_SEQ)
                .and_then(|s| s.trim().parse().ok()),
            original_time: text(header::ORIGINAL_TIME),
            size: m.payload.len(),
            rows: m.header(header::ROWS).and_then(|s| s.trim().parse().ok()),
            payload: m.payload,
        }
    }

    /// The `Nats-Msg-Id` its replay is published with.
    pub fn replay_msg_id(&self) -> String {
        format!("replay:{}:{}", self.seq, self.original_msg_id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error(transparent)]
    Nats(#[from] NatsUnreachable),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("say what to replay: --reason R, --seq N (repeatable) or --all")]
    NothingSelected,
    #[error("no dead letter with sequence {0:?} in {DEAD_STREAM}")]
    NotFound(Vec<u64>),
    #[error(
        "dead letter {seq} has no {} header, so there is nowhere to replay it",
        header::ORIGINAL_SUBJECT
    )]
    NoOriginalSubject { seq: u64 },
    #[error(
        "replaying dead letter {seq} to {subject} failed (it is still in {DEAD_STREAM}): {message}"
    )]
    Publish {
        seq: u64,
        subject: String,
        message: String,
    },
    #[error("dead letter {seq} was replayed (events stream seq {replayed_seq}) but could not be deleted: {message}; a repeated replay is a JetStream duplicate within its window")]
    Delete {
        seq: u64,
        replayed_seq: u64,
        message: String,
    },
}

/// Every dead letter, oldest first; only `reason`'s when given.
pub async fn list(
    nats: &NatsEndpoint,
    reason: Option<&str>,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let client = connect::nats(nats).await?;
    let js = jetstream::new(client);
    read_all(&js, reason).await
}

async fn read_all(
    js: &jetstream::Context,
    reason: Option<&str>,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let mut out = Vec::new();
    stream_read::read(js, DEAD_STREAM, None, None, |m| {
        let letter = DeadLetter::from_stored(m);
        if reason.is_none_or(|r| r == letter.reason) {
            out.push(letter);
        }
    })
    .await?;
    Ok(out)
}

/// Which dead letters to replay; a letter matching any selector is replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    All,
    Reason(String),
    Seq(u64),
}

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// NATS and the ops role's credentials.
    pub nats: NatsEndpoint,
    pub selectors: Vec<Selector>,
    /// Only say what would be replayed.
    pub dry_run: bool,
}

/// One replayed (or, in a dry run, selected) dead letter.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Replayed {
    pub dead_seq: u64,
    pub reason: String,
    pub subject: String,
    pub msg_id: String,
    pub size: usize,
    /// The replay's sequence in the events stream (none in a dry run).
    pub stream: Option<String>,
    pub stream_seq: Option<u64>,
    /// JetStream already had this replay id (a repeated replay).
    pub duplicate: bool,
}

/// Replays the selected dead letters in sequence order. Stops at the first
/// failure; what was replayed before it stays replayed (and deleted).
pub async fn replay(opts: &ReplayOptions) -> Result<Vec<Replayed>, DeadLetterError> {
    if opts.selectors.is_empty() {
        return Err(DeadLetterError::NothingSelected);
    }
    let client = connect::nats(&opts.nats).await?;
    let js = jetstream::new(client.clone());
    let letters = read_all(&js, None).await?;
    let wanted_seqs: Vec<u64> = opts
        .selectors
        .iter()
        .filter_map(|s| match s {
            Selector::Seq(n) => Some(*n),
            _ => None,
        })
        .collect();
    let absent: Vec<u64> = wanted_seqs
        .iter()
        .copied()
        .filter(|n| !letters.iter().any(|l| l.seq == *n))
        .collect();
    if !absent.is_empty() {
        return Err(DeadLetterError::NotFound(absent));
    }
    let selected: Vec<DeadLetter> = letters
        .into_iter()
        .filter(|l| {
            opts.selectors.iter().any(|s| match s {
                Selector::All => true,
                Selector::Reason(r) => *r == l.reason,
                Selector::Seq(n) => *n == l.seq,
            })
        })
        .collect();
    for letter in &selected {
        if letter.original_subject.is_empty() {
            return Err(DeadLetterError::NoOriginalSubject { seq: letter.seq });
        }
    }
    let mut out = Vec::with_capacity(selected.len());
    if opts.dry_run {
        for letter in selected {
            out.push(Replayed {
                dead_seq: letter.seq,
                msg_id: letter.replay_msg_id(),
                reason: letter.reason,
                subject: letter.original_subject,
                size: letter.size,
                stream: None,
                stream_seq: None,
                duplicate: false,
            });
        }
        return Ok(out);
    }
    let dead = stream_read::get_stream(&js, DEAD_STREAM).await?;
    for letter in selected {
        out.push(replay_one(&js, &dead, letter).await?);
    }
    let _ = client.flush().await;
    Ok(out)
}

async fn replay_one(
    js: &jetstream::Context,
    dead: &jetstream::stream::Stream,
    letter: DeadLetter,
) -> Result<Replayed, DeadLetterError> {
    let msg_id = letter.replay_msg_id();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(header::NATS_MSG_ID, msg_id.as_str());
    if letter.rows.is_some() {
        // Rows of a frame whose other rows are stored: the original is not
        // superseded, and the relay must not take these events for
        // duplicates of their first (never stored) copies.
        headers.insert(header::REPLAY_OF_DEAD_ROWS, letter.seq.to_string().as_str());
    } else if let Some(seq) = letter.original_stream_seq {
        // Lets `spoor reconcile` count the original frame as superseded.
        headers.insert(header::REPLAY_OF_STREAM_SEQ, seq.to_string().as_str());
    }
    let publish_error = |message: String| DeadLetterError::Publish {
        seq: letter.seq,
        subject: letter.original_subject.clone(),
        message,
    };
    let ack = js
        .publish_with_headers(
            letter.original_subject.clone(),
            headers,
            letter.payload.clone(),
        )
        .await
        .map_err(|e| publish_error(e.to_string()))?
        .await
        .map_err(|e| publish_error(e.to_string()))?;
    dead.delete_message(letter.seq)
        .await
        .map_err(|e| DeadLetterError::Delete {
            seq: letter.seq,
            replayed_seq: ack.sequence,
            message: e.to_string(),
        })?;
    Ok(Replayed {
        dead_seq: letter.seq,
        reason: letter.reason,
        subject: letter.original_subject,
        msg_id,
        size: letter.size,
        stream: Some(ack.stream),
        stream_seq: Some(ack.sequence),
        duplicate: ack.duplicate,
    })
}

/// The `list` table, for people.
pub fn render_list(letters: &[DeadLetter]) -> String {
    let mut out = format!(
        "{:>8}  {:<24}  {:<20}  {:<28}  {:>9}  {}\n",
        "SEQ", "TIME", "REASON", "ORIGINAL SUBJECT", "BYTES", "DETAIL"
    );
    for l in letters {
        out.push_str(&format!(
            "{:>8}  {:<24}  {:<20}  {:<28}  {:>9}  {}\n",
            l.seq, l.time, l.reason, l.original_subject, l.size, l.detail
        ));
    }
    out.push_str(&format!("{} dead letter(s)\n", letters.len()));
    out
}

/// The `replay` summary, for people.
pub fn render_replayed(replayed: &[Replayed], dry_run: bool) -> String {
    let mut out = String::new();
    for r in replayed {
        let outcome = match (dry_run, r.stream_seq, r.duplicate) {
            (true, _, _) => "would replay".to_string(),
            (false, Some(seq), false) => format!(
                "replayed as {} seq {seq}",
                r.stream.as_deref().unwrap_or("?")
            ),
            (false, Some(seq), true) => format!("already replayed (duplicate of seq {seq})"),
            (false, None, _) => "replayed".to_string(),
        };
        out.push_str(&format!(
            "dead letter {} ({}, {} bytes) -> {} [{}]: {outcome}\n",
            r.dead_seq, r.reason, r.size, r.subject, r.msg_id
        ));
    }
    let verb = if dry_run {
        "would be replayed"
    } else {
        "replayed and deleted"
    };
    out.push_str(&format!("{} dead letter(s) {verb}\n", replayed.len()));
    out
}
