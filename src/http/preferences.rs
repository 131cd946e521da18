//! `GET /p/{token}` and `POST /p/{token}`: the preference center
//! (DESIGN.md §7). One plain form lists every consent of the link's purpose
//! tree that is not retired: title, brands, the wording in force, and what
//! CanSend decides now across the consent's scope (all, some or none of its
//! messages go out: `data-cansend`), naming the other consent it follows
//! where one decides (an umbrella grant, a withdrawal above:
//! `data-decided-by`). Every box starts unticked: a box grants
//! (`grant=ID`) where no message goes out, or withdraws (`withdraw=ID`)
//! where some do; `v.ID` carries the version shown. A link minted before
//! its contact was erased opens the expired page (410) and records nothing. A POST naming a consent
//! outside the tree, unknown, or retired (for a grant) is a 400 page and
//! records nothing of that request; otherwise the page comes back with the
//! new states.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::AppState;
use super::page::{
    Lang, escape, evidence, expired, form_fields, lang, not_found, page, sender, unavailable,
};
use crate::authority::{
    PreferenceOpen, PreferencePage, PreferenceRefusal, PreferenceResult, Reach, Through,
};

fn title(lang: Lang) -> &'static str {
    lang.pick("Your message preferences", "Twoje preferencje wiadomości")
}

/// The whole form; `banner` (HTML) above it when set.
fn form(lang: Lang, p: &PreferencePage, controller: &str, banner: &str) -> String {
    let mut out = String::new();
    let brand = p.brand_title.as_deref().unwrap_or_default();
    if !brand.is_empty() || !controller.is_empty() {
        out.push_str(&format!(
            "<p class=\"brand\"><strong>{}</strong></p>",
            sender(brand, controller)
        ));
    }
    out.push_str(banner);
    out.push_str(&format!(
        "<p>{} <strong>{}</strong>. {}</p><form method=\"post\">",
        lang.pick(
            "Choose which messages you receive:",
            "Wybierz, jakie wiadomości chcesz otrzymywać:"
        ),
        escape(&p.purpose_title),
        lang.pick(
            "Tick a box only to change it; nothing is ticked for you.",
            "Zaznacz pole tylko, jeśli chcesz coś zmienić; nic nie jest zaznaczone za Ciebie."
        ),
    ));
    for item in &p.items {
        let c = &item.consent;
        let brands = if c.brands.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = c.brands.iter().map(|b| escape(b)).collect();
            format!("<p class=\"brand\">{}</p>", names.join(", "))
        };
        let (state, reach) = match item.reach {
            Reach::All => (
                lang.pick("You receive these messages.", "Otrzymujesz te wiadomości."),
                "all",
            ),
            Reach::Some => (
                lang.pick(
                    "You receive some of these messages.",
                    "Otrzymujesz część tych wiadomości.",
                ),
                "some",
            ),
            Reach::None if item.pending => (
                lang.pick(
                    "Waiting for your confirmation: you do not receive these messages yet.",
                    "Czeka na Twoje potwierdzenie: nie otrzymujesz jeszcze tych wiadomości.",
                ),
                "none",
            ),
            Reach::None => (
                lang.pick(
                    "You do not receive these messages.",
                    "Nie otrzymujesz tych wiadomości.",
                ),
                "none",
            ),
        };
        let (field, label) = if item.allowed() {
            (
                "withdraw",
                lang.pick("Stop these messages", "Nie chcę tych wiadomości"),
            )
        } else {
            (
                "grant",
                lang.pick("I agree to these messages", "Zgadzam się na te wiadomości"),
            )
        };
        let through: String = item
            .through
            .iter()
            .map(|t| through_line(lang, item.reach, t))
            .collect();
        let id = escape(&c.id);
        out.push_str(&format!(
            "<fieldset id=\"c-{id}\"><legend>{title}</legend>{brands}\
<div class=\"wording\">{text}</div><p class=\"state\" data-cansend=\"{reach}\">{state}</p>{through}\
<input type=\"hidden\" name=\"v.{id}\" value=\"{version}\">\
<label class=\"choice\"><input type=\"checkbox\" name=\"{field}\" value=\"{id}\">{label}</label></fieldset>",
            title = escape(&c.title),
            text = escape(&c.text),
            version = c.version,
        ));
    }
    out.push_str(&format!(
        "<button type=\"submit\">{}</button></form>",
        lang.pick("Save my choices", "Zapisz moje wybory")
    ));
    out
}

/// Which other consent CanSend follows for (part of) a consent's scope.
fn through_line(lang: Lang, reach: Reach, t: &Through) -> String {
    let why = match (reach == Reach::Some, t.allows) {
        (false, true) => lang.pick(
            "Sent because you agreed to",
            "Wysyłane, ponieważ zgodziłeś się na",
        ),
        (false, false) => lang.pick(
            "Not sent because you stopped",
            "Niewysyłane, ponieważ zrezygnowałeś z",
        ),
        (true, true) => lang.pick(
            "Some are sent because you agreed to",
            "Część jest wysyłana, ponieważ zgodziłeś się na",
        ),
        (true, false) => lang.pick(
            "Some are not sent because you stopped",
            "Część nie jest wysyłana, ponieważ zrezygnowałeś z",
        ),
    };
    format!(
        "<p class=\"through\" data-decided-by=\"{id}\" data-allows=\"{allows}\">{why} <strong>{title}</strong>.</p>",
        id = escape(&t.id),
        allows = t.allows,
        title = escape(&t.title),
    )
}

