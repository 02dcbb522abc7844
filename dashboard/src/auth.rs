//! Who may use the dashboard: on loopback anyone on this host (as with `hull` itself,
//! whose state roots are root's); on any other address only requests carrying the token,
//! as `?token=T` or `Authorization: Bearer T` (a browser's websocket cannot set headers, so
//! the page passes it in the query).
//!
//! Other sites' pages in a browser on this host are kept out too: without a token a
//! request must name a loopback host (`Host: localhost:P`, `127.0.0.1:P`, `[::1]:P`), so a
//! site whose name was made to resolve to 127.0.0.1 (DNS rebinding) is refused; and a
//! browser's request that says where it comes from (`Origin`) must come from this server's
//! own page, so another site cannot open a terminal websocket (browsers apply no
//! same-origin rule to websockets).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{Error, Result};

/// A token requests must carry.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token: non-empty, of URL-safe characters only (it travels in URLs unescaped and
    /// is echoed into the page's asset links).
    pub fn new(text: &str) -> Result<Self> {
        if text.is_empty() {
            return Err(Error::BadToken("empty".into()));
        }
        if let Some(c) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-._~".contains(*c)))
        {
            return Err(Error::BadToken(format!(
                "{c:?} is not allowed: use letters, digits and -._~ only"
            )));
        }
        Ok(Token(text.to_string()))
    }

    /// The token's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this token, in time independent of where they differ.
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// The token the server requires, after the listen policy: a non-loopback `addr` without
/// a token is refused.
pub fn check_listen(addr: SocketAddr, token: Option<&str>) -> Result<Option<Token>> {
    let token = token.map(Token::new).transpose()?;
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(Error::TokenRequired(addr));
    }
    Ok(token)
}

/// The token a request carries: its `token` query parameter, else a bearer token.
pub fn request_token(req: &Request) -> Option<&str> {
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .filter(|t| !t.is_empty())
    });
    from_query.or_else(|| {
        req.headers()
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")
            .map(str::trim)
    })
}

/// Why a request does not come from this server's own page, if it does not (see the
/// module doc); `tokenless`: the server has no token.
pub fn foreign_site(req: &Request, tokenless: bool) -> Option<&'static str> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let host = header(header::HOST).unwrap_or("");
    if tokenless && !is_loopback_host(host) {
        return Some("without a token, requests must name a loopback host (localhost, 127.0.0.1)");
    }
    if let Some(origin) = header(header::ORIGIN) {
        let from = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if from != Some(host) {
            return Some("the request comes from another site's page");
        }
    }
    None
}

/// Whether `host` (a Host header: name or address, and maybe a port) is loopback.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Middleware: a request from another site's page gets 403; with a token configured, a
/// request without it gets 401.
pub async fn require_token(
    State(token): State<Arc<Option<Token>>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(why) = foreign_site(&req, token.is_none()) {
        tracing::info!(path = %req.uri().path(), "refused: {why}");
        return (StatusCode::FORBIDDEN, format!("403: {why}\n")).into_response();
    }
    if let Some(t) = token.as_ref() {
        if !request_token(&req).is_some_and(|given| t.matches(given)) {
            tracing::info!(path = %req.uri().path(), "refused: no valid token");
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "401: this dashboard needs its token (?token=T or Authorization: Bearer T)\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_needs_no_token_elsewhere_one_is_required() {
        assert!(check_listen("127.0.0.1:8930".parse().unwrap(), None)
            .unwrap()
            .is_none());
        assert!(check_listen("[::1]:8930".parse().unwrap(), None)
            .unwrap()
            .is_none());
        let e = check_listen("0.0.0.0:8930".parse().unwrap(), None).unwrap_err();
        assert!(matches!(e, Error::TokenRequired(_)), "{e}");
        assert!(
            check_listen("0.0.0.0:8930".parse().unwrap(), Some("s3cret"))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn tokens_are_url_safe_and_compared_whole() {
        assert!(Token::new("").is_err());
        assert!(Token::new("a\"b").is_err());
        assert!(Token::new("a&b").is_err());
        let t = Token::new("Ab-1._~").unwrap();
        assert!(t.matches("Ab-1._~"));
        assert!(!t.matches("Ab-1._"));
        assert!(!t.matches("Ab-1._~x"));
        assert!(!t.matches("ab-1._~"));
    }

    fn request(host: &str, origin: Option<&str>) -> Request {
        let mut b = Request::builder().uri("/ws/terminal").header("host", host);
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn other_sites_pages_are_refused() {
        // Loopback names, with or without a token, from our own page or no page.
        for host in [
            "127.0.0.1:8930",
            "localhost:8930",
            "[::1]:8930",
            "localhost",
        ] {
            assert_eq!(foreign_site(&request(host, None), true), None, "{host}");
            let own = format!("http://{host}");
            assert_eq!(
                foreign_site(&request(host, Some(&own)), true),
                None,
                "{host}"
            );
        }
        // DNS rebinding: another name for 127.0.0.1, with no token to stop it.
        let rebound = request("evil.example:8930", Some("http://evil.example:8930"));
        assert!(foreign_site(&rebound, true).is_some());
        // With a token any name will do (the token decides), but not another site's page.
        assert_eq!(foreign_site(&request("dash.lan:8930", None), false), None);
        let hijack = request("127.0.0.1:8930", Some("https://evil.example"));
        assert!(foreign_site(&hijack, true).is_some());
        assert!(foreign_site(&hijack, false).is_some());
        let null = request("127.0.0.1:8930", Some("null"));
        assert!(foreign_site(&null, true).is_some());
    }

    #[test]
    fn token_from_query_or_bearer_header() {
        let r = Request::builder()
            .uri("/api/containers?x=1&token=abc")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(request_token(&r), Some("abc"));
        let r = Request::builder()
            .uri("/")
            .header("authorization", "Bearer xyz")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(request_token(&r), Some("xyz"));
        let r = Request::builder()
            .uri("/?token=")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(request_token(&r), None);
    }
}
