//! Reading request bodies under a size cap, gzip included.
//!
//! Contract: the body is read up to `limit` bytes (a larger `Content-Length` is refused
//! before reading); a `Content-Encoding: gzip` body is decompressed with the same cap on the
//! *decompressed* size, so a gzip bomb costs at most `limit` bytes of memory. Over the cap →
//! 413 naming the limit; a corrupt gzip stream → 400.

use std::io::Read;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use http_body_util::BodyExt;

use super::error::ApiError;

fn too_large(limit: usize, what: &str, key: &str) -> ApiError {
    ApiError::new(
        413,
        "request_too_large",
        format!("{what} exceeds the limit of {limit} bytes (`{key}`)"),
    )
}

/// `key` names the configuration key of the limit, for the error message.
pub async fn read(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    key: &str,
) -> Result<Bytes, ApiError> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large(limit, "the request body", key));
    }
    let raw = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large(limit, "the request body", key)
            } else {
                ApiError::new(
                    400,
                    "invalid_body",
                    format!("cannot read the request body: {e}"),
                )
            }
        })?
        .to_bytes();
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(raw),
        Some("gzip") | Some("x-gzip") => gunzip(&raw, limit, key),
        Some(other) => Err(ApiError::new(
            415,
            "unsupported_encoding",
            format!("`Content-Encoding: {other}` is not supported (use gzip or none)"),
        )),
    }
}

fn gunzip(raw: &[u8], limit: usize, key: &str) -> Result<Bytes, ApiError> {
    let mut out = Vec::with_capacity((raw.len() * 4).min(limit + 1));
    flate2::read::MultiGzDecoder::new(raw)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            ApiError::new(
                400,
                "invalid_gzip",
                format!("the gzip body cannot be decompressed: {e}"),
            )
        })?;
    if out.len() > limit {
        return Err(too_large(limit, "the decompressed request body", key));
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn headers(encoding: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(e) = encoding {
            h.insert(header::CONTENT_ENCODING, e.parse().unwrap());
        }
        h
    }

    #[tokio::test]
    async fn gzip_bomb_is_capped_on_decompressed_size() {
        let bomb = gz(&vec![b'a'; 50 * 1024 * 1024]);
        assert!(bomb.len() < 100 * 1024);
        let err = read(
            Body::from(bomb),
            &headers(Some("gzip")),
            1024 * 1024,
            "max_batch_bytes",
        )
        .await
        .unwrap_err();
        assert_eq!(err.status.as_u16(), 413);
        assert!(
            err.message.contains("decompressed") && err.message.contains("max_batch_bytes"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn gzip_and_plain_bodies_are_read() {
        let b = read(
            Body::from(gz(b"{\"a\":1}")),
            &headers(Some("gzip")),
            100,
            "k",
        )
        .await
        .unwrap();
        assert_eq!(&b[..], b"{\"a\":1}");
        let b = read(Body::from("{}"), &headers(None), 100, "k")
            .await
            .unwrap();
        assert_eq!(&b[..], b"{}");
        let err = read(Body::from("not gzip"), &headers(Some("gzip")), 100, "k")
            .await
            .unwrap_err();
        assert_eq!(err.code, "invalid_gzip");
        let err = read(Body::from("x".repeat(101)), &headers(None), 100, "k")
            .await
            .unwrap_err();
        assert_eq!(err.status.as_u16(), 413);
        let err = read(Body::from("x"), &headers(Some("br")), 100, "k")
            .await
            .unwrap_err();
        assert_eq!(err.status.as_u16(), 415);
    }
}
