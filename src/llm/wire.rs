//! The HTTP exchange every provider client shares: post a JSON body, read
//! the answer, and map anything but a 2xx to its fault class, reading the
//! provider's wait hints from its headers.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;

use super::{LlmError, clip_provider_message};

/// Posts `body` and returns the text of a 2xx answer, or the fault.
pub(crate) async fn post_json(
    http: &reqwest::Client,
    url: &str,
    attempt_id: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<String, LlmError> {
    let response = http
        .post(url)
        .header("x-kiln-attempt-id", attempt_id)
        .json(body)
        .send()
        .await
        .map_err(|e| transport_error(&e, timeout))?;
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.map_err(|e| transport_error(&e, timeout))?;
    if !status.is_success() {
        return Err(classify_status(status, &headers, &text));
    }
    Ok(text)
}

/// Parses a 2xx body; one that is not the protocol's JSON is a provider fault.
pub(crate) fn parse_body<T: DeserializeOwned>(text: &str) -> Result<T, LlmError> {
    serde_json::from_str(text)
        .map_err(|e| LlmError::MalformedBody(format!("{e}; body starts {:?}", crate::text::head(text, 120))))
}

/// Maps a reqwest error to its fault class.
pub(crate) fn transport_error(e: &reqwest::Error, timeout: Duration) -> LlmError {
    if e.is_timeout() {
        LlmError::Timeout(timeout)
    } else {
        LlmError::Transport(crate::telemetry::error_chain(e))
    }
}

/// Maps a non-2xx answer to its fault class.
pub(crate) fn classify_status(status: StatusCode, headers: &HeaderMap, body: &str) -> LlmError {
    let message = clip_provider_message(body);
    let lower = body.to_ascii_lowercase();
    let code = status.as_u16();
    let billing = lower.contains("insufficient_quota")
        || lower.contains("billing")
        || lower.contains("credit balance")
        || lower.contains("exceeded your current quota");
    match code {
        402 => LlmError::Quota { status: code, message },
        400 | 429 if billing => LlmError::Quota { status: code, message },
        429 => LlmError::RateLimited {
            retry_after: retry_after(headers),
        },
        401 | 403 => LlmError::Auth { status: code, message },
        408 => LlmError::Timeout(Duration::ZERO),
        409 | 425 | 500..=599 => LlmError::Unavailable { status: code, message },
        _ => LlmError::Rejected { status: code, message },
    }
}

/// Longest wait read from a provider's headers. The pipeline cuts waits to
/// its own (smaller) `KILN_LLM_MAX_WAIT_S`; this bound only keeps every
/// figure a header can hold (`1e300`, a date in year 9999) a valid
/// [`Duration`] that a timer can add to now.
pub(crate) const MAX_PROVIDER_WAIT: Duration = Duration::from_secs(24 * 3600);

/// A provider's wait in seconds as a [`Duration`]: negative is no wait,
/// more than [`MAX_PROVIDER_WAIT`] is that, NaN is no answer.
fn wait_secs(secs: f64) -> Option<Duration> {
    if secs.is_nan() {
        return None;
    }
    Some(Duration::from_secs_f64(
        secs.clamp(0.0, MAX_PROVIDER_WAIT.as_secs_f64()),
    ))
}

/// How long the provider asks us to wait, from the headers providers use:
/// `retry-after-ms`, `retry-after` (seconds or an HTTP date) and
/// `x-ratelimit-reset-requests` / `-tokens` (`1s`, `6m0s`, `20ms`), at most
/// [`MAX_PROVIDER_WAIT`].
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(wait) = get("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|ms| wait_secs(ms / 1000.0))
    {
        return Some(wait);
    }
    if let Some(v) = get("retry-after") {
        if let Some(wait) = v.parse::<f64>().ok().and_then(wait_secs) {
            return Some(wait);
        }
        if let Ok(when) = chrono::DateTime::parse_from_rfc2822(v) {
            let wait = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
            return wait_secs(wait.as_seconds_f64());
        }
    }
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .into_iter()
        .filter_map(|h| get(h).and_then(parse_go_duration))
        .max()
}

/// Parses durations like `1s`, `6m0s`, `20ms`, `1h2m3.5s`.
fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut total = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(split);
        let value: f64 = number.parse().ok()?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        total += value
            * match unit {
                "h" => 3600.0,
                "m" => 60.0,
                "s" => 1.0,
                "ms" => 0.001,
                "us" | "µs" => 0.000_001,
                "ns" => 0.000_000_001,
                _ => return None,
            };
        rest = next;
    }
    wait_secs(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_is_read_from_every_header_providers_use() {
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "1500")])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "3")])),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&headers(&[
                ("x-ratelimit-reset-requests", "6m0s"),
                ("x-ratelimit-reset-tokens", "20ms")
            ])),
            Some(Duration::from_mins(6))
        );
        assert_eq!(retry_after(&headers(&[])), None);
    }

    #[test]
    fn absurd_provider_waits_are_clamped_not_a_panic() {
        for (header, value) in [
            ("retry-after", "1e300"),
            ("retry-after", "inf"),
            ("retry-after-ms", "1e308"),
            ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT"),
            ("x-ratelimit-reset-requests", "99999999999999999999h"),
        ] {
            assert_eq!(
                retry_after(&headers(&[(header, value)])),
                Some(MAX_PROVIDER_WAIT),
                "{header}: {value}"
            );
        }
        for (header, value) in [("retry-after", "-5"), ("retry-after", "-inf")] {
            assert_eq!(
                retry_after(&headers(&[(header, value)])),
                Some(Duration::ZERO),
                "{value}"
            );
        }
        assert_eq!(retry_after(&headers(&[("retry-after", "NaN")])), None);
    }

    #[test]
    fn quota_errors_are_told_apart_from_rate_limits() {
        let quota = r#"{"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}}"#;
        assert!(matches!(
            classify_status(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), quota),
            LlmError::Quota { status: 429, .. }
        ));
        assert!(matches!(
            classify_status(StatusCode::TOO_MANY_REQUESTS, &headers(&[("retry-after", "1")]), "{}"),
            LlmError::RateLimited { retry_after: Some(_) }
        ));
        assert!(matches!(
            classify_status(StatusCode::from_u16(529).unwrap(), &HeaderMap::new(), "overloaded"),
            LlmError::Unavailable { status: 529, .. }
        ));
        assert!(matches!(
            classify_status(StatusCode::UNAUTHORIZED, &HeaderMap::new(), "{}"),
            LlmError::Auth { status: 401, .. }
        ));
    }
}
