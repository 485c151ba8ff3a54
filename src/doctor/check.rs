//! One line of the checklist: which server, what was checked, the verdict, and the fix.

use serde::Serialize;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Not checked, and why (a check it depends on failed, or checking would disturb a running
    /// relay, or the question has no answer without writing).
    Skip,
    /// Fine.
    Ok,
    /// The relay works, but something will bite (unbounded WAL, replication factor 1, ...).
    Warn,
    /// The relay will not work (or will stop) until this is fixed.
    Fail,
}

impl Status {
    /// The word in the text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Skip => "skip",
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// Which server a check asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Server {
    /// Postgres.
    Postgres,
    /// Kafka.
    Kafka,
}

/// One line of the checklist.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The server asked.
    pub server: Server,
    /// Stable name of the check (`wal_level`, `topic`, ...), for scripts.
    pub check: &'static str,
    /// What it was checked on, when the check runs on several things (a topic's name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about a warn or fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(server: Server, check: &'static str, status: Status, detail: String) -> Self {
        Self {
            server,
            check,
            subject: None,
            status,
            detail,
            fix: None,
        }
    }

    /// A passed check.
    pub fn ok(server: Server, check: &'static str, detail: impl Into<String>) -> Self {
        Self::new(server, check, Status::Ok, detail.into())
    }

    /// A warning, with its fix.
    pub fn warn(
        server: Server,
        check: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(server, check, Status::Warn, detail.into()).fix(fix)
    }

    /// A failure, with its fix.
    pub fn fail(
        server: Server,
        check: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(server, check, Status::Fail, detail.into()).fix(fix)
    }

    /// A check not made, and why.
    pub fn skip(server: Server, check: &'static str, why: impl Into<String>) -> Self {
        Self::new(server, check, Status::Skip, why.into())
    }

    /// Names what the check ran on.
    pub fn on(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }

    /// The label in the text form: `topic "t.booking"`, `wal_level`.
    pub fn label(&self) -> String {
        match &self.subject {
            Some(s) => format!("{} {s:?}", self.check),
            None => self.check.to_string(),
        }
    }
}

/// Several findings about one thing, folded into one line: the worst status wins, details and
/// fixes are joined.
#[derive(Debug, Default)]
pub struct Findings {
    status: Option<Status>,
    details: Vec<String>,
    fixes: Vec<String>,
}

impl Findings {
    /// Adds a finding (`fix` for warn and fail).
    pub fn add(&mut self, status: Status, detail: impl Into<String>, fix: Option<String>) {
        self.status = Some(self.status.map_or(status, |s| s.max(status)));
        self.details.push(detail.into());
        self.fixes.extend(fix);
    }

    /// The line: `ok_detail` when nothing was added.
    pub fn into_check(self, server: Server, check: &'static str, ok_detail: String) -> Check {
        let status = self.status.unwrap_or(Status::Ok);
        let detail = if self.details.is_empty() {
            ok_detail
        } else {
            self.details.join("; ")
        };
        let mut c = Check::new(server, check, status, detail);
        if !self.fixes.is_empty() {
            c.fix = Some(self.fixes.join("; "));
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_finding_decides_and_fixes_are_joined() {
        let mut f = Findings::default();
        f.add(Status::Ok, "covers the table", None);
        f.add(Status::Warn, "publishes update", Some("SET publish".into()));
        f.add(Status::Fail, "no inserts", Some("publish insert".into()));
        let c = f.into_check(Server::Postgres, "publication", "fine".into());
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.detail, "covers the table; publishes update; no inserts");
        assert_eq!(c.fix.as_deref(), Some("SET publish; publish insert"));
        let ok = Findings::default().into_check(Server::Kafka, "x", "fine".into());
        assert_eq!(
            (ok.status, ok.detail.as_str(), ok.fix),
            (Status::Ok, "fine", None)
        );
        assert_eq!(
            Check::ok(Server::Kafka, "topic", "x").on("t.a").label(),
            "topic \"t.a\""
        );
    }
}
