//! A [`ReconcileReport`] in words: the gaps, and the human report `spoor
//! reconcile` prints (`--json` prints the report itself).

use super::ReconcileReport;

impl ReconcileReport {
    /// Every accepted event is stored exactly once or deduped, and every
    /// frame decoded, was dead-lettered, or was replayed.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.duplicated.is_empty() && self.undecodable.is_empty()
    }

    /// The gaps in words, one per line; empty when exact.
    pub fn gaps(&self) -> Vec<String> {
        let mut gaps = Vec::new();
        if !self.missing.is_empty() {
            gaps.push(format!(
                "{} accepted event(s) missing from ClickHouse",
                self.missing.len()
            ));
        }
        if !self.duplicated.is_empty() {
            let extra: u64 = self.duplicated.iter().map(|d| d.rows - 1).sum();
            gaps.push(format!(
                "{} event id(s) stored more than once ({extra} extra row(s))",
                self.duplicated.len()
            ));
        }
        if !self.undecodable.is_empty() {
            gaps.push(format!(
                "{} undecodable frame(s) without a dead letter",
                self.undecodable.len()
            ));
        }
        gaps
    }

    /// The human report; lists at most `list_limit` ids per kind.
    pub fn render(&self, list_limit: usize) -> String {
        let mut o = String::new();
        let project = self.project.as_deref().unwrap_or("all projects");
        o.push_str(&format!(
            "window   {} .. {}  stream {}  ({project})\n",
            self.since, self.until, self.stream
        ));
        o.push_str(&format!(
            "frames   {} in window = {} decoded + {} dead-lettered + {} replayed",
            self.frames, self.frames_decoded, self.dead_lettered_frames, self.replayed_frames
        ));
        if self.other_project_frames > 0 {
            o.push_str(&format!(" + {} other projects", self.other_project_frames));
        }
        if !self.undecodable.is_empty() {
            o.push_str(&format!(" + {} UNDECODABLE", self.undecodable.len()));
        }
        o.push('\n');
        o.push_str(&format!(
            "events   accepted {} = inserted {} + deduped {} + dead-lettered ({} frame(s), {} bytes, events unknown)",
            self.accepted_events,
            self.inserted,
            self.deduped,
            self.dead_lettered_frames,
            self.dead_lettered_bytes
        ));
        if self.dead_lettered_events > 0 {
            o.push_str(&format!(
                " + dead-lettered rows {}",
                self.dead_lettered_events
            ));
        }
        if !self.missing.is_empty() {
            o.push_str(&format!(" + MISSING {}", self.missing.len()));
        }
        o.push('\n');
        if !self.dead_lettered_by_reason.is_empty() || self.dead_lettered_events > 0 {
            let reasons: Vec<String> = self
                .dead_lettered_by_reason
                .iter()
                .map(|(r, n)| format!("{r}={n}"))
                .chain(
                    self.dead_lettered_events_by_reason
                        .iter()
                        .map(|(r, n)| format!("{r}={n} rows")),
                )
                .collect();
            o.push_str(&format!("dead     {}\n", reasons.join(" ")));
        }
        o.push_str(&format!(
            "stored   count() {} rows, uniqExact(event_id) {} for the window's {} unique ids\n",
            self.stored_rows, self.inserted, self.unique_events
        ));
        for r in &self.relays {
            o.push_str(&format!(
                "relay    {} (counters since process start, not windowed): received {} frames / {} events, deduped {}, inserted {}, dead-lettered {}\n",
                r.url, r.messages_received, r.events_received, r.events_deduped, r.rows_inserted, r.dead_lettered
            ));
        }
        if !self.missing.is_empty() {
            o.push_str(&format!(
                "missing  {} event(s){}:\n",
                self.missing.len(),
                limit_note(self.missing.len(), list_limit)
            ));
            for m in self.missing.iter().take(list_limit) {
                o.push_str(&format!(
                    "  {}  project {}  date {}  frame seq {}\n",
                    m.event_id, m.project_id, m.event_date, m.stream_seq
                ));
            }
        }
        if !self.duplicated.is_empty() {
            o.push_str(&format!(
                "duplicated {} id(s){}:\n",
                self.duplicated.len(),
                limit_note(self.duplicated.len(), list_limit)
            ));
            for d in self.duplicated.iter().take(list_limit) {
                o.push_str(&format!(
                    "  {}  project {}  {} rows\n",
                    d.event_id, d.project_id, d.rows
                ));
            }
        }
        for u in self.undecodable.iter().take(list_limit) {
            o.push_str(&format!(
                "undecodable frame seq {} ({}): {} and no dead letter\n",
                u.stream_seq, u.reason, u.detail
            ));
        }
        match self.gaps().as_slice() {
            [] => o.push_str("result   EXACT\n"),
            gaps => o.push_str(&format!("result   GAP: {}\n", gaps.join("; "))),
        }
        o
    }
}

fn limit_note(len: usize, limit: usize) -> String {
    if len > limit {
        format!(" (first {limit})")
    } else {
        String::new()
    }
}
