//! The pages in a real browser: headless Chromium at phone size, driven
//! through WebDriver (ChromeDriver) the way a person uses them — open a
//! preference link, tick a box, save; open an unsubscribe link, press the
//! button; open a confirmation link, confirm; see the preference center say
//! which consent a message goes out (or stops) through — checking CanSend
//! after each.
//! A screenshot of every page lands in `target/browser-screenshots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them); where they are missing the test prints SKIPPED.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use consentd::pb::{self, Reason};
use fantoccini::{Client, ClientBuilder, Locator};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A phone's viewport, in CSS pixels.
const PHONE: (u32, u32) = (390, 844);

/// ChromeDriver, killed when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts ChromeDriver and a headless Chromium session at phone size,
/// asking for pages in `lang` (an Accept-Language value).
async fn browser(profile: &Path, lang: &str) -> (Driver, Client) {
    let port = free_port();
    let driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    // Ready once it accepts connections (it takes a moment to bind).
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", profile.display()),
                format!("--lang={lang}"),
            ],
            "prefs": {"intl.accept_languages": lang},
            "mobileEmulation": {
                "deviceMetrics": {"width": PHONE.0, "height": PHONE.1, "pixelRatio": 2.0},
                "userAgent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Mobile Safari/537.36"
            }
        }),
    );
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.enforce_http(true);
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");
    (driver, client)
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn snap(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Clicks the first element `css` selects.
async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// The page's text, once a page whose body holds `marker` has loaded.
async fn wait_for(client: &Client, marker: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let source = client.source().await.unwrap();
        if source.contains(marker) {
            return source;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {marker:?} in {source}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The page's viewport width in CSS pixels: the layout fits a phone.
async fn fits_the_phone(client: &Client) {
    let widths = client
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await
        .unwrap();
    let w: Vec<u64> = serde_json::from_value(widths).unwrap();
    assert_eq!(w[1], u64::from(PHONE.0), "the phone viewport");
    assert!(w[0] <= w[1], "no sideways scrolling: {w:?}");
}

#[tokio::test]
async fn a_person_uses_the_pages_on_a_phone() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        println!(
            "SKIPPED: {CHROMIUM} or {CHROMEDRIVER} is missing (Debian packages chromium, \
             chromium-driver): the pages were not driven in a browser"
        );
        return;
    }
    let server = TestServer::start().await;
    let mut cat = server.catalog().await;
    let mut spec = cat
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    for c in &mut spec.consents {
        if c.id == "marketing.orbit" {
            c.double_opt_in = true;
        }
    }
    cat.apply_catalog(spec).await.unwrap();
    let mut cons = server.consents().await;
    let profile = tempfile::tempdir().unwrap();
    let (_driver, client) = browser(profile.path(), "en-GB,en").await;

    // 1. The preference center: tick the Acme newsletter, save.
    let url = cons
        .issue_preference_link(pb::IssuePreferenceLinkRequest {
            contact_id: "pia".into(),
            purpose: String::new(),
            brand: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    client.goto(&url).await.unwrap();
    let page = wait_for(&client, "Save my choices").await;
    assert!(page.contains("Acme Outdoor"), "the brand's display name");
    fits_the_phone(&client).await;
    snap(&client, "1-preferences").await;
    let boxes = client
        .find_all(Locator::Css("input[type=checkbox]"))
        .await
        .unwrap();
    for b in &boxes {
        assert!(!b.is_selected().await.unwrap(), "nothing pre-ticked");
    }
    click(&client, "input[name=grant][value='marketing.acme.email']").await;
    click(&client, "button[type=submit]").await;
    wait_for(&client, "Saved.").await;
    snap(&client, "2-preferences-saved").await;
    let (allowed, why, by) =
        can_send(&mut server.eligibility().await, "pia", "email", "acme").await;
    assert_eq!(
        (allowed, why, by.as_str()),
        (true, Reason::Granted, "marketing.acme.email")
    );

    // 2. An unsubscribe link from an Acme mail: press the button.
    let link = unsubscribe_link(&server, "pia", "email", "acme").await;
    client.goto(&link.url).await.unwrap();
    wait_for(&client, "You are about to stop receiving").await;
    fits_the_phone(&client).await;
    snap(&client, "3-unsubscribe").await;
    click(&client, "form button").await;
    wait_for(&client, "You are unsubscribed from").await;
    snap(&client, "4-unsubscribed").await;
    // The receipt of what she just did, one tap away.
    let receipt_url = client
        .find(Locator::Css("a.receipt-link"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .expect("a link to the receipt");
    click(&client, "a.receipt-link").await;
    let page = wait_for(&client, "You withdrew your consent").await;
    assert!(page.contains("The Acme newsletter"), "{page}");
    assert!(page.contains("an unsubscribe link"), "{page}");
    fits_the_phone(&client).await;
    snap(&client, "4b-receipt").await;
    let (allowed, why, _) = can_send(&mut server.eligibility().await, "pia", "email", "acme").await;
    assert_eq!((allowed, why), (false, Reason::Withdrawn));

    // 3. A double opt-in sign-up for Orbit: confirm from the mail's link.
    let mut signup = change("pia", "marketing.orbit", None);
    signup.source = pb::Source::Form as i32;
    let r = cons.grant(signup).await.unwrap().into_inner();
    assert!(r.pending);
    let (_, why, _) = can_send(&mut server.eligibility().await, "pia", "push", "orbit").await;
    assert_eq!(why, Reason::PendingConfirmation);
    client.goto(&r.confirmation_url).await.unwrap();
    let page = wait_for(&client, "Yes, I agree").await;
    assert!(
        page.contains("Orbit Travel") && page.contains("This wasn"),
        "{page}"
    );
    fits_the_phone(&client).await;
    snap(&client, "5-confirm").await;
    click(&client, "form button").await;
    wait_for(&client, "You have confirmed").await;
    snap(&client, "6-confirmed").await;
    click(&client, "a.receipt-link").await;
    let page = wait_for(&client, "You gave your consent").await;
    assert!(page.contains("a confirmation link"), "{page}");
    let (allowed, why, by) =
        can_send(&mut server.eligibility().await, "pia", "push", "orbit").await;
    assert_eq!(
        (allowed, why, by.as_str()),
        (true, Reason::Granted, "marketing.orbit")
    );
    let last = history(&server, "pia").await.pop().unwrap();
    assert_eq!(last.source(), pb::Source::ConfirmationLink);
    assert!(
        last.evidence["user_agent"].contains("Android"),
        "the browser's own user agent is the evidence: {:?}",
        last.evidence
    );

    // 4. The umbrella granted at a shop counter: the preference center says
    //    the newsletter, stopped in step 2, goes out again through it, as
    //    CanSend answers; stopping it there stops it, and the umbrella now
    //    reaches only some of its messages.
    cons.grant(change("pia", "marketing", None)).await.unwrap();
    let (allowed, _, by) = can_send(&mut server.eligibility().await, "pia", "email", "acme").await;
    assert_eq!((allowed, by.as_str()), (true, "marketing"));
    client.goto(&url).await.unwrap();
    wait_for(&client, "Save my choices").await;
    let newsletter = "fieldset[id='c-marketing.acme.email']";
    assert_eq!(
        seen(&client, &format!("{newsletter} p.state")).await,
        "You receive these messages."
    );
    assert_eq!(
        seen(&client, &format!("{newsletter} p.through")).await,
        "Sent because you agreed to News and offers from all our brands."
    );
    snap(&client, "7-preferences-through-umbrella").await;
    click(
        &client,
        "input[name=withdraw][value='marketing.acme.email']",
    )
    .await;
    click(&client, "button[type=submit]").await;
    wait_for(&client, "Saved.").await;
    assert_eq!(
        seen(&client, &format!("{newsletter} p.state")).await,
        "You do not receive these messages."
    );
    let umbrella = "fieldset[id='c-marketing']";
    assert_eq!(
        seen(&client, &format!("{umbrella} p.state")).await,
        "You receive some of these messages."
    );
    assert_eq!(
        seen(&client, &format!("{umbrella} p.through")).await,
        "Some are not sent because you stopped The Acme newsletter."
    );
    fits_the_phone(&client).await;
    snap(&client, "8-preferences-partly").await;
    let (allowed, why, by) =
        can_send(&mut server.eligibility().await, "pia", "email", "acme").await;
    assert_eq!(
        (allowed, why, by.as_str()),
        (false, Reason::Withdrawn, "marketing.acme.email")
    );
    let (allowed, _, _) = can_send(&mut server.eligibility().await, "pia", "sms", "acme").await;
    assert!(allowed, "the rest of the umbrella still goes out");

    client.close().await.unwrap();

    // 5. The same receipt, in Polish, on her phone.
    let profile = tempfile::tempdir().unwrap();
    let (_driver, client) = browser(profile.path(), "pl-PL,pl").await;
    client.goto(&receipt_url).await.unwrap();
    let page = wait_for(&client, "Twoje potwierdzenie").await;
    assert!(page.contains("Wycofano zgodę"), "{page}");
    assert!(page.contains("link do wypisania"), "{page}");
    fits_the_phone(&client).await;
    snap(&client, "9-receipt-pl").await;
    client.close().await.unwrap();
    server.stop().await;
}

/// The visible text of the first element `css` selects.
async fn seen(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}
