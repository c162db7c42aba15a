//! The tracker of expectations: what the edge must answer for each request
//! and which event ids storage must end up holding. Pure: it compares
//! receipts with the plan and never talks to the network.

use std::collections::HashSet;

use serde::Deserialize;
use uuid::Uuid;

use crate::model::{Batch, Plan};

/// The edge's 202 body. Parsed here rather than through `spoor_core` so that
/// the load test checks the wire format a real client sees.
#[derive(Debug, Clone, Deserialize)]
pub struct EdgeReceipt {
    pub accepted: usize,
    #[serde(default)]
    pub rejected: Vec<EdgeRejection>,
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EdgeRejection {
    pub index: usize,
    #[serde(default)]
    pub event_id: Option<String>,
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

/// The edge's body for whole-request errors.
#[derive(Debug, Clone, Deserialize)]
pub struct EdgeError {
    pub error: String,
    #[serde(default)]
    pub message: String,
}

/// Everything in `receipt` that differs from what `batch` expects; empty
/// when the edge answered exactly right.
pub fn check_receipt(batch: &Batch, receipt: &EdgeReceipt) -> Vec<String> {
    let mut problems = Vec::new();
    if receipt.accepted != batch.valid_ids.len() {
        problems.push(format!(
            "accepted {} of {}, expected {}",
            receipt.accepted,
            batch.events,
            batch.valid_ids.len()
        ));
    }
    let mut got: Vec<&EdgeRejection> = receipt.rejected.iter().collect();
    got.sort_by_key(|r| r.index);
    let mut want = batch.rejections.iter().peekable();
    let mut got = got.into_iter().peekable();
    loop {
        match (want.peek(), got.peek()) {
            (None, None) => break,
            (Some(w), Some(g)) if w.index == g.index => {
                if w.reason != g.reason {
                    problems.push(format!(
                        "event {}: expected reason {}, got {} ({})",
                        w.index, w.reason, g.reason, g.message
                    ));
                }
                if w.event_id != g.event_id {
                    problems.push(format!(
                        "event {}: rejection echoes event_id {:?}, expected {:?}",
                        w.index, g.event_id, w.event_id
                    ));
                }
                if g.message.trim().is_empty() {
                    problems.push(format!(
                        "event {}: rejection {} has no message",
                        g.index, g.reason
                    ));
                }
                want.next();
                got.next();
            }
            (Some(w), g) if g.is_none_or(|g| w.index < g.index) => {
                problems.push(format!(
                    "event {}: expected rejection {}, but it was accepted",
                    w.index, w.reason
                ));
                want.next();
            }
            (_, g) => {
                if let Some(g) = g {
                    problems.push(format!(
                        "event {}: unexpectedly rejected: {} ({})",
                        g.index, g.reason, g.message
                    ));
                }
                got.next();
            }
        }
    }
    if !receipt.warnings.is_empty() {
        problems.push(format!("unexpected warnings: {:?}", receipt.warnings));
    }
    problems
}

/// The ids storage must hold (valid events of every acknowledged batch) and
/// those it may hold (valid events of batches that were sent but never
/// acknowledged: the edge may have published them before failing).
pub fn expected_ids(plan: &Plan, acked: &[bool]) -> (HashSet<Uuid>, HashSet<Uuid>) {
    let mut must = HashSet::new();
    let mut may = HashSet::new();
    for (b, ok) in plan.batches.iter().zip(acked) {
        let set = if *ok { &mut must } else { &mut may };
        set.extend(b.valid_ids.iter().copied());
    }
    may.retain(|id| !must.contains(id));
    (must, may)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ExpectedRejection, InvalidKind};

    fn batch() -> Batch {
        Batch {
            anonymous_id: "d".into(),
            user_agent: "ua",
            body: String::new(),
            sent_at_ms: 0,
            events: 4,
            valid_ids: vec![Uuid::from_u128(1), Uuid::from_u128(2)],
            rejections: vec![
                ExpectedRejection {
                    index: 1,
                    event_id: Some("x".into()),
                    reason: "invalid_event_id",
                    kind: InvalidKind::BadEventId,
                },
                ExpectedRejection {
                    index: 3,
                    event_id: None,
                    reason: "invalid_event",
                    kind: InvalidKind::NotAnObject,
                },
            ],
            headers: Vec::new(),
        }
    }

    fn receipt(json: &str) -> EdgeReceipt {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn exact_receipt_passes() {
        let r = receipt(
            r#"{"accepted":2,"rejected":[{"index":3,"reason":"invalid_event","message":"m"},{"index":1,"event_id":"x","reason":"invalid_event_id","message":"m"}]}"#,
        );
        assert_eq!(check_receipt(&batch(), &r), Vec::<String>::new());
    }

    #[test]
    fn every_difference_is_reported() {
        let r = receipt(
            r#"{"accepted":3,"rejected":[{"index":1,"event_id":"y","reason":"missing_identity","message":""},{"index":2,"reason":"invalid_event","message":"m"}],"warnings":["w"]}"#,
        );
        let p = check_receipt(&batch(), &r);
        assert_eq!(p.len(), 7, "{p:#?}");
        assert!(p[0].starts_with("accepted 3 of 4, expected 2"));
        assert!(p[1].contains("expected reason invalid_event_id, got missing_identity"));
        assert!(p[2].contains("echoes event_id Some(\"y\")"));
        assert!(p[3].contains("has no message"));
        assert!(p[4].contains("event 2: unexpectedly rejected"));
        assert!(p[5].contains("event 3: expected rejection invalid_event, but it was accepted"));
        assert!(p[6].contains("unexpected warnings"));
    }

    #[test]
    fn unacked_batches_are_optional() {
        let mut b2 = batch();
        b2.valid_ids = vec![Uuid::from_u128(2), Uuid::from_u128(3)];
        let plan = Plan {
            run_id: Uuid::nil(),
            batches: vec![batch(), b2],
            requests: vec![],
        };
        let (must, may) = expected_ids(&plan, &[true, false]);
        assert_eq!(must, [1, 2].map(Uuid::from_u128).into());
        assert_eq!(may, [3].map(Uuid::from_u128).into());
    }
}
