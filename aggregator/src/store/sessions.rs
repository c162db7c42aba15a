//! Runs sessions queries and shapes their answers.

use clickhouse::Client;
use serde::Serialize;

use super::{cell_f64_or_zero, cell_u64, fetch_with_totals, ReadError};
use super::{cell_text, StoreError};
use crate::query::sessions::SessionsRequest;

/// Sessions and their averages; see `query::sessions` for the definitions.
/// With no sessions every figure is 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SessionStats {
    pub sessions: u64,
    pub avg_duration_seconds: f64,
    pub median_duration_seconds: f64,
    pub avg_pages_per_session: f64,
}

/// One day's sessions: those that started that day in the timezone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionDay {
    /// `YYYY-MM-DD`.
    pub day: String,
    #[serde(flatten)]
    pub stats: SessionStats,
}

/// JSON: `{"timezone": "Europe/Berlin", "days": [{"day": "2026-11-22",
/// "sessions": 3, "avg_duration_seconds": 310.5,
/// "median_duration_seconds": 120.0, "avg_pages_per_session": 2.33}],
/// "total": {"sessions": 3, ...}}`. Days without sessions are absent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionsAnswer {
    pub timezone: String,
    pub days: Vec<SessionDay>,
    /// Over the whole range (the median too, not a mean of daily medians).
    pub total: SessionStats,
}

/// Runs the request's sessions query and shapes the answer.
pub async fn run_sessions(
    client: &Client,
    request: &SessionsRequest,
) -> Result<SessionsAnswer, ReadError> {
    let sql = request.sql()?;
    let (rows, totals) = fetch_with_totals(client, &sql).await?;
    Ok(sessions_answer(request, &rows, totals.as_deref())?)
}

fn stats(cells: &[serde_json::Value]) -> Result<SessionStats, StoreError> {
    let [sessions, avg, median, pages] = cells else {
        return Err(StoreError::Unreadable(format!(
            "a sessions row of {} columns",
            cells.len() + 1
        )));
    };
    let sessions = cell_u64(sessions)?;
    if sessions == 0 {
        return Ok(SessionStats::default());
    }
    Ok(SessionStats {
        sessions,
        avg_duration_seconds: cell_f64_or_zero(avg)?,
        median_duration_seconds: cell_f64_or_zero(median)?,
        avg_pages_per_session: cell_f64_or_zero(pages)?,
    })
}

/// The answer from the rows of [`SessionsRequest::sql`].
pub fn sessions_answer(
    request: &SessionsRequest,
    rows: &[Vec<serde_json::Value>],
    totals: Option<&[serde_json::Value]>,
) -> Result<SessionsAnswer, StoreError> {
    let days = rows
        .iter()
        .map(|row| {
            let (day, rest) = row
                .split_first()
                .ok_or_else(|| StoreError::Unreadable("an empty row".into()))?;
            Ok(SessionDay {
                day: cell_text(day),
                stats: stats(rest)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let total = match totals {
        Some([_, rest @ ..]) => stats(rest)?,
        _ => SessionStats::default(),
    };
    Ok(SessionsAnswer {
        timezone: request.timezone.clone(),
        days,
        total,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rows_and_totals_become_days_and_total() {
        let request = SessionsRequest {
            project_id: "p".into(),
            since_ms: 0,
            until_ms: 86_400_000,
            timezone: "Asia/Tokyo".into(),
            filters: vec![],
        };
        let rows = vec![vec![
            json!("2026-11-22"),
            json!("3"),
            json!(3598.5),
            json!(1800),
            json!(1),
        ]];
        let totals = vec![
            json!("0000-00-00"),
            json!("3"),
            json!(3598.5),
            json!(1800),
            json!(1),
        ];
        let a = sessions_answer(&request, &rows, Some(&totals)).unwrap();
        assert_eq!(a.days[0].day, "2026-11-22");
        assert_eq!(a.days[0].stats.median_duration_seconds, 1800.0);
        assert_eq!(a.total.sessions, 3);
        let empty = vec![
            json!("0000-00-00"),
            json!("0"),
            json!(null),
            json!(0),
            json!(null),
        ];
        let a = sessions_answer(&request, &[], Some(&empty)).unwrap();
        assert_eq!(a.total, SessionStats::default());
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["total"]["sessions"], json!(0));
    }
}
