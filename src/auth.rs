//! Bearer-token roles (DESIGN.md §5): `check` (Eligibility), `write`
//! (Consents), `audit` (read-only: contacts, histories, exports, wordings),
//! `admin` (Catalog, erasure).
//!
//! Every token has a name, and the name is the `actor` of whatever the
//! token records: a caller cannot claim to be someone else.
//!
//! Tokens come from configuration; only their SHA-256 is kept, and a
//! presented token is looked up by its hash, so no secret is compared byte
//! by byte. With no token configured, auth is off (the actor is empty) and
//! the server binds only loopback addresses unless told otherwise.

use std::collections::HashMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::Status;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    Check,
    Write,
    Audit,
    Admin,
    /// Reads the change feed (ChangesService.Watch).
    Watch,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s.trim() {
            "check" => Some(Role::Check),
            "write" => Some(Role::Write),
            "audit" => Some(Role::Audit),
            "admin" => Some(Role::Admin),
            "watch" => Some(Role::Watch),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        match self {
            Role::Check => 1,
            Role::Write => 2,
            Role::Audit => 8,
            Role::Admin => 4,
            Role::Watch => 16,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("token {0:?}: {1}")]
    Bad(String, String),
    #[error("tokens file: {0}")]
    File(String),
}

/// Longest token name, in bytes.
const MAX_NAME_LEN: usize = 64;

/// The configured tokens; empty means auth is off.
#[derive(Debug, Clone, Default)]
pub(crate) struct Auth {
    /// SHA-256 of the token → (name, role bits).
    tokens: HashMap<[u8; 32], (String, u8)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    token: String,
    roles: Vec<Role>,
}

