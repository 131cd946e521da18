//! What every public page shares: the language (English or Polish, by
//! `Accept-Language`), HTML escaping, one page frame (readable on a phone,
//! no JavaScript, no cookies, not cached, not indexed), the one identical
//! 404, the evidence a click leaves, and the urlencoded form fields.

use std::net::SocketAddr;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::domain::Evidence;

/// The language of a page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Lang {
    En,
    Pl,
}

impl Lang {
    /// English or Polish text, by the page's language.
    pub(super) fn pick<T>(self, en: T, pl: T) -> T {
        match self {
            Lang::En => en,
            Lang::Pl => pl,
        }
    }
}

/// Polish when the reader prefers it over English, else English.
pub(super) fn lang(headers: &HeaderMap) -> Lang {
    let Some(value) = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
    else {
        return Lang::En;
    };
    let mut best = (Lang::En, 0.0f32);
    for part in value.split(',') {
        let mut it = part.split(';');
        let tag = it.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = it
            .find_map(|p| p.trim().strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let lang = match tag.split('-').next() {
            Some("pl") => Lang::Pl,
            Some("en") => Lang::En,
            _ => continue,
        };
        if q > best.1 {
            best = (lang, q);
        }
    }
    best.0
}

/// Text safe inside HTML elements and quoted attributes.
pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One page: `title` (plain text) over `body` (HTML).
pub(super) fn page(status: StatusCode, lang: Lang, title: &str, body: &str) -> Response {
    let code = lang.pick("en", "pl");
    let title = escape(title);
    let html = format!(
        "<!doctype html>\n<html lang=\"{code}\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"robots\" content=\"noindex\"><title>{title}</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:34rem;margin:2rem auto;padding:0 1rem;line-height:1.5;color:#111}}\
button{{font-size:1.05rem;padding:.8rem 1rem;margin:.4rem 0;width:100%;cursor:pointer}}\
.secondary{{background:#fff;border:1px solid #555}}\
.brand{{color:#444;margin-top:-.5rem}}\
.wording{{white-space:pre-wrap;border-left:4px solid #888;padding:.2rem .8rem;margin:.8rem 0;background:#f6f6f6}}\
fieldset{{border:1px solid #bbb;margin:1rem 0;padding:.6rem 1rem}}\
legend{{font-weight:600;padding:0 .3rem}}\
label.choice{{display:flex;gap:.7rem;align-items:center;padding:.6rem 0;font-size:1.05rem}}\
label.choice input{{width:1.6rem;height:1.6rem;flex:none}}\
.state,.through{{font-size:.95rem;color:#333}}\
.notice{{border:2px solid #b58900;padding:.5rem .8rem}}\
.ok{{border:2px solid #2e7d32;padding:.5rem .8rem}}\
.error{{border:2px solid #c00;padding:.5rem .8rem}}\
table.receipt{{border-collapse:collapse;margin:.8rem 0;width:100%}}\
table.receipt th,table.receipt td{{text-align:left;vertical-align:top;padding:.3rem .4rem;border-bottom:1px solid #ddd}}\
table.receipt th{{white-space:nowrap}}table.receipt td{{overflow-wrap:anywhere}}</style></head>\
<body><main><h1>{title}</h1>{body}</main></body></html>\n"
    );
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert("x-robots-tag", HeaderValue::from_static("noindex"));
    // No page may be framed (a click on a framed button is not the
    // person's): both the old header and CSP's directive, for every browser.
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'none'"),
    );
    r
}

/// Who is asking, as the pages name it: the brand, with the controller of
/// the data beside it when one is configured (GDPR Art. 13); HTML-escaped.
pub(super) fn sender(brand: &str, controller: &str) -> String {
    match (brand.is_empty(), controller.is_empty()) {
        (_, true) => escape(brand),
        (true, false) => escape(controller),
        (false, false) => format!("{} ({})", escape(brand), escape(controller)),
    }
}

/// The one response for every token that is not authentic, and for every
/// other path and method of the public listener.
pub(super) fn not_found() -> Response {
    page(
        StatusCode::NOT_FOUND,
        Lang::En,
        "404",
        "<p>This link is not valid.</p>",
    )
}

/// The page behind a link minted before its contact was erased (DESIGN.md
/// §8): 410, and nothing was recorded.
pub(super) fn expired(lang: Lang, title: &str) -> Response {
    page(
        StatusCode::GONE,
        lang,
        title,
        lang.pick(
            "<p>This link has expired. Nothing was recorded, and we hold no consent of yours for these messages.</p>",
            "<p>Ten link wygasł. Niczego nie zapisano i nie przechowujemy Twojej zgody na te wiadomości.</p>",
        ),
    )
}

/// The page for a store that could not record the click just now.
pub(super) fn unavailable(lang: Lang, title: &str) -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        lang,
        title,
        lang.pick(
            "<p>We could not record your request just now. Please try again in a moment.</p>",
            "<p>Nie udało się teraz zapisać Twojej prośby. Spróbuj ponownie za chwilę.</p>",
        ),
    )
}

/// What a click leaves as proof: `ip`, `user_agent`, and `forwarded_for`
/// when a proxy sent one (DESIGN.md §8).
pub(super) fn evidence(peer: SocketAddr, headers: &HeaderMap) -> Evidence {
    let mut evidence = Evidence::new();
    evidence.insert("ip".into(), peer.ip().to_string());
    for (name, key) in [
        (header::USER_AGENT.as_str(), "user_agent"),
        ("x-forwarded-for", "forwarded_for"),
    ] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            evidence.insert(key.into(), v.chars().take(512).collect());
        }
    }
    evidence
}

/// The fields of an urlencoded form body, in order, repeats kept; a body
/// that does not decode has none.
pub(super) fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    serde_urlencoded::from_bytes(body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_str(v).unwrap());
            lang(&m)
        };
        assert_eq!(h("pl-PL,pl;q=0.9,en;q=0.8"), Lang::Pl);
        assert_eq!(h("en-GB,en;q=0.9,pl;q=0.8"), Lang::En);
        assert_eq!(h("de-DE,pl;q=0.5"), Lang::Pl);
        assert_eq!(h("de-DE"), Lang::En);
        assert_eq!(lang(&HeaderMap::new()), Lang::En);
    }

    #[test]
    fn escaping_and_fields() {
        assert_eq!(
            escape("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
        assert_eq!(
            form_fields(b"grant=a&grant=b&v.a=2"),
            [("grant", "a"), ("grant", "b"), ("v.a", "2")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }
}
