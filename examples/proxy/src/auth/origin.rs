//! Where a browser request comes from: `Sec-Fetch-Site`, `Origin` and, for
//! requests signed in with the review page's cookie, the proof a JSON content
//! type or the session's CSRF token gives.

use http::header::{CONTENT_TYPE, COOKIE, HOST, ORIGIN};
use http::HeaderMap;

use super::keys::equal;
use super::sessions::Session;

/// The value of cookie `name`.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the request says it comes from this proxy's own pages: `Ok(true)`
/// proven, `Ok(false)` no browser header says either way, `Err` another site.
pub(crate) fn origin_of(headers: &HeaderMap) -> Result<bool, &'static str> {
    let mut proven = false;
    if let Some(site) = headers.get("sec-fetch-site") {
        match site.as_bytes() {
            b"same-origin" => proven = true,
            b"none" => {}
            _ => return Err("cross-site request refused (Sec-Fetch-Site)"),
        }
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let host = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if host.is_empty() || origin_host != Some(host) {
            return Err("cross-origin request refused (Origin)");
        }
        proven = true;
    }
    Ok(proven)
}

pub(super) fn check_same_origin(
    headers: &HeaderMap,
    session: Option<&Session>,
) -> Result<(), &'static str> {
    let proven = origin_of(headers)?;
    let Some(session) = session else {
        return Ok(());
    };
    if !proven {
        return Err("a signed-in request must show it comes from this page (Origin)");
    }
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    let token_ok = headers
        .get("x-csrf-token")
        .is_some_and(|v| equal(v.as_bytes(), session.csrf_token.as_bytes()));
    if json || token_ok {
        Ok(())
    } else {
        Err("a signed-in request must be JSON or carry the x-csrf-token of its session")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn origins() {
        let host = ("host", "127.0.0.1:8080");
        assert_eq!(origin_of(&headers(&[host])), Ok(false));
        assert_eq!(
            origin_of(&headers(&[host, ("origin", "http://127.0.0.1:8080")])),
            Ok(true)
        );
        assert!(origin_of(&headers(&[host, ("origin", "http://127.0.0.1:9999")])).is_err());
        assert!(origin_of(&headers(&[host, ("origin", "null")])).is_err());
        assert!(origin_of(&headers(&[host, ("sec-fetch-site", "same-site")])).is_err());
        assert_eq!(
            origin_of(&headers(&[host, ("sec-fetch-site", "same-origin")])),
            Ok(true)
        );
    }

    #[test]
    fn sessions_need_proof_and_json_or_token() {
        let session = Session {
            admin_id: "a".into(),
            csrf_token: "t".repeat(64),
            expires_at: Instant::now(),
        };
        let origin = [("host", "h:1"), ("origin", "http://h:1")];
        assert!(check_same_origin(&headers(&origin), Some(&session)).is_err());
        let mut json = headers(&origin);
        json.insert(
            CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(check_same_origin(&json, Some(&session)).is_ok());
        let mut form = headers(&origin);
        form.insert(CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(check_same_origin(&form, Some(&session)).is_err());
        form.insert("x-csrf-token", session.csrf_token.parse().unwrap());
        assert!(check_same_origin(&form, Some(&session)).is_ok());
        // JSON without any origin proof: refused for a session, fine for a bearer key.
        let bare = headers(&[("host", "h:1"), ("content-type", "application/json")]);
        assert!(check_same_origin(&bare, Some(&session)).is_err());
        assert!(check_same_origin(&bare, None).is_ok());
    }
}