impl Auth {
    /// Tokens from `--token [NAME=]ROLES:SECRET` flags (roles joined by
    /// `+`; an unnamed token is `token#N`, N counting flags from 1) and an
    /// optional TOML file of `[[tokens]] name, token, roles`.
    pub(crate) fn from_config(
        flags: &[String],
        file: Option<&std::path::Path>,
    ) -> Result<Auth, AuthError> {
        let mut auth = Auth::default();
        for (i, spec) in flags.iter().enumerate() {
            let unnamed = format!("token#{}", i + 1);
            let (head, secret) = spec.split_once(':').ok_or_else(|| {
                AuthError::Bad(
                    unnamed.clone(),
                    "expected [NAME=]ROLES:SECRET, e.g. crm=write:s3cret".into(),
                )
            })?;
            let (name, roles) = match head.split_once('=') {
                Some((name, roles)) => (name.trim().to_owned(), roles),
                None => (unnamed, head),
            };
            let roles = roles
                .split('+')
                .map(|r| {
                    Role::parse(r)
                        .ok_or_else(|| AuthError::Bad(name.clone(), format!("unknown role {r:?}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            auth.add(&name, secret, &roles)?;
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| AuthError::File(format!("{}: {e}", path.display())))?;
            let parsed: TokensFile = toml::from_str(&text)
                .map_err(|e| AuthError::File(format!("{}: {e}", path.display())))?;
            for t in parsed.tokens {
                auth.add(&t.name, &t.token, &t.roles)?;
            }
        }
        Ok(auth)
    }

    fn add(&mut self, name: &str, secret: &str, roles: &[Role]) -> Result<(), AuthError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
            return Err(AuthError::Bad(
                name.into(),
                format!("a name is 1 to {MAX_NAME_LEN} bytes without control characters"),
            ));
        }
        if name.ends_with("-page") {
            // The pages' actors (`unsubscribe-page`, `confirmation-page`,
            // `preference-page`, and any to come): an event a token records
            // must never look like a person's click on a page.
            return Err(AuthError::Bad(
                name.into(),
                "names ending in \"-page\" are reserved for consentd's own pages".into(),
            ));
        }
        if self.tokens.values().any(|(n, _)| n == name) {
            return Err(AuthError::Bad(
                name.into(),
                "two tokens share this name: the actor of an event must name one token".into(),
            ));
        }
        if secret.len() < 16 {
            return Err(AuthError::Bad(
                name.into(),
                "a token must be at least 16 characters".into(),
            ));
        }
        if roles.is_empty() {
            return Err(AuthError::Bad(
                name.into(),
                "a token needs at least one role".into(),
            ));
        }
        let bits = roles.iter().fold(0u8, |b, r| b | r.bit());
        if self
            .tokens
            .insert(hash(secret), (name.to_owned(), bits))
            .is_some()
        {
            return Err(AuthError::Bad(
                name.into(),
                "the same secret is configured twice".into(),
            ));
        }
        Ok(())
    }

    /// Whether any token is configured.
    pub(crate) fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The actor (the token's name) of a call with these HTTP/2 headers
    /// that any of `roles` may make: what the admission layer asks before
    /// a body is read. UNAUTHENTICATED without a known bearer token,
    /// PERMISSION_DENIED without the role; an empty actor when auth is off.
    pub(crate) fn admit(
        &self,
        headers: &tonic::codegen::http::HeaderMap,
        roles: &[Role],
    ) -> Result<&str, Status> {
        if !self.enabled() {
            return Ok("");
        }
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                Status::unauthenticated("a bearer token is required (authorization: Bearer ...)")
            })?;
        let (name, bits) = self
            .tokens
            .get(&hash(presented.trim()))
            .ok_or_else(|| Status::unauthenticated("unknown bearer token"))?;
        if roles.iter().all(|r| bits & r.bit() == 0) {
            return Err(Status::permission_denied(format!(
                "token {name:?} lacks the role for this call ({roles:?})",
            )));
        }
        Ok(name)
    }
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn req(token: Option<&str>) -> tonic::codegen::http::HeaderMap {
        let mut h = tonic::codegen::http::HeaderMap::new();
        if let Some(t) = token {
            h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        h
    }

    #[test]
    fn roles_are_enforced() {
        let auth = Auth::from_config(
            &[
                "check:dispatch-secret-0001".into(),
                "write+admin:crm-secret-000001".into(),
            ],
            None,
        )
        .unwrap();
        assert_eq!(
            auth.admit(&req(Some("dispatch-secret-0001")), &[Role::Check])
                .unwrap(),
            "token#1"
        );
        assert_eq!(
            auth.admit(&req(Some("dispatch-secret-0001")), &[Role::Write])
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        assert_eq!(
            auth.admit(&req(Some("crm-secret-000001")), &[Role::Admin])
                .unwrap(),
            "token#2"
        );
        assert_eq!(
            auth.admit(&req(None), &[Role::Check]).unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(
            auth.admit(&req(Some("nope-nope-nope-nope")), &[Role::Check])
                .unwrap_err()
                .code(),
            Code::Unauthenticated
        );
        assert_eq!(
            Auth::default().admit(&req(None), &[Role::Admin]).unwrap(),
            "",
            "auth off: every role, no actor"
        );
        for bad in [
            "nocolon",
            "root:long-enough-secret-1",
            "check:short",
            "=check:long-enough-secret-1",
        ] {
            assert!(Auth::from_config(&[bad.into()], None).is_err(), "{bad}");
        }
    }

    #[test]
    fn named_tokens_are_the_actor_and_names_are_unique() {
        let auth = Auth::from_config(
            &[
                "crm-sync=write:crm-secret-000001".into(),
                "dpo=audit:dpo-secret-0000001".into(),
                "write:secret=with=equals-001".into(),
            ],
            None,
        )
        .unwrap();
        assert_eq!(
            auth.admit(&req(Some("crm-secret-000001")), &[Role::Write])
                .unwrap(),
            "crm-sync"
        );
        assert_eq!(
            auth.admit(&req(Some("dpo-secret-0000001")), &[Role::Audit])
                .unwrap(),
            "dpo"
        );
        assert_eq!(
            auth.admit(&req(Some("dpo-secret-0000001")), &[Role::Write])
                .unwrap_err()
                .code(),
            Code::PermissionDenied,
            "audit is read-only"
        );
        assert_eq!(
            auth.admit(&req(Some("secret=with=equals-001")), &[Role::Write])
                .unwrap(),
            "token#3",
            "an = after the colon belongs to the secret"
        );
        let twice = Auth::from_config(
            &[
                "crm=write:crm-secret-000001".into(),
                "crm=check:other-secret-00001".into(),
            ],
            None,
        );
        assert!(twice.unwrap_err().to_string().contains("share this name"));
        // No token can pose as one of the pages, those of today or to come.
        for name in [
            "unsubscribe-page",
            "preference-page",
            "confirmation-page",
            "x-page",
        ] {
            let page = Auth::from_config(&[format!("{name}=write:crm-secret-000001")], None);
            let error = page.unwrap_err().to_string();
            assert!(
                error.contains("reserved for consentd's own pages"),
                "{name}: {error}"
            );
        }
        assert!(
            Auth::from_config(&["pages=write:crm-secret-000001".into()], None).is_ok(),
            "only the -page ending is reserved"
        );
    }
}
