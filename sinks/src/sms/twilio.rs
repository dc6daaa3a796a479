//! The Twilio Messages API: one request per SMS, and what its answer means for the outbox.
//!
//! `POST {base_url}/2010-04-01/Accounts/{account_sid}/Messages.json` with HTTP basic auth
//! (account SID, auth token) and the form fields `To`, `From`, `Body`. A 2xx means Twilio took
//! the message; 429, 5xx and network errors are worth retrying; any other 4xx is a permanent
//! refusal (an invalid number, an unverified recipient on a trial account, bad credentials…)
//! that retrying would only repeat.

use std::fmt;
use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use reqwest::{StatusCode, Url};
use serde::Deserialize;

/// How long one request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The default API root.
pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";

/// Twilio account credentials and the sending number.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub account_sid: String,
    pub auth_token: String,
    /// The sender: a Twilio number in E.164 form (or an alphanumeric sender id where allowed).
    pub from: String,
}

impl Credentials {
    /// Reads `TWILIO_ACCOUNT_SID`, `TWILIO_AUTH_TOKEN` and `TWILIO_PHONE_NUMBER`; `None` if any of
    /// them is missing or blank (SMS then stay off).
    pub fn from_env() -> Option<Credentials> {
        Credentials::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`Credentials::from_env`], reading the variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Option<Credentials> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Some(Credentials {
            account_sid: get("TWILIO_ACCOUNT_SID")?,
            auth_token: get("TWILIO_AUTH_TOKEN")?,
            from: get("TWILIO_PHONE_NUMBER")?,
        })
    }
}

impl fmt::Debug for Credentials {
    // The token is a secret: it must never reach a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"<redacted>")
            .field("from", &self.from)
            .finish()
    }
}

/// What a send attempt means for the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Twilio accepted the message; `twilio_sid` is its id (`SM…`) when the answer had one.
    Sent { twilio_sid: Option<String> },
    /// Worth trying again later: 429, 5xx, a network error or a timeout. `retry_after` is the
    /// server's `Retry-After` (in seconds) when it sent one.
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Refused for good (any other 4xx): `reason` carries Twilio's error code and message.
    Rejected { status: u16, reason: String },
}

/// The part of a Twilio answer we use: `sid` on success, `code` and `message` on errors.
#[derive(Deserialize, Default)]
struct Answer {
    sid: Option<String>,
    code: Option<i64>,
    message: Option<String>,
}

/// A client of one Twilio account.
pub struct TwilioClient {
    http: reqwest::Client,
    messages_url: Url,
    credentials: Credentials,
}

impl TwilioClient {
    /// A client posting to `messages_url` (see [`messages_url`]).
    pub fn new(
        messages_url: Url,
        credentials: Credentials,
    ) -> Result<TwilioClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(TwilioClient {
            http,
            messages_url,
            credentials,
        })
    }

    /// Sends one SMS and classifies the answer. Never panics, never returns early without an
    /// outcome: every failure is one of the [`SendOutcome`] cases.
    pub async fn send(&self, to: &str, body: &str) -> SendOutcome {
        let request = self
            .http
            .post(self.messages_url.clone())
            .basic_auth(
                &self.credentials.account_sid,
                Some(&self.credentials.auth_token),
            )
            .form(&[
                ("To", to),
                ("From", self.credentials.from.as_str()),
                ("Body", body),
            ]);
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                return SendOutcome::Retryable {
                    reason: describe(&e),
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // A 2xx whose body cannot be read is still a sent message: resending it would deliver it
        // twice.
        let text = response.text().await.unwrap_or_default();
        let answer: Answer = serde_json::from_str(&text).unwrap_or_default();
        if status.is_success() {
            return SendOutcome::Sent {
                twilio_sid: answer.sid,
            };
        }
        let reason = error_reason(status, &answer, &text);
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            SendOutcome::Retryable {
                reason,
                retry_after,
            }
        } else if status.is_client_error() {
            SendOutcome::Rejected {
                status: status.as_u16(),
                reason,
            }
        } else {
            // 1xx/3xx: not something the Messages API answers; maybe a misbehaving proxy.
            SendOutcome::Retryable {
                reason,
                retry_after,
            }
        }
    }
}

/// `{base_url}/2010-04-01/Accounts/{account_sid}/Messages.json`, the SID percent-encoded.
/// `base_url` may have a path prefix (a proxy); it must be an absolute http(s) URL.
pub fn messages_url(base_url: &str, account_sid: &str) -> Result<Url, String> {
    let mut url =
        Url::parse(base_url).map_err(|e| format!("invalid Twilio base URL {base_url:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("invalid Twilio base URL {base_url:?}: not http(s)"));
    }
    url.path_segments_mut()
        .map_err(|()| format!("invalid Twilio base URL {base_url:?}"))?
        .pop_if_empty()
        .extend(["2010-04-01", "Accounts", account_sid, "Messages.json"]);
    Ok(url)
}

fn error_reason(status: StatusCode, answer: &Answer, text: &str) -> String {
    match (&answer.code, &answer.message) {
        (Some(code), Some(message)) => format!("HTTP {status}, Twilio error {code}: {message}"),
        (None, Some(message)) => format!("HTTP {status}: {message}"),
        (Some(code), None) => format!("HTTP {status}, Twilio error {code}"),
        (None, None) if text.trim().is_empty() => format!("HTTP {status}"),
        (None, None) => {
            let snippet: String = text.trim().chars().take(200).collect();
            format!("HTTP {status}: {snippet}")
        }
    }
}

/// A reqwest error with its causes: "error sending request" alone says nothing.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_three_variables() {
        let env = |name: &str| {
            Some(
                match name {
                    "TWILIO_ACCOUNT_SID" => "AC123",
                    "TWILIO_AUTH_TOKEN" => " secret-token ",
                    "TWILIO_PHONE_NUMBER" => "+15005550006",
                    _ => return None,
                }
                .to_string(),
            )
        };
        let credentials = Credentials::from_lookup(env).unwrap();
        assert_eq!(credentials.auth_token, "secret-token");
        let debug = format!("{credentials:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert!(
            debug.contains("AC123") && debug.contains("+15005550006"),
            "{debug}"
        );

        for missing in [
            "TWILIO_ACCOUNT_SID",
            "TWILIO_AUTH_TOKEN",
            "TWILIO_PHONE_NUMBER",
        ] {
            assert!(
                Credentials::from_lookup(|n| if n == missing { None } else { env(n) }).is_none()
            );
            let blank = |n: &str| {
                if n == missing {
                    Some("  ".to_string())
                } else {
                    env(n)
                }
            };
            assert!(Credentials::from_lookup(blank).is_none());
        }
    }

    #[test]
    fn the_messages_url() {
        assert_eq!(
            messages_url("https://api.twilio.com", "AC1")
                .unwrap()
                .as_str(),
            "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json"
        );
        assert_eq!(
            messages_url("http://127.0.0.1:4000/proxy/", "AC 1/x")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:4000/proxy/2010-04-01/Accounts/AC%201%2Fx/Messages.json"
        );
        assert!(messages_url("api.twilio.com", "AC1").is_err());
        assert!(messages_url("mailto:x@y", "AC1").is_err());
    }
}
