//! The demo receiver (`gateway run --demo`): a stand-in for the cloud on `upstream.url`, so a
//! first run needs nothing else. It accepts every batch, logs a line per batch, and keeps
//! nothing. It is a demo choice, not a sink for production data.

use crate::ops::ListenError;
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use std::io::Read;
use std::net::SocketAddr;
use url::Url;

/// Binds the receiver on the upstream URL's host and port and serves its path.
pub async fn start(url: &Url) -> Result<SocketAddr, ListenError> {
    let host = url.host_str().unwrap_or("127.0.0.1");
    let port = url.port_or_known_default().unwrap_or(80);
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .or_else(|_| format!("127.0.0.1:{port}").parse())
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], port)));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError {
            what: "demo receiver (upstream.url)",
            addr,
            source,
        })?;
    let app = Router::new().route(url.path(), post(receive));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "demo receiver stopped");
        }
    });
    tracing::info!(url = %gateway_config::redact_url(url), "demo receiver standing in for the cloud");
    Ok(addr)
}

async fn receive(headers: HeaderMap, body: Bytes) -> StatusCode {
    let gzip = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let mut json = Vec::new();
    let decoded = if gzip {
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut json)
            .map(|_| json)
    } else {
        Ok(body.to_vec())
    };
    let Ok(Ok(batch)) = decoded.map(|b| serde_json::from_slice::<serde_json::Value>(&b)) else {
        return StatusCode::BAD_REQUEST;
    };
    let lane = batch["lane"].as_str().unwrap_or("?");
    let records = batch["records"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let first = records.first().and_then(|r| r["seq"].as_u64()).unwrap_or(0);
    let last = records.last().and_then(|r| r["seq"].as_u64()).unwrap_or(0);
    if lane == "alarms" {
        for r in records {
            tracing::info!(alarm = %r["alarm"], state = %r["state"], device = %r["device"], value = %r["value"], "demo receiver: alarm");
        }
    } else {
        tracing::info!(
            lane,
            records = records.len(),
            first_seq = first,
            last_seq = last,
            "demo receiver: batch"
        );
    }
    StatusCode::OK
}
