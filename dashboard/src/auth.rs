//! Who may use the dashboard: on loopback anyone on this host (as with `hull` itself,
//! whose state roots are root's); on any other address only requests carrying the token,
//! as `?token=T` or `Authorization: Bearer T` (a browser's websocket cannot set headers, so
//! the page passes it in the query).

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

/// Middleware: with a token configured, a request without it gets 401.
pub async fn require_token(
    State(token): State<Arc<Option<Token>>>,
    req: Request,
    next: Next,
) -> Response {
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
