//! The HTTP server: the page (`/`), its assets (`/assets/*`, compiled into the binary), the
//! containers as JSON (`/api/containers`, which the page polls every 2 s) and the terminal
//! websocket (`/ws/terminal?root=R&id=ID`); every route behind the token check.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Router};

use crate::auth::{self, Token};
use crate::error::{Error, Result};
use crate::inventory::{Inventory, Snapshot};
use crate::options::Options;
use crate::terminal;

/// The page; `{{Q}}` becomes the token query (`?token=T`) or nothing.
const INDEX: &str = include_str!("../assets/index.html");

/// The files under `/assets/`: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript",
        include_bytes!("../assets/app.js"),
    ),
    (
        "xterm.js",
        "text/javascript",
        include_bytes!("../assets/xterm.js"),
    ),
    (
        "xterm.css",
        "text/css",
        include_bytes!("../assets/xterm.css"),
    ),
    (
        "addon-fit.js",
        "text/javascript",
        include_bytes!("../assets/addon-fit.js"),
    ),
    (
        "LICENSE-xterm",
        "text/plain; charset=utf-8",
        include_bytes!("../assets/LICENSE-xterm"),
    ),
];

#[derive(Clone)]
struct App {
    inventory: Arc<Inventory>,
    token: Option<Token>,
}

/// The dashboard's routes over `inventory`, requiring `token` when there is one.
pub fn router(inventory: Arc<Inventory>, token: Option<Token>) -> Router {
    let guard = Arc::new(token.clone());
    Router::new()
        .route("/", get(index))
        .route("/assets/{name}", get(asset))
        .route("/api/containers", get(containers))
        .route("/ws/terminal", get(open_terminal))
        .with_state(App { inventory, token })
        .layer(middleware::from_fn_with_state(guard, auth::require_token))
}

/// Serves the dashboard as `opts` say until SIGINT or SIGTERM; prints the address served
/// on (one line on stdout) once it listens.
pub async fn serve(opts: Options) -> Result<()> {
    let token = auth::check_listen(opts.listen, opts.token.as_deref())?;
    let hull = opts.hull_binary()?;
    let inventory = Arc::new(Inventory::new(
        hull,
        opts.roots.clone(),
        opts.containerd_root.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: opts.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(Error::Serve)?;
    println!("hull-dashboard: serving http://{local}/");
    tracing::info!(%local, token = token.is_some(), "serving");
    axum::serve(listener, router(inventory, token))
        .with_graceful_shutdown(stopped())
        .await
        .map_err(Error::Serve)
}

/// Resolves on SIGINT or SIGTERM.
async fn stopped() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("stopping");
}

async fn index(State(app): State<App>) -> Html<String> {
    let q = app
        .token
        .as_ref()
        .map(|t| format!("?token={}", t.as_str()))
        .unwrap_or_default();
    Html(INDEX.replace("{{Q}}", &q))
}

async fn asset(UrlPath(name): UrlPath<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, bytes)) => (
            [
                (header::CONTENT_TYPE, *kind),
                (header::CACHE_CONTROL, "max-age=3600"),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

async fn containers(State(app): State<App>) -> Response {
    let snap: Arc<Snapshot> = app.inventory.snapshot().await;
    match serde_json::to_vec(&*snap) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The terminal's query: which container.
#[derive(Debug, serde::Deserialize)]
struct TerminalQuery {
    root: PathBuf,
    id: String,
}

async fn open_terminal(
    State(app): State<App>,
    Query(q): Query<TerminalQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    // Only a container listed now, in a root shown: nothing else reaches `hull`'s argv.
    let found = app.inventory.find(&q.root, &q.id).await;
    let listed = match found {
        Ok(c) if c.status == "running" => c,
        Ok(c) => {
            return reply(Error::NotRunning {
                id: c.id,
                status: c.status,
            })
        }
        Err(e) => return reply(e),
    };
    let isolation = Inventory::isolation(&q.root, &listed.id);
    let cmd = terminal::shell_command(app.inventory.hull(), &q.root, &listed.id, isolation);
    let label = format!("{}:{}", q.root.display(), listed.id);
    ws.on_upgrade(move |socket| terminal::bridge(socket, cmd, label))
}

/// An error as an HTTP answer: its one line, with a status that fits.
fn reply(e: Error) -> Response {
    let status = match &e {
        Error::UnknownRoot(_) | Error::UnknownContainer { .. } => StatusCode::NOT_FOUND,
        Error::NotRunning { .. } => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    tracing::info!("{e}");
    (status, format!("{e}\n")).into_response()
}
