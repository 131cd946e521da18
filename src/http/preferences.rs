//! `GET /p/{token}` and `POST /p/{token}`: the preference center
//! (DESIGN.md §7). One plain form lists every consent of the link's purpose
//! tree that is not retired: title, brands, the wording in force, and what
//! this contact's state says now. Every box starts unticked: a box grants
//! (`grant=ID`) where messages are off, or withdraws (`withdraw=ID`) where
//! they are on; `v.ID` carries the version shown. A POST naming a consent
//! outside the tree, unknown, or retired (for a grant) is a 400 page and
//! records nothing of that request; otherwise the page comes back with the
//! new states.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::AppState;
use super::page::{
    Lang, escape, evidence, form_fields, lang, not_found, page, sender, unavailable,
};
use crate::authority::{PreferencePage, PreferenceRefusal, PreferenceResult};

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
        let (state, field, label) = if item.allowed {
            (
                lang.pick("You receive these messages.", "Otrzymujesz te wiadomości."),
                "withdraw",
                lang.pick("Stop these messages", "Nie chcę tych wiadomości"),
            )
        } else if item.pending {
            (
                lang.pick(
                    "Waiting for your confirmation: you do not receive these messages yet.",
                    "Czeka na Twoje potwierdzenie: nie otrzymujesz jeszcze tych wiadomości.",
                ),
                "grant",
                lang.pick("I agree to these messages", "Zgadzam się na te wiadomości"),
            )
        } else {
            (
                lang.pick(
                    "You do not receive these messages.",
                    "Nie otrzymujesz tych wiadomości.",
                ),
                "grant",
                lang.pick("I agree to these messages", "Zgadzam się na te wiadomości"),
            )
        };
        let id = escape(&c.id);
        out.push_str(&format!(
            "<fieldset id=\"c-{id}\"><legend>{title}</legend>{brands}\
<div class=\"wording\">{text}</div><p class=\"state\">{state}</p>\
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

pub(super) fn show(s: &AppState, token: &str, headers: &HeaderMap) -> Response {
    let lang = lang(headers);
    match s.authority.preference_page(token) {
        Some(p) => page(
            StatusCode::OK,
            lang,
            title(lang),
            &form(lang, &p, s.authority.controller_name(), ""),
        ),
        None => not_found(),
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
    let Some(before) = s.authority.preference_page(token) else {
        return not_found();
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
        Ok(Ok(r)) if r.erased && r.granted.is_empty() && r.withdrawn.is_empty() => page(
            StatusCode::GONE,
            lang,
            title(lang),
            &format!(
                "<p>{}</p>",
                lang.pick(
                    "This link has expired. Nothing was recorded.",
                    "Ten link wygasł. Niczego nie zapisano.",
                )
            ),
        ),
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
