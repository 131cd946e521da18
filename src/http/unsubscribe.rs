//! `GET /u/{token}` and `POST /u/{token}`: the page behind an unsubscribe
//! link and its one-click withdrawal (RFC 8058).
//!
//! A GET never changes anything (mail scanners pre-fetch links). A POST
//! withdraws through the same [`Authority`] operation as gRPC and answers
//! only once the withdrawal is durable. Every token that is not authentic
//! gets one identical 404. No redirects, no cookies, no JavaScript.

use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use super::AppState;
use super::page::{Lang, escape, evidence, expired, lang, not_found, page, sender, unavailable};
use crate::authority::LinkPage;

struct Text {
    title: &'static str,
    intro: &'static str,
    from: &'static str,
    one: &'static str,
    all: &'static str,
    done_one: &'static str,
    done_all: &'static str,
    done_note: &'static str,
    preferences: &'static str,
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
    preferences: "Choose what you receive instead",
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
    preferences: "Wybierz, co chcesz otrzymywać",
};

fn text(lang: Lang) -> &'static Text {
    lang.pick(&EN, &PL)
}

/// The link to the contact's preference center, as a paragraph.
fn preferences_link(t: &Text, url: Option<&str>) -> String {
    url.map(|u| format!("<p><a href=\"{}\">{}</a></p>", escape(u), t.preferences))
        .unwrap_or_default()
}

/// What to do with a link whose page is the expired page.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// Show that page.
    Show,
    /// Ask the writer anyway (a click).
    Ask,
}

/// The link's page, or what replaces it: the one 404 for a token that is
/// not authentic, the expired page for a contact erased since the link was
/// minted (holding nothing since), 503 when the store cannot be asked.
async fn open(
    s: &AppState,
    token: &str,
    lang: Lang,
    when_expired: Expired,
) -> Result<LinkPage, Response> {
    match s.authority.link_page(token).await {
        Ok(Some(info)) if info.expired && when_expired == Expired::Show => {
            Err(expired(lang, text(lang).title))
        }
        Ok(Some(info)) => Ok(info),
        Ok(None) => Err(not_found()),
        Err(e) => {
            tracing::error!(error = %e, "an unsubscribe page could not be read");
            Err(unavailable(lang, text(lang).title))
        }
    }
}

pub(super) async fn show(s: &AppState, token: &str, headers: &HeaderMap) -> Response {
    let lang = lang(headers);
    let info = match open(s, token, lang, Expired::Show).await {
        Ok(info) => info,
        Err(response) => return response,
    };
    let t = text(lang);
    let body = format!(
        "<p>{intro} <strong>{consent}</strong> {from} <strong>{brand}</strong>.</p>\
<form method=\"post\"><input type=\"hidden\" name=\"scope\" value=\"consent\">\
<button type=\"submit\">{one}</button></form>\
<form method=\"post\"><input type=\"hidden\" name=\"scope\" value=\"all\">\
<button type=\"submit\" class=\"secondary\">{all} ({purpose})</button></form>{prefs}",
        intro = t.intro,
        consent = escape(&info.consent_title),
        from = t.from,
        brand = sender(&info.brand, s.authority.controller_name()),
        one = t.one,
        all = t.all,
        purpose = escape(&info.purpose_title),
        prefs = preferences_link(t, info.preferences_url.as_deref()),
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
    let lang = lang(headers);
    // Even a link whose page would be the expired one goes to the writer:
    // it alone rules on whether the contact was granted again since the
    // erasure, to the moment (then the click withdraws, rule 4).
    let info = match open(s, token, lang, Expired::Ask).await {
        Ok(info) => info,
        Err(response) => return response,
    };
    let everything = wants_everything(headers, body);
    let mut evidence = evidence(peer, headers);
    let one_click =
        body.starts_with(b"List-Unsubscribe=One-Click") || is_one_click_multipart(headers, body);
    if one_click {
        evidence.insert("method".into(), "rfc8058-one-click".into());
    } else {
        evidence.insert("method".into(), "unsubscribe-page".into());
    }
    let t = text(lang);
    match s
        .authority
        .unsubscribe(&info.claim, everything, evidence)
        .await
    {
        // Erased since the link was minted, nothing granted since: there is
        // nothing to withdraw. A mail client's one-click POST is told so
        // with a 200 (rule 4: the click confirms), a person the expired page.
        Ok(Some(outcome)) if outcome.sequence == 0 && one_click => {
            let mut r = expired(lang, t.title);
            *r.status_mut() = StatusCode::OK;
            r
        }
        Ok(Some(outcome)) if outcome.sequence == 0 => expired(lang, t.title),
        Ok(outcome) => {
            let receipt_url = outcome.and_then(|o| {
                s.authority
                    .receipt_url(&info.claim.contact, &info.claim.consent, o.sequence)
            });
            let prefs = format!(
                "{}{}",
                super::receipt::link(lang, receipt_url.as_deref()),
                preferences_link(t, info.preferences_url.as_deref())
            );
            let body = if everything {
                format!(
                    "<p>{} <strong>{}</strong>.</p><p>{}</p>{prefs}",
                    t.done_all,
                    escape(&info.purpose_title),
                    t.done_note
                )
            } else {
                format!(
                    "<p>{} <strong>{}</strong> ({}).</p><p>{}</p>{prefs}",
                    t.done_one,
                    escape(&info.consent_title),
                    sender(&info.brand, s.authority.controller_name()),
                    t.done_note
                )
            };
            page(StatusCode::OK, lang, t.title, &body)
        }
        Err(e) => {
            tracing::error!(error = %e, "unsubscribe could not be recorded");
            unavailable(lang, t.title)
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
    use axum::http::HeaderValue;

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
    }
}

#[cfg(test)]
mod properties {
    use axum::http::HeaderValue;
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
