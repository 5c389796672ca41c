//! The read-only web dashboard: one HTML page and one script, served with the metrics on the
//! coordinator's HTTP listener (see [`crate::http::serve`]), and the JSON they read.
//!
//! The page and script are static and hold no data; `GET /api/jobs` returns the [`Board`]
//! (jobs, their rounds' AUC, loss, ε and participants) and the audit chain head, and only to a
//! request carrying the admin token (`Authorization: Bearer …`). The script takes the token
//! from the address's fragment (`/dashboard#token=…`), which browsers never send to a server,
//! so the token does not end up in access logs or proxies. Under mutual TLS the listener
//! also asks every dashboard path ([`Dashboard::is_path`]) for an administrator's client
//! certificate before it gets here (see [`crate::http`]).

use serde_json::json;

use crate::board::Board;
use crate::store::Store;
use crate::token::AdminToken;

const PAGE: &str = include_str!("../assets/dashboard.html");
const SCRIPT: &str = include_str!("../assets/dashboard.js");

/// What the dashboard shows and who may see it.
#[derive(Debug, Clone)]
pub struct Dashboard {
    /// The live jobs.
    pub board: Board,
    /// For the audit chain head.
    pub store: Store,
    /// The admin credential.
    pub token: AdminToken,
}

/// An HTTP answer: status line, content type, body.
pub type Answer = (&'static str, &'static str, String);

impl Dashboard {
    /// Whether `path` is one of the dashboard's: the page, its script or its API.
    pub fn is_path(path: &str) -> bool {
        matches!(path, "/" | "/dashboard" | "/dashboard.js" | "/api/jobs")
    }

    /// Answers a GET of `path` with the request's `Authorization` header value, or None when
    /// the path is not the dashboard's.
    pub fn route(&self, path: &str, authorization: Option<&str>) -> Option<Answer> {
        match path {
            "/" | "/dashboard" => Some(("200 OK", "text/html; charset=utf-8", PAGE.to_owned())),
            "/dashboard.js" => Some((
                "200 OK",
                "text/javascript; charset=utf-8",
                SCRIPT.to_owned(),
            )),
            "/api/jobs" => {
                let presented = authorization.and_then(|v| v.trim().strip_prefix("Bearer "));
                if !presented.is_some_and(|t| self.token.verify(t)) {
                    return Some((
                        "401 Unauthorized",
                        "application/json",
                        json!({"error": "the dashboard API needs `Authorization: Bearer <admin token>`"})
                            .to_string(),
                    ));
                }
                let body = json!({
                    "jobs": self.board.list(),
                    "audit_head": self.store.audit_head(),
                });
                Some(("200 OK", "application/json", body.to_string()))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_needs_the_token_and_the_page_does_not() {
        let store = Store::in_memory().unwrap_or_else(|e| panic!("{e}"));
        let d = Dashboard {
            board: Board::default(),
            store,
            token: AdminToken::from_secret("abc"),
        };
        assert_eq!(d.route("/dashboard", None).map(|a| a.0), Some("200 OK"));
        assert!(
            d.route("/dashboard.js", None)
                .is_some_and(|a| a.2.contains("/api/jobs"))
        );
        assert_eq!(
            d.route("/api/jobs", None).map(|a| a.0),
            Some("401 Unauthorized")
        );
        assert_eq!(
            d.route("/api/jobs", Some("Bearer abd")).map(|a| a.0),
            Some("401 Unauthorized")
        );
        let ok = d.route("/api/jobs", Some("Bearer abc"));
        assert_eq!(ok.as_ref().map(|a| a.0), Some("200 OK"));
        let v: serde_json::Value =
            serde_json::from_str(&ok.map(|a| a.2).unwrap_or_default()).unwrap_or_default();
        assert!(v["jobs"].as_array().is_some_and(Vec::is_empty));
        assert!(v["audit_head"].is_string());
        assert!(d.route("/metrics", None).is_none());
        // `is_path` names exactly the paths `route` answers.
        for path in [
            "/",
            "/dashboard",
            "/dashboard.js",
            "/api/jobs",
            "/metrics",
            "/healthz",
            "/api",
            "/dashboard/",
        ] {
            assert_eq!(
                Dashboard::is_path(path),
                d.route(path, None).is_some(),
                "{path}"
            );
        }
    }
}