/// What was saved, as a banner.
fn saved(lang: Lang, p: &PreferencePage, r: &PreferenceResult) -> String {
    let name = |id: &String| {
        p.items
            .iter()
            .find(|i| &i.consent.id == id)
            .map_or_else(|| escape(id), |i| escape(&i.consent.title))
    };
    let list = |ids: &[String]| ids.iter().map(name).collect::<Vec<_>>().join(", ");
    let mut out = String::new();
    if r.granted.is_empty() && r.withdrawn.is_empty() && r.reworded.is_empty() {
        out.push_str(&format!(
            "<p class=\"notice\">{}</p>",
            lang.pick("Nothing was changed.", "Niczego nie zmieniono.")
        ));
    }
    if !r.granted.is_empty() || !r.withdrawn.is_empty() {
        out.push_str(&format!(
            "<p class=\"ok\" role=\"status\">{}",
            lang.pick("Saved.", "Zapisano.")
        ));
        if !r.granted.is_empty() {
            out.push_str(&format!(
                " {} {}.",
                lang.pick("You agreed to:", "Zgoda na:"),
                list(&r.granted)
            ));
        }
        if !r.withdrawn.is_empty() {
            out.push_str(&format!(
                " {} {}.",
                lang.pick("You stopped:", "Wycofano:"),
                list(&r.withdrawn)
            ));
        }
        out.push_str("</p>");
    }
    if !r.receipts.is_empty() {
        let links: Vec<String> = r
            .receipts
            .iter()
            .map(|(id, url)| {
                format!(
                    "<li><a class=\"receipt-link\" href=\"{}\">{}</a></li>",
                    escape(url),
                    name(id)
                )
            })
            .collect();
        out.push_str(&format!(
            "<p>{}</p><ul>{}</ul>",
            lang.pick("Your receipts:", "Twoje potwierdzenia:"),
            links.concat()
        ));
    }
    if !r.reworded.is_empty() {
        out.push_str(&format!(
            "<p class=\"notice\">{} {}</p>",
            lang.pick(
                "The wording of these changed while you read it, so they were not saved; please read them again:",
                "Treść tych zgód zmieniła się w trakcie, więc ich nie zapisano; przeczytaj je ponownie:"
            ),
            list(&r.reworded)
        ));
    }
    out
}

/// The page behind a token, or what replaces it: the one 404 for a token
/// that is not an authentic preference link, the expired page for a
/// contact erased since the link was issued, 503 when the store cannot be
/// asked.
async fn open(s: &AppState, token: &str, lang: Lang) -> Result<PreferencePage, Response> {
    match s.authority.preference_page(token).await {
        Ok(Some(PreferenceOpen::Page(p))) => Ok(*p),
        Ok(Some(PreferenceOpen::Expired)) => Err(expired(lang, title(lang))),
        Ok(None) => Err(not_found()),
        Err(e) => {
            tracing::error!(error = %e, "a preference page could not be read");
            Err(unavailable(lang, title(lang)))
        }
    }
}

pub(super) async fn show(s: &AppState, token: &str, headers: &HeaderMap) -> Response {
    let lang = lang(headers);
    match open(s, token, lang).await {
        Ok(p) => page(
            StatusCode::OK,
            lang,
            title(lang),
            &form(lang, &p, s.authority.controller_name(), ""),
        ),
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
    let before = match open(s, token, lang).await {
        Ok(p) => p,
        Err(response) => return response,
    };
    let mut grants = Vec::new();
    let mut withdrawals = Vec::new();
    let mut shown = BTreeMap::new();
    for (k, v) in form_fields(body) {
        match k.as_str() {
            "grant" => grants.push(v),
            "withdraw" => withdrawals.push(v),
            _ => {
                if let (Some(id), Ok(version)) = (k.strip_prefix("v."), v.parse::<u32>()) {
                    shown.insert(id.to_owned(), version);
                }
            }
        }
    }
    let result = s
        .authority
        .set_preferences(
            &before.claim,
            &grants,
            &withdrawals,
            &shown,
            evidence(peer, headers),
        )
        .await;
    match result {
        // Erased after the link was issued: the expired page, nothing kept.
        Ok(Ok(r)) if r.erased && r.granted.is_empty() && r.withdrawn.is_empty() => {
            expired(lang, title(lang))
        }
        Ok(Ok(r)) => match s.authority.preferences_of(before.claim) {
            Some(after) => {
                let banner = saved(lang, &after, &r);
                page(
                    StatusCode::OK,
                    lang,
                    title(lang),
                    &form(lang, &after, s.authority.controller_name(), &banner),
                )
            }
            None => not_found(),
        },
        Ok(Err(refusal)) => {
            let why = match &refusal {
                PreferenceRefusal::Unknown(id) => format!(
                    "{} {}",
                    lang.pick("This page does not offer", "Ta strona nie oferuje"),
                    escape(&id.chars().take(64).collect::<String>())
                ),
                PreferenceRefusal::Retired(id) => format!(
                    "{} {}",
                    lang.pick("This is no longer offered:", "To nie jest już oferowane:"),
                    escape(id)
                ),
                PreferenceRefusal::Both(id) => format!(
                    "{} {}",
                    lang.pick(
                        "You asked both to receive and to stop:",
                        "Poprosiłeś jednocześnie o otrzymywanie i rezygnację:"
                    ),
                    escape(id)
                ),
                PreferenceRefusal::TooMany => lang
                    .pick(
                        "Too many choices in one form.",
                        "Za dużo wyborów w jednym formularzu.",
                    )
                    .to_owned(),
            };
            let banner = format!(
                "<p class=\"error\" role=\"alert\">{why}. {}</p>",
                lang.pick("Nothing was changed.", "Niczego nie zmieniono.")
            );
            page(
                StatusCode::BAD_REQUEST,
                lang,
                title(lang),
                &form(lang, &before, s.authority.controller_name(), &banner),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "preferences could not be recorded");
            unavailable(lang, title(lang))
        }
    }
}
