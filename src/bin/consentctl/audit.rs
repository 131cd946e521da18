//! `consentctl audit`: the evidence an outsider can check (DESIGN.md §11),
//! read from the store itself, no server needed (a redb file is locked by
//! a running server: verify a copy, or stop it):
//!
//! - `key --signing-key FILE` prints the public key (base64 of the raw 32
//!   bytes, or `--pem` for `openssl pkeyutl -verify -pubin`);
//! - `checkpoint --store …` prints the latest signed checkpoint;
//! - `verify --store … --key KEY [--checkpoint FILE]…` recomputes the
//!   chain and every checkpoint signature; exits 1 naming the first
//!   sequence that does not verify.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use consentd::audit::note::{self, Signer};
use consentd::audit::{VerifyError, verify};
use serde_json::json;

use crate::migrate::Place;

/// Checkpoints read per page.
const PAGE: usize = 10_000;

pub(crate) fn key(signing_key: &Path, pem: bool, json_mode: bool) -> anyhow::Result<()> {
    if !signing_key.exists() {
        bail!(
            "{} does not exist (consentd creates it at first start)",
            signing_key.display()
        );
    }
    let signer = Signer::load_or_create(signing_key, "consentd")?;
    let public = signer.public_key_base64();
    if json_mode {
        let pem = note::public_key_pem(&signer.verifying_key());
        println!("{}", json!({ "public_key": public, "pem": pem }));
    } else if pem {
        print!("{}", note::public_key_pem(&signer.verifying_key()));
    } else {
        println!("{public}");
    }
    Ok(())
}

pub(crate) fn checkpoint(store: &str, json_mode: bool) -> anyhow::Result<()> {
    let place = Place::parse(store)?;
    let opened = place.open(true)?;
    let (mut after, mut latest) = (0, None);
    loop {
        let page = opened.transfer.checkpoints(after, PAGE)?;
        let Some(last) = page.last().cloned() else {
            break;
        };
        after = last.0;
        latest = Some(last);
    }
    let Some((sequence, text)) = latest else {
        bail!("{} keeps no checkpoint yet", place.shown());
    };
    if json_mode {
        println!("{}", json!({ "sequence": sequence, "note": text }));
    } else {
        print!("{text}");
    }
    Ok(())
}

/// A public key given as base64, as PEM, or as a file holding either.
fn read_key(key: &str) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    let text = if Path::new(key).is_file() {
        std::fs::read_to_string(key).with_context(|| format!("reading {key}"))?
    } else {
        key.to_owned()
    };
    note::parse_public_key(&text).map_err(|e| anyhow::anyhow!("--key: {e}"))
}

pub(crate) fn verify_store(
    store: &str,
    key: &str,
    checkpoints: &[PathBuf],
    json_mode: bool,
) -> anyhow::Result<()> {
    let key = read_key(key)?;
    let extra = checkpoints
        .iter()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let place = Place::parse(store)?;
    let opened = place.open(true)?;
    let started = std::time::Instant::now();
    let result = verify(&*opened.transfer, &key, &extra, &mut |n| {
        if !json_mode {
            eprint!("\rverified {n} records");
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    if !json_mode {
        eprintln!();
    }
    match result {
        Ok(v) => {
            let head = v.head.map_or(0, |(s, _)| s);
            if json_mode {
                println!(
                    "{}",
                    json!({
                        "verified": true, "store": place.shown(), "records": v.records,
                        "erased": v.erased, "checkpoints": v.checkpoints, "head": head,
                        "seconds": seconds,
                    })
                );
            } else {
                println!(
                    "verified {}: {} records and {} erased records linked through sequence {head}, {} signed checkpoints, in {seconds:.1} s",
                    place.shown(),
                    v.records,
                    v.erased,
                    v.checkpoints
                );
            }
            Ok(())
        }
        Err(VerifyError::Store(e)) => Err(e).context(format!("reading {}", place.shown())),
        Err(e) => {
            let sequence = match &e {
                VerifyError::Failed { sequence, .. } => Some(*sequence),
                _ => None,
            };
            if json_mode {
                println!(
                    "{}",
                    json!({ "verified": false, "store": place.shown(), "sequence": sequence,
                            "error": e.to_string() })
                );
                std::process::exit(1);
            }
            bail!("{}: {e}", place.shown())
        }
    }
}
