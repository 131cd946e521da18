//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`):
//! each takes raw bytes as an attacker or a careless client would send
//! them, runs the decoder the server runs, and panics only where an
//! invariant the server relies on is broken.

use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderValue, header};
use prost::Message;

use crate::domain::Catalog;
use crate::links::Links;
use crate::pb;

/// A link token from a URL path: never accepted unless minted here.
pub fn link_token(data: &[u8]) {
    static LINKS: OnceLock<(tempfile::TempDir, Links)> = OnceLock::new();
    let (_, links) = LINKS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir");
        let links = Links::open(dir.path(), &[], "https://example.com").expect("a key ring");
        (dir, links)
    });
    let token = String::from_utf8_lossy(data);
    assert!(links.verify(&token).is_none(), "a forged token opened");
}

/// An ApplyCatalog request body, decoded and compiled as the server does.
pub fn catalog(data: &[u8]) {
    let Ok(spec) = pb::CatalogSpec::decode(data) else {
        return;
    };
    let Ok(spec) = crate::grpc::catalog_from(spec) else {
        return;
    };
    if let Ok(compiled) = Catalog::empty(None).compile(spec, 1) {
        // What compiled once compiles again unchanged.
        let again = compiled
            .catalog
            .compile(compiled.catalog.spec().clone(), 2)
            .expect("a compiled catalog recompiles");
        assert!(again.wordings.is_empty(), "recompiling changed a wording");
    }
}

/// One Import row as it arrives on the stream.
pub fn import_row(data: &[u8]) {
    let Ok(row) = pb::ImportRequest::decode(data) else {
        return;
    };
    let addressing = crate::authority::Addressing::new(
        crate::domain::AddressHasher::new(&[5; 32]),
        crate::domain::PhoneRegion::parse("PL").expect("a region"),
    );
    match crate::grpc::convert::row_from(row, 1_800_000_000_000_000_000, "fuzz", &addressing) {
        Ok(change) => assert!(change.occurred_at.is_some(), "a row without a time"),
        Err(e) => {
            assert!(!e.field.is_empty(), "an error naming no field");
            assert!(e.to_string().len() < 600, "an unbounded echo: {e}");
        }
    }
}

/// A POST body to the unsubscribe page, urlencoded (first byte even) or
/// multipart (odd).
pub fn unsubscribe_form(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let mut headers = HeaderMap::new();
    if kind % 2 == 1 {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("multipart/form-data; boundary=xyz"),
        );
    }
    let _ = crate::http::unsubscribe::is_one_click_multipart(&headers, body);
    if crate::http::unsubscribe::wants_everything(&headers, body) {
        assert!(
            String::from_utf8_lossy(body).contains("scope"),
            "everything asked for without a scope field"
        );
    }
}
