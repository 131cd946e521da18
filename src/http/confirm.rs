//! `GET /c/{token}` and `POST /c/{token}`: the double opt-in confirmation
//! page (DESIGN.md §7). The GET shows the exact wording with a confirm
//! button and a "this wasn't me" button and changes nothing; a POST with a
//! `not_me` field refuses, any other confirms the wording it shows (its
//! `version` field), once durable. An expired link, one used already, or a
//! consent no longer offered gets a page saying so and records nothing.

use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::AppState;
use super::page::{
    Lang, escape, evidence, form_fields, lang, not_found, page, sender, unavailable,
};
use crate::authority::{ConfirmPage, Confirmation, Confirmed, Shown};

fn title(lang: Lang) -> &'static str {
    lang.pick("Confirm your consent", "Potwierdź swoją zgodę")
}

/// The brands a consent covers, as a line under the title.
fn brands(lang: Lang, c: &Shown, controller: &str) -> String {
    if c.brands.is_empty() && controller.is_empty() {
        return String::new();
    }
    format!(
        "<p class=\"brand\">{} <strong>{}</strong></p>",
        lang.pick("From", "Od"),
        sender(&c.brands.join(", "), controller)
    )
}

/// The wording and the two buttons; `notice` above them when set.
fn form(lang: Lang, c: &Shown, controller: &str, notice: Option<&str>) -> String {
    let notice = notice
        .map(|n| format!("<p class=\"notice\">{n}</p>"))
        .unwrap_or_default();
    format!(
        "{brands}{notice}<p>{ask}</p><h2>{title}</h2>\
<div class=\"wording\">{text}</div>\
<form method=\"post\"><input type=\"hidden\" name=\"version\" value=\"{version}\">\
<button type=\"submit\">{yes}</button></form>\
<form method=\"post\"><input type=\"hidden\" name=\"not_me\" value=\"1\">\
<button type=\"submit\" class=\"secondary\">{no}</button></form>",
        brands = brands(lang, c, controller),
        ask = lang.pick(
            "You, or someone using this address, asked the sender named above for the messages below. Please confirm that it was you and that you agree to:",
            "Ty lub ktoś używający tego adresu poprosił nadawcę wskazanego powyżej o poniższe wiadomości. Potwierdź, że to Ty i że zgadzasz się na:"
        ),
        title = escape(&c.title),
        text = escape(&c.text),
        version = c.version,
        yes = lang.pick("Yes, I agree", "Tak, zgadzam się"),
        no = lang.pick("This wasn't me", "To nie ja"),
    )
}

/// The page for a link that records nothing more, and its status code.
fn settled(lang: Lang, status: Confirmation) -> (StatusCode, &'static str) {
    match status {
        Confirmation::Expired => (
            StatusCode::GONE,
            lang.pick(
                "This confirmation link has expired. Nothing was recorded. If you still want these messages, please sign up again.",
                "Ten link potwierdzający wygasł. Niczego nie zapisano. Jeśli nadal chcesz otrzymywać te wiadomości, zapisz się ponownie.",
            ),
        ),
        Confirmation::Confirmed => (
            StatusCode::OK,
            lang.pick(
                "You have confirmed this already. Thank you.",
                "To zostało już potwierdzone. Dziękujemy.",
            ),
        ),
        Confirmation::Refused => (
            StatusCode::OK,
            lang.pick(
                "You told us this wasn't you. You will not receive these messages, and this link confirms nothing.",
                "Poinformowałeś nas, że to nie Ty. Nie otrzymasz tych wiadomości, a ten link niczego nie potwierdzi.",
            ),
        ),
        Confirmation::Superseded => (
            StatusCode::OK,
            lang.pick(
                "Your choice has changed since this link was sent, so it confirms nothing. Nothing was recorded.",
                "Twój wybór zmienił się od wysłania tego linku, więc niczego on nie potwierdza. Niczego nie zapisano.",
            ),
        ),
        Confirmation::Gone | Confirmation::Open => (
            StatusCode::GONE,
            lang.pick(
                "These messages are no longer offered. Nothing was recorded.",
                "Te wiadomości nie są już oferowane. Niczego nie zapisano.",
            ),
        ),
    }
}

