//! Audit events (SPEC §6). They go to the `audit` log target, which the pipeline writes to
//! `logs/audit.log`; the event name is the message, the details are fields.

use super::AuthError;

/// Where a refused or authenticated access came from.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessContext<'a> {
    /// MQTT or Kafka topic, or HTTP/WebSocket path.
    pub resource: &'a str,
    /// Client address (and MQTT client id when known).
    pub source: &'a str,
    pub request_id: &'a str,
    /// The user, when the token could be read.
    pub user: Option<&'a str>,
}

/// A refused record, connection or request: one line per refusal.
pub fn unauthorized(error: &AuthError, context: AccessContext) {
    tracing::warn!(
        target: "audit",
        reason = error.code.as_str(),
        user = context.user.unwrap_or("-"),
        resource = context.resource,
        source = context.source,
        request_id = context.request_id,
        detail = %error.message,
        "UNAUTHORIZED_ACCESS"
    );
}

/// A WebSocket client without a token was asked for one.
pub fn auth_required(context: AccessContext) {
    tracing::info!(
        target: "audit",
        resource = context.resource,
        source = context.source,
        request_id = context.request_id,
        "AUTH_REQUIRED"
    );
}

/// A connection or request was authenticated.
pub fn authenticated(context: AccessContext) {
    tracing::info!(
        target: "audit",
        user = context.user.unwrap_or("-"),
        resource = context.resource,
        source = context.source,
        request_id = context.request_id,
        "AUTHENTICATED_REQUEST"
    );
}

/// A change made on behalf of a user outside the record streams (acknowledging an alert…).
pub fn data_mutation(what: &str, context: AccessContext) {
    tracing::info!(
        target: "audit",
        user = context.user.unwrap_or("-"),
        resource = context.resource,
        source = context.source,
        request_id = context.request_id,
        what,
        "DATA_MUTATION"
    );
}
