//! `GET /u/{token}` and `POST /u/{token}`: the page behind an unsubscribe
//! link and its one-click withdrawal (RFC 8058).
//!
//! A GET never changes anything (mail scanners pre-fetch links). A POST
//! withdraws through the same [`Authority`] operation as gRPC and answers
//! only once the withdrawal is durable. Every token that is not authentic
//! gets one identical 404. No redirects, no cookies, no JavaScript.

use std::net::SocketAddr;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::domain::Evidence;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lang {
    En,
    Pl,
}

struct Text {
    title: &'static str,
    intro: &'static str,
    from: &'static str,
    one: &'static str,
    all: &'static str,
    done_one: &'static str,
    done_all: &'static str,
    done_note: &'static str,
    failed: &'static str,
    not_found: &'static str,
}

const EN: Text = Text {
    title: "Unsubscribe",
    intro: "You are about to stop receiving",
    from: "from",
    one: "Unsubscribe",
    all: "Unsubscribe from all messages",
    done_one: "You are unsubscribed from",
    done_all: "You are unsubscribed from all messages:",
    done_note: "It may take a moment for messages already on their way to stop. You can close this page.",
    failed: "We could not record your request just now. Please try again in a moment.",
    not_found: "This link is not valid.",
};

const PL: Text = Text {
    title: "Wypisz się",
    intro: "Za chwilę przestaniesz otrzymywać",
    from: "od",
    one: "Wypisz mnie",
    all: "Wypisz mnie ze wszystkich wiadomości",
    done_one: "Wypisano Cię z",
    done_all: "Wypisano Cię ze wszystkich wiadomości:",
    done_note: "Wiadomości, które są już w drodze, mogą jeszcze dotrzeć. Możesz zamknąć tę stronę.",
    failed: "Nie udało się teraz zapisać Twojej prośby. Spróbuj ponownie za chwilę.",
    not_found: "Ten link jest nieprawidłowy.",
};

/// Polish when the reader prefers it over English, else English.
fn lang(headers: &HeaderMap) -> Lang {
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

fn text(lang: Lang) -> &'static Text {
    match lang {
        Lang::En => &EN,
        Lang::Pl => &PL,
    }
}

fn escape(s: &str) -> String {
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

fn page(status: StatusCode, lang: Lang, title: &str, body: &str) -> Response {
    let code = match lang {
        Lang::En => "en",
        Lang::Pl => "pl",
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"{code}\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"robots\" content=\"noindex\"><title>{title}</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:34rem;margin:2rem auto;padding:0 1rem;line-height:1.5;color:#111}}\
button{{font-size:1.05rem;padding:.8rem 1rem;margin:.4rem 0;width:100%;cursor:pointer}}\
.secondary{{background:#fff;border:1px solid #555}}</style></head>\
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
    r
}

/// The one response for every token that is not authentic, and for every
/// other path and method of the public listener.
pub(super) fn not_found() -> Response {
    page(
        StatusCode::NOT_FOUND,
        Lang::En,
        "404",
        &format!("<p>{}</p>", EN.not_found),
    )
}

pub(super) fn show(s: &AppState, token: &str, headers: &HeaderMap) -> Response {
    let Some(info) = s.authority.link_page(token) else {
        return not_found();
    };
    let lang = lang(headers);
    let t = text(lang);
    let body = format!(
        "<p>{intro} <strong>{consent}</strong> {from} <strong>{brand}</strong>.</p>\
<form method=\"post\"><input type=\"hidden\" name=\"scope\" value=\"consent\">\
<button type=\"submit\">{one}</button></form>\
<form method=\"post\"><input type=\"hidden\" name=\"scope\" value=\"all\">\
<button type=\"submit\" class=\"secondary\">{all} ({purpose})</button></form>",
        intro = t.intro,
        consent = escape(&info.consent_title),
        from = t.from,
        brand = escape(&info.brand),
        one = t.one,
        all = t.all,
        purpose = escape(&info.purpose_title),
    );
    page(StatusCode::OK, lang, t.title, &body)
}

pub(super) async fn confirm(
    s: &AppState,
    token: &str,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let Some(info) = s.authority.link_page(token) else {
        return not_found();
    };
    let everything = wants_everything(headers, body);
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
    if body.starts_with(b"List-Unsubscribe=One-Click") || is_one_click_multipart(headers, body) {
        evidence.insert("method".into(), "rfc8058-one-click".into());
    } else {
        evidence.insert("method".into(), "unsubscribe-page".into());
    }
    let lang = lang(headers);
    let t = text(lang);
    match s
        .authority
        .unsubscribe(&info.claim, everything, evidence)
        .await
    {
        Ok(_) => {
            let body = if everything {
                format!(
                    "<p>{} <strong>{}</strong>.</p><p>{}</p>",
                    t.done_all,
                    escape(&info.purpose_title),
                    t.done_note
                )
            } else {
                format!(
                    "<p>{} <strong>{}</strong> ({}).</p><p>{}</p>",
                    t.done_one,
                    escape(&info.consent_title),
                    escape(&info.brand),
                    t.done_note
                )
            };
            page(StatusCode::OK, lang, t.title, &body)
        }
        Err(e) => {
            tracing::error!(error = %e, "unsubscribe could not be recorded");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                lang,
                t.title,
                &format!("<p>{}</p>", t.failed),
            )
        }
    }
}

fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"))
}