fn render(lang: Lang, info: &ConfirmPage, controller: &str, notice: Option<&str>) -> Response {
    match (&info.consent, info.status) {
        (Some(c), Confirmation::Open) => page(
            StatusCode::OK,
            lang,
            title(lang),
            &form(lang, c, controller, notice),
        ),
        (_, status) => {
            let (code, message) = settled(lang, status);
            page(code, lang, title(lang), &format!("<p>{message}</p>"))
        }
    }
}

/// The page behind a token, or the response that replaces it: the one 404
/// for a token that is not an authentic confirmation link, 503 when the
/// store cannot be read.
async fn open(s: &AppState, token: &str, lang: Lang) -> Result<ConfirmPage, Response> {
    match s.authority.confirm_page(token).await {
        Ok(Some(info)) => Ok(info),
        Ok(None) => Err(not_found()),
        Err(e) => {
            tracing::error!(error = %e, "confirmation page could not be read");
            Err(unavailable(lang, title(lang)))
        }
    }
}

pub(super) async fn show(s: &AppState, token: &str, headers: &HeaderMap) -> Response {
    let lang = lang(headers);
    match open(s, token, lang).await {
        Ok(info) => render(lang, &info, s.authority.controller_name(), None),
        Err(response) => response,
    }
}

pub(super) async fn post(
    s: &AppState,
    token: &str,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let lang = lang(headers);
    // The token alone: `confirm` reads where the link stands, once.
    let Some(claim) = s.authority.confirmation_claim(token) else {
        return not_found();
    };
    let fields = form_fields(body);
    let not_me = fields.iter().any(|(k, _)| k == "not_me");
    let version = fields
        .iter()
        .find(|(k, _)| k == "version")
        .and_then(|(_, v)| v.parse().ok());
    let done = s
        .authority
        .confirm(&claim, not_me, version, evidence(peer, headers))
        .await;
    match done {
        Ok(Confirmed::Recorded {
            not_me: false,
            consent,
            receipt,
        }) => {
            let what = consent.map(|c| escape(&c.title)).unwrap_or_default();
            page(
                StatusCode::OK,
                lang,
                lang.pick("Thank you", "Dziękujemy"),
                &format!(
                    "<p>{} <strong>{what}</strong>.</p><p>{}</p>{}",
                    lang.pick("You have confirmed:", "Potwierdziłeś:"),
                    lang.pick(
                        "You can withdraw at any time with the unsubscribe link in every message.",
                        "Możesz w każdej chwili wycofać zgodę linkiem do wypisania w każdej wiadomości."
                    ),
                    super::receipt::link(lang, receipt.as_deref())
                ),
            )
        }
        Ok(Confirmed::Recorded {
            not_me: true,
            receipt,
            ..
        }) => page(
            StatusCode::OK,
            lang,
            lang.pick("Thank you", "Dziękujemy"),
            &format!(
                "{}{}",
                lang.pick(
                    "<p>We have recorded that this wasn't you. You will not receive these messages.</p>",
                    "<p>Zapisaliśmy, że to nie Ty. Nie otrzymasz tych wiadomości.</p>",
                ),
                super::receipt::link(lang, receipt.as_deref())
            ),
        ),
        Ok(Confirmed::WordingChanged) => {
            // Shown again, with the wording in force now.
            match open(s, token, lang).await {
                Ok(fresh) => render(
                    lang,
                    &fresh,
                    s.authority.controller_name(),
                    Some(lang.pick(
                        "The wording has changed since this page was shown. Please read it again.",
                        "Treść zmieniła się od czasu wyświetlenia tej strony. Przeczytaj ją ponownie.",
                    )),
                ),
                Err(response) => response,
            }
        }
        Ok(Confirmed::Nothing(status)) => {
            let (code, message) = settled(lang, status);
            page(code, lang, title(lang), &format!("<p>{message}</p>"))
        }
        Err(e) => {
            tracing::error!(error = %e, "confirmation could not be recorded");
            unavailable(lang, title(lang))
        }
    }
}
