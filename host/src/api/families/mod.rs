//! The five event families of the seed documents, side by side: generic
//! events and IAM (documents 002 and 001, FastAPI-shaped), session audit
//! (000), audit logs (003, google.rpc) and logs (004). Each handler parses
//! its family's body into canonical inputs and answers in its family's
//! shape; what they share (keys, events' ids, the chain run under the
//! family's [`Policy`], the commit, the metrics) is [`crate::ingest`]'s
//! one path. What differs between them is one [`Family`] implementation
//! each.

pub mod auditlogs;
pub mod generic;
pub mod iam;
pub mod logs;
pub mod session_audit;

use serde_json::Value;

use super::dialect::{Dialect, In};
use super::ApiError;
use crate::auth::Principal;
use crate::event::Event;
use crate::ingest::{Policy, Rules};

/// What one family is, beside its handler.
pub trait Family {
    /// Its events' `family` column.
    const NAME: &'static str;
    /// The scopes of which a token needs one to write its events.
    const SCOPES: &'static [&'static str];
    /// What it keeps when some of a request's events are rejected.
    const POLICY: Policy;
    /// Whether an item carrying its own `id` is deduplicated by it.
    const BY_EVENT_ID: bool;
    /// How its requests go through [`crate::ingest`].
    const RULES: Rules = Rules { family: Self::NAME, policy: Self::POLICY, by_event_id: Self::BY_EVENT_ID };
    /// How it answers errors.
    type Dialect: Dialect;

    /// The canonical events of one stored raw input, as its handler made
    /// them (shadow runs compare a candidate on them; `None`: the input is
    /// no longer valid).
    fn renormalize(space: &str, raw: &Value, now: i64) -> Option<Vec<Event>>;

    /// Whether the caller's token may write this family's events (403).
    fn permits(principal: &Principal) -> Result<(), ApiError> {
        if Self::SCOPES.iter().any(|s| principal.has(s)) {
            return Ok(());
        }
        let message = match Self::SCOPES {
            [one] => format!("token does not have the required scope: {one}"),
            some => format!("requires one of: {}", some.join(", ")),
        };
        Err(ApiError::Forbidden(message))
    }

    /// The caller, if its token may write this family's events.
    fn authorize(principal: Result<Principal, ApiError>) -> Result<Principal, In<Self::Dialect>> {
        let principal = principal?;
        Self::permits(&principal)?;
        Ok(principal)
    }
}

/// The five families' re-normalizers, by name.
const RENORMALIZERS: [(&str, fn(&str, &Value, i64) -> Option<Vec<Event>>); 5] = [
    (generic::Generic::NAME, generic::Generic::renormalize),
    (iam::Iam::NAME, iam::Iam::renormalize),
    (session_audit::SessionAudit::NAME, session_audit::SessionAudit::renormalize),
    (auditlogs::AuditLog::NAME, auditlogs::AuditLog::renormalize),
    (logs::Logs::NAME, logs::Logs::renormalize),
];

/// The canonical events of a stored raw input of family `family`.
pub fn renormalize(family: &str, space: &str, raw: &Value, now: i64) -> Option<Vec<Event>> {
    RENORMALIZERS.iter().find(|(name, _)| *name == family).and_then(|(_, f)| f(space, raw, now))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn each_family_renormalizes_its_own_raw_inputs_by_name() {
        let inputs = [
            (generic::Generic::NAME, json!({"event_type": "login", "event_payload": {"a": 1}})),
            (iam::Iam::NAME, json!({"name": "account.created", "payload": {}})),
            (
                session_audit::SessionAudit::NAME,
                json!({"event_name": "join", "session_id": "s", "players": [
                "00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"]}),
            ),
            (auditlogs::AuditLog::NAME, json!({"source": "s", "action": "a"})),
            (logs::Logs::NAME, json!({"level": "info", "message": "m"})),
        ];
        for (family, raw) in &inputs {
            let events = renormalize(family, "t", raw, 0).unwrap_or_else(|| panic!("{family}: {raw}"));
            assert!(events.iter().all(|e| e.family == *family && e.tenant == "t"), "{family}: {events:?}");
        }
        let players = renormalize(session_audit::SessionAudit::NAME, "t", &inputs[2].1, 0).unwrap();
        assert_eq!(players.len(), 2, "a fan-out is one event per player");
        assert!(renormalize("no-such-family", "t", &inputs[0].1, 0).is_none());
        assert!(renormalize(logs::Logs::NAME, "t", &json!({"level": "loud"}), 0).is_none(), "no longer valid");
    }

    #[test]
    fn a_family_checks_its_scopes_in_its_own_dialect() {
        let principal = |scopes: &[&str]| Principal {
            tenant: "t".into(),
            token_name: "t".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            mode: "live".into(),
        };
        assert!(logs::Logs::authorize(Ok(principal(&["logs:write"]))).is_ok());
        let refused = logs::Logs::authorize(Ok(principal(&["events:write"]))).err().unwrap();
        assert!(matches!(refused.0, ApiError::Forbidden(_)));
        assert!(session_audit::SessionAudit::authorize(Ok(principal(&["session:*"]))).is_ok());
        assert!(matches!(
            auditlogs::AuditLog::authorize(Err(ApiError::Unauthorized)).err().unwrap().0,
            ApiError::Unauthorized
        ));
    }
}
