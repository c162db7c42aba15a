//! Runs funnel queries and shapes their answers.

use clickhouse::Client;
use serde::Serialize;

use super::{cell_text, cell_u64, fetch_with_totals, ReadError, StoreError};
use crate::query::funnel::{funnel_steps, FunnelRequest, FunnelStepResult};
use crate::query::Dimension;

/// A funnel answer. JSON: `{"window_seconds": 3600, "tick_ms": 1,
/// "steps": [{"event": "add_to_cart", "entered": 120, "converted": 48,
/// "dropped": 72, "conversion_rate": 1.0, "overall_conversion_rate": 1.0,
/// "drop_off_rate": 0.6}, ...], "breakdown": "country" | null,
/// "groups": [{"value": "DE", "steps": [...]}], "other": [...] | null}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunnelAnswer {
    pub window_seconds: i64,
    /// The resolution at which event times were compared.
    pub tick_ms: i64,
    /// Over all users.
    pub steps: Vec<FunnelStepResult>,
    pub breakdown: Option<Dimension>,
    /// The breakdown values with the most users entered, most first (ties
    /// by value); empty without a breakdown.
    pub groups: Vec<FunnelGroup>,
    /// The users of every other value together; `null` when the groups
    /// hold everyone.
    pub other: Option<Vec<FunnelStepResult>>,
}

/// One breakdown value's funnel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunnelGroup {
    pub value: String,
    pub steps: Vec<FunnelStepResult>,
}

/// Runs the request's funnel query and shapes the answer.
pub async fn run_funnel(
    client: &Client,
    request: &FunnelRequest,
) -> Result<FunnelAnswer, ReadError> {
    let sql = request.sql()?;
    let (rows, totals) = fetch_with_totals(client, &sql).await?;
    Ok(funnel_answer(request, &rows, totals.as_deref())?)
}

fn counts(cells: &[serde_json::Value], n: usize) -> Result<Vec<u64>, StoreError> {
    if cells.len() < n {
        return Err(StoreError::Unreadable(format!(
            "{} columns where {n} counts were expected",
            cells.len()
        )));
    }
    cells[..n].iter().map(cell_u64).collect()
}

/// The answer from the rows of [`FunnelRequest::sql`].
pub fn funnel_answer(
    request: &FunnelRequest,
    rows: &[Vec<serde_json::Value>],
    totals: Option<&[serde_json::Value]>,
) -> Result<FunnelAnswer, StoreError> {
    let n = request.steps.len();
    let mut answer = FunnelAnswer {
        window_seconds: request.window_seconds,
        tick_ms: request.tick_ms(),
        steps: Vec::new(),
        breakdown: request.breakdown,
        groups: Vec::new(),
        other: None,
    };
    if request.breakdown.is_none() {
        let entered = match rows.first() {
            Some(row) => counts(row, n)?,
            None => vec![0; n],
        };
        answer.steps = funnel_steps(&request.steps, &entered);
        return Ok(answer);
    }
    let mut rest = match totals {
        Some(row) if !row.is_empty() => counts(&row[1..], n)?,
        _ => vec![0; n],
    };
    answer.steps = funnel_steps(&request.steps, &rest);
    for row in rows {
        let value = row
            .first()
            .map(cell_text)
            .ok_or_else(|| StoreError::Unreadable("an empty row".into()))?;
        let entered = counts(&row[1..], n)?;
        for (r, e) in rest.iter_mut().zip(&entered) {
            *r = r.checked_sub(*e).ok_or_else(|| {
                StoreError::Unreadable("a breakdown value counts more users than the total".into())
            })?;
        }
        answer.groups.push(FunnelGroup {
            value,
            steps: funnel_steps(&request.steps, &entered),
        });
    }
    if rest[0] > 0 {
        answer.other = Some(funnel_steps(&request.steps, &rest));
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::query::funnel::FunnelStep;

    fn request(breakdown: Option<Dimension>) -> FunnelRequest {
        FunnelRequest {
            project_id: "shop".into(),
            steps: ["view", "cart", "pay"]
                .into_iter()
                .map(|e| FunnelStep {
                    event: e.into(),
                    properties: vec![],
                })
                .collect(),
            window_seconds: 60,
            since_ms: 0,
            until_ms: 86_400_000,
            breakdown,
            breakdown_limit: 2,
        }
    }

    #[test]
    fn plain_answer_reads_one_row() {
        let a = funnel_answer(
            &request(None),
            &[vec![json!("10"), json!("4"), json!(1)]],
            None,
        )
        .unwrap();
        assert_eq!(
            a.steps.iter().map(|s| s.entered).collect::<Vec<_>>(),
            [10, 4, 1]
        );
        assert!(a.groups.is_empty() && a.other.is_none());
        let none = funnel_answer(&request(None), &[], None).unwrap();
        assert!(none.steps.iter().all(|s| s.entered == 0));
    }

    #[test]
    fn breakdown_keeps_the_top_values_and_the_rest_as_other() {
        let rows = vec![
            vec![json!("DE"), json!("6"), json!("3"), json!("1")],
            vec![json!("FR"), json!("3"), json!("2"), json!("2")],
        ];
        let totals = vec![json!(""), json!("12"), json!("5"), json!("3")];
        let a = funnel_answer(&request(Some(Dimension::Country)), &rows, Some(&totals)).unwrap();
        assert_eq!(a.steps[0].entered, 12);
        assert_eq!(a.groups[0].value, "DE");
        assert_eq!(a.groups[1].steps[2].entered, 2);
        let other: Vec<u64> = a.other.unwrap().iter().map(|s| s.entered).collect();
        assert_eq!(other, [3, 0, 0]);

        let all = vec![json!(""), json!("9"), json!("5"), json!("3")];
        let a = funnel_answer(&request(Some(Dimension::Country)), &rows, Some(&all)).unwrap();
        assert!(a.other.is_none());
    }
}
