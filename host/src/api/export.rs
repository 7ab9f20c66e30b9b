//! `GET /v1/export?from=...&to=...&format=parquet|ndjson`: stream the
//! caller's events, oldest first.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{stream, StreamExt};

use super::views::ndjson_line;
use super::{require, ApiError, AppState};
use crate::auth::Principal;
use crate::store::{EventFilter, ExportFile};

/// Rows fetched per step of an NDJSON export.
const PAGE: usize = 2_000;

fn time_param(params: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    params
        .get(name)
        .map(|text| {
            chrono::DateTime::parse_from_rfc3339(text).map(|t| t.timestamp_micros()).map_err(|e| {
                ApiError::field(
                    vec!["query".into(), name.into()],
                    format!("Input should be a valid datetime, {e}"),
                    "datetime_parsing",
                )
            })
        })
        .transpose()
}

/// How long a client may leave an export unread before it is dropped.
const STALLED_READER: Duration = Duration::from_secs(30);

/// Stream a file written under the export directory, then forget it: the
/// path is removed at once and the open handle keeps the data readable. A
/// task feeds the body through a small channel; when the client stops
/// reading for [`STALLED_READER`], the task gives up and closes the file, so
/// an unread download cannot pin a deleted file's disk space.
pub(crate) async fn stream_file(
    export: ExportFile,
    content_type: &'static str,
    filename: &str,
) -> Result<Response, ApiError> {
    let file = tokio::fs::File::open(export.path()).await.map_err(|e| ApiError::Internal(e.to_string()))?;
    // The open handle keeps the data readable; the name goes now.
    drop(export);
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        let mut chunks = tokio_util::io::ReaderStream::new(file);
        while let Some(chunk) = chunks.next().await {
            if tx.send_timeout(chunk, STALLED_READER).await.is_err() {
                tracing::info!("an export was left unread and was dropped");
                return;
            }
        }
    });
    let body = Body::from_stream(stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\"")),
        ],
        body,
    )
        .into_response())
}

/// Stream the tenant's events, oldest first, as NDJSON or Parquet.
#[utoipa::path(
    get,
    path = "/v1/export",
    tag = "events",
    params(
        ("from" = Option<String>, Query, format = DateTime, description = "created_at >= from"),
        ("to" = Option<String>, Query, format = DateTime, description = "created_at < to"),
        ("family" = Option<String>, Query),
        ("format" = Option<String>, Query, pattern = "^(ndjson|parquet)$", description = "Default ndjson"),
    ),
    responses(
        (status = 200, content(
            (String = "application/x-ndjson"),
            (Vec<u8> = "application/vnd.apache.parquet"),
        )),
        super::openapi::ApiErrors,
    )
)]
pub async fn export(
    State(state): State<AppState>,
    principal: Principal,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    require(&principal, "events:read")?;
    let filter = EventFilter {
        from: time_param(&params, "from")?,
        to: time_param(&params, "to")?,
        family: params.get("family").cloned(),
        ..EventFilter::default()
    };
    match params.get("format").map(String::as_str).unwrap_or("ndjson") {
        "parquet" => {
            let path = state.store.export_parquet(principal.space(), filter).await?;
            stream_file(path, "application/vnd.apache.parquet", "events.parquet").await
        }
        "ndjson" => {
            let store = state.store.clone();
            let tenant = principal.space();
            // One of the tenant's analyst slots, like a Parquet export or a
            // query, held until the stream ends or the client leaves.
            let slot = state.store.analyst_slot(&tenant)?;
            // Keyset paging on the insertion sequence: each step reads the
            // next page; nothing is held beyond one page.
            // A task feeds the pages through a small channel, holding the
            // slot; a client that stops reading for [`STALLED_READER`] loses
            // the export, and the slot is given back.
            let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<String>>(2);
            tokio::spawn(async move {
                let _slot = slot;
                let mut after = Some(0i64);
                while let Some(from) = after {
                    let page = match store.export_page(tenant.clone(), filter.clone(), from, PAGE, ndjson_line).await {
                        Ok((text, _)) if text.is_empty() => return,
                        Ok((text, next)) => {
                            after = next;
                            Ok(text)
                        }
                        Err(e) => {
                            after = None;
                            Err(std::io::Error::other(e.to_string()))
                        }
                    };
                    if tx.send_timeout(page, STALLED_READER).await.is_err() {
                        tracing::info!("an export was left unread and was dropped");
                        return;
                    }
                }
            });
            let pages = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|page| (page, rx)) });
            Ok((
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/x-ndjson".to_string()),
                    (header::CONTENT_DISPOSITION, "attachment; filename=\"events.ndjson\"".to_string()),
                ],
                Body::from_stream(pages),
            )
                .into_response())
        }
        other => Err(ApiError::field(
            vec!["query".into(), "format".into()],
            format!("Input should be 'parquet' or 'ndjson', got {other:?}"),
            "enum",
        )),
    }
}
