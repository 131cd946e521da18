//! `GET /r/{token}`: the receipt of one decision, as the person reads it
//! after they act (DESIGN.md §11): what they decided, the words, when and
//! how, the controller, and where the record stands in the hash chain;
//! `?format=json` downloads the signed receipt itself (the JSON, its
//! Ed25519 signature and key id) for anyone to check. A GET only reads.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

use super::AppState;
use super::page::{Lang, escape, lang, not_found, page, unavailable};
use crate::error::ReadError;

fn title(lang: Lang) -> &'static str {
    lang.pick("Your receipt", "Twoje potwierdzenie")
}

/// How a decision reached the server, as a person reads it.
fn source(lang: Lang, name: &str) -> &'static str {
    match name {
        "Form" => lang.pick("a web form", "formularz na stronie"),
        "Import" => lang.pick("an import", "import danych"),
        "Operator" => lang.pick("a member of staff", "pracownik"),
        "UnsubscribeLink" => lang.pick("an unsubscribe link", "link do wypisania"),
        "PreferenceCenter" => lang.pick("the preference center", "centrum preferencji"),
        "ConfirmationLink" => lang.pick("a confirmation link", "link potwierdzający"),
        "SmsKeyword" => lang.pick("a text message", "wiadomość SMS"),
        "Complaint" => lang.pick("a spam report", "zgłoszenie spamu"),
        "Provider" => lang.pick("the sender's provider", "dostawcę poczty"),
        _ => lang.pick("another system", "inny system"),
    }
}

fn decision(lang: Lang, state: &str) -> &'static str {
    match state {
        "given" => lang.pick("You gave your consent", "Wyrażono zgodę"),
        "withdrawn" => lang.pick("You withdrew your consent", "Wycofano zgodę"),
        _ => lang.pick(
            "Your consent waits for your confirmation",
            "Zgoda czeka na Twoje potwierdzenie",
        ),
    }
}

fn row(label: &str, value: &str) -> String {
    format!("<tr><th scope=\"row\">{label}</th><td>{value}</td></tr>")
}

fn render(lang: Lang, r: &Value, download: &str) -> String {
    let s = |v: &Value| escape(v.as_str().unwrap_or_default());
    let consent = &r["consent"];
    let what = match consent["title"].as_str() {
        Some(t) if !t.is_empty() => escape(t),
        _ => s(&consent["id"]),
    };
    let words = match consent["text"].as_str() {
        Some(text) => format!("<div class=\"wording\">{}</div>", escape(text)),
        None => String::new(),
    };
    let chain = &r["chain"];
    let short = |v: &Value| {
        let b = B64
            .decode(v.as_str().unwrap_or_default())
            .unwrap_or_default();
        b.iter()
            .take(8)
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    };
    let checkpoint = if r["checkpoint"].is_string() {
        lang.pick(
            "covered by a signed checkpoint (in the download)",
            "objęty podpisanym punktem kontrolnym (w pliku do pobrania)",
        )
    } else {
        lang.pick(
            "the signed checkpoint that covers it follows within a minute",
            "podpisany punkt kontrolny obejmie go w ciągu minuty",
        )
    };
    let mut rows = String::new();
    let controller = s(&r["controller"]);
    if !controller.is_empty() {
        rows += &row(lang.pick("Controller", "Administrator danych"), &controller);
    }
    rows += &row(lang.pick("Consent", "Zgoda"), &what);
    rows += &row(
        lang.pick("Version", "Wersja"),
        &r["consent"]["version"].to_string(),
    );
    // "2026-12-04T06:14:40.697801164Z" → "2026-12-04 06:14:40"
    let when = r["occurred_at"].as_str().unwrap_or_default();
    let when = when.get(..19).unwrap_or(when).replacen('T', " ", 1);
    rows += &row(lang.pick("When (UTC)", "Kiedy (UTC)"), &escape(&when));
    rows += &row(
        lang.pick("How", "Jak"),
        source(lang, r["source"].as_str().unwrap_or_default()),
    );
    rows += &row(
        lang.pick("Record", "Wpis"),
        &format!(
            "{} {} · {} {}…",
            lang.pick("no.", "nr"),
            chain["sequence"],
            lang.pick("chain", "łańcuch"),
            short(&chain["chain"])
        ),
    );
    rows += &row(lang.pick("Evidence", "Dowód"), checkpoint);
    format!(
        "<p class=\"ok\"><strong>{}</strong>: {what}</p>{words}\
         <table class=\"receipt\">{rows}</table>\
         <p>{}</p><p><a href=\"{}\">{}</a></p>",
        decision(lang, r["state"].as_str().unwrap_or_default()),
        lang.pick(
            "This receipt is signed by the controller's key: anyone can check that it was issued for this record and that the record has not been changed since.",
            "To potwierdzenie jest podpisane kluczem administratora: każdy może sprawdzić, że wydano je dla tego wpisu i że wpis nie został od tego czasu zmieniony.",
        ),
        escape(download),
        lang.pick(
            "Download the signed receipt (JSON)",
            "Pobierz podpisane potwierdzenie (JSON)"
        ),
    )
}

pub(super) async fn show(
    s: &AppState,
    token: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response {
    let lang = lang(headers);
    let Some(claim) = s.authority.receipt_claim(token) else {
        return not_found();
    };
    let receipt = match s.authority.receipt(claim.contact, claim.sequence).await {
        Ok(r) => r,
        // Erased since (or never held): the one 404, like any dead link.
        Err(ReadError::NotFound(_)) => return not_found(),
        Err(e) => {
            tracing::error!(error = %e, "a receipt could not be read");
            return unavailable(lang, title(lang));
        }
    };
    if query == Some("format=json") {
        let body = serde_json::json!({
            "receipt": receipt.json,
            "signature": B64.encode(&receipt.signature),
            "key_id": B64.encode(&receipt.key_id),
        });
        let mut r = (StatusCode::OK, body.to_string()).into_response();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment; filename=\"consent-receipt.json\""),
        );
        return r;
    }
    let value: Value = serde_json::from_str(&receipt.json).unwrap_or_default();
    let download = format!("/r/{token}?format=json");
    page(
        StatusCode::OK,
        lang,
        title(lang),
        &render(lang, &value, &download),
    )
}

/// The paragraph that links a page to the receipt of what was recorded.
pub(super) fn link(lang: Lang, url: Option<&str>) -> String {
    url.map(|u| {
        format!(
            "<p><a class=\"receipt-link\" href=\"{}\">{}</a></p>",
            escape(u),
            lang.pick("Your receipt", "Twoje potwierdzenie")
        )
    })
    .unwrap_or_default()
}