/// The value of one field of a multipart/form-data body, if present.
pub(crate) fn multipart_field<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    let marker = format!("name=\"{name}\"");
    let at = body.find(&marker)? + marker.len();
    let rest = &body[at..];
    let start = rest.find("\r\n\r\n")? + 4;
    let value = &rest[start..];
    Some(value[..value.find("\r\n").unwrap_or(value.len())].trim())
}

pub(crate) fn is_one_click_multipart(headers: &HeaderMap, body: &[u8]) -> bool {
    is_multipart(headers)
        && std::str::from_utf8(body)
            .ok()
            .and_then(|b| multipart_field(b, "List-Unsubscribe"))
            == Some("One-Click")
}

/// The page's second button sends `scope=all`; RFC 8058 clients send only
/// `List-Unsubscribe=One-Click`, which withdraws the link's own consent.
pub(crate) fn wants_everything(headers: &HeaderMap, body: &[u8]) -> bool {
    if is_multipart(headers) {
        return std::str::from_utf8(body)
            .ok()
            .and_then(|b| multipart_field(b, "scope"))
            == Some("all");
    }
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .map(|pairs| pairs.iter().any(|(k, v)| k == "scope" && v == "all"))
        .unwrap_or(false)
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
    fn bodies() {
        let form = HeaderMap::new();
        assert!(!wants_everything(&form, b"List-Unsubscribe=One-Click"));
        assert!(wants_everything(&form, b"scope=all"));
        assert!(!wants_everything(&form, b"scope=consent"));
        let mut multi = HeaderMap::new();
        multi.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("multipart/form-data; boundary=xyz"),
        );
        let body = b"--xyz\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--xyz--\r\n";
        assert!(is_one_click_multipart(&multi, body));
        assert!(!wants_everything(&multi, body));
        assert_eq!(
            escape("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The form parsers take any body, urlencoded or multipart, without
        /// panicking; only an exact `scope=all` asks for everything.
        #[test]
        fn form_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let form = HeaderMap::new();
            let mut multi = HeaderMap::new();
            multi.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("multipart/form-data; boundary=xyz"),
            );
            let _ = is_one_click_multipart(&multi, &body);
            let _ = wants_everything(&multi, &body);
            let everything = wants_everything(&form, &body);
            if everything {
                let text = String::from_utf8_lossy(&body);
                prop_assert!(text.contains("scope=all"), "{text}");
            }
        }

        #[test]
        fn multipart_text_never_panics(body in ".{0,512}", name in "[a-zA-Z-]{1,20}") {
            let _ = multipart_field(&body, &name);
        }
    }
}
