//! Roles: each bearer token allowed exactly its services, everything else
//! refused; with no tokens, auth is off and only loopback is bound.

mod common;

use common::*;
use consentd::pb::{
    self, catalog_service_client::CatalogServiceClient,
    consents_service_client::ConsentsServiceClient,
    eligibility_service_client::EligibilityServiceClient,
};
use tonic::{Code, Request};

const CHECK: &str = "dispatch-0123456789abcdef";
const WRITE: &str = "crm-0123456789abcdef-wr";
const ADMIN: &str = "dpo-0123456789abcdef-ad";
const WATCH: &str = "esp-sync-0123456789abcd";

fn with<T>(token: Option<&str>, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test]
async fn each_role_allowed_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = consentd::Config::ephemeral(dir.path());
    config.catalog = Some(example_catalog_path());
    config.tokens = vec![
        format!("check:{CHECK}"),
        format!("write:{WRITE}"),
        format!("admin:{ADMIN}"),
        format!("watch:{WATCH}"),
    ];
    let server = TestServer::start_with(config).await;
    let ch = server.channel().await;
    let mut elig = EligibilityServiceClient::new(ch.clone());
    let mut cons = ConsentsServiceClient::new(ch.clone());
    let mut cat = CatalogServiceClient::new(ch);

    for (token, check_code, write, admin) in [
        (
            None,
            Code::Unauthenticated,
            Code::Unauthenticated,
            Code::Unauthenticated,
        ),
        (
            Some("not-a-known-token-at-all"),
            Code::Unauthenticated,
            Code::Unauthenticated,
            Code::Unauthenticated,
        ),
        (
            Some(CHECK),
            Code::Ok,
            Code::PermissionDenied,
            Code::PermissionDenied,
        ),
        (
            Some(WRITE),
            Code::PermissionDenied,
            Code::Ok,
            Code::PermissionDenied,
        ),
        (
            Some(ADMIN),
            Code::PermissionDenied,
            Code::PermissionDenied,
            Code::Ok,
        ),
    ] {
        assert_eq!(
            code(
                elig.can_send(with(token, check("c", "email", "acme")))
                    .await
            ),
            check_code,
            "{token:?} CanSend"
        );
        assert_eq!(
            code(
                elig.can_send_batch(with(
                    token,
                    pb::CanSendBatchRequest {
                        checks: vec![],
                        min_sequence: 0
                    }
                ))
                .await
            ),
            check_code,
            "{token:?} CanSendBatch"
        );
        assert_eq!(
            code(
                cons.grant(with(
                    token,
                    pb::GrantRequest::from(change("c", "marketing", None))
                ))
                .await
            ),
            write,
            "{token:?} Grant"
        );
        assert_eq!(
            code(
                cons.get_history(with(
                    token,
                    pb::GetHistoryRequest {
                        contact_id: "c".into(),
                        ..Default::default()
                    }
                ))
                .await
            ),
            write,
            "{token:?} GetHistory"
        );
        // Reading the catalog: any known token.
        let any_role = if check_code == Code::Unauthenticated {
            check_code
        } else {
            Code::Ok
        };
        assert_eq!(
            code(cat.get_catalog(with(token, pb::GetCatalogRequest {})).await),
            any_role,
            "{token:?} GetCatalog"
        );
        // Changing it: admin only.
        let spec = example_catalog();
        assert_eq!(
            code(
                cat.apply_catalog(with(
                    token,
                    pb::ApplyCatalogRequest {
                        catalog: Some(spec),
                    },
                ))
                .await
            ),
            admin,
            "{token:?} ApplyCatalog"
        );
        assert_eq!(
            code(
                cons.erase_contact(with(
                    token,
                    pb::EraseContactRequest {
                        contact_id: "zz".into(),
                        reason: "test".into()
                    }
                ))
                .await
            ),
            admin,
            "{token:?} EraseContact"
        );
    }
    // Watch: the `watch` role (or `audit`), no other.
    let mut changes =
        consentd::pb::changes_service_client::ChangesServiceClient::new(server.channel().await);
    for (token, expected) in [
        (Some(WATCH), Code::Ok),
        (Some(CHECK), Code::PermissionDenied),
        (Some(WRITE), Code::PermissionDenied),
        (Some(ADMIN), Code::PermissionDenied),
        (None, Code::Unauthenticated),
    ] {
        let got = code(
            changes
                .watch(with(token, pb::WatchRequest::default()))
                .await,
        );
        assert_eq!(got, expected, "{token:?} Watch");
    }
    // A watch token reads nothing else.
    assert_eq!(
        code(
            elig.can_send(with(Some(WATCH), check("a", "email", "acme")))
                .await
        ),
        Code::PermissionDenied
    );
    server.stop().await;
}

#[tokio::test]
async fn without_tokens_a_public_address_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = consentd::Config::ephemeral(dir.path());
    config.grpc_addr = "0.0.0.0:0".parse().unwrap();
    let err = consentd::server::Server::bind(&config)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("--allow-unauthenticated"), "{err}");

    config.allow_unauthenticated = true;
    let server = TestServer::start_with(config).await;
    server.stop().await;
}

#[tokio::test]
async fn every_event_names_its_actor_and_audit_only_reads() {
    const CRM: &str = "crm-sync-0123456789abcdef";
    const DPO: &str = "dpo-audit-0123456789abcd";
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[tokens]]\nname = \"crm-sync\"\ntoken = \"{CRM}\"\nroles = [\"write\"]\n\n\
             [[tokens]]\nname = \"dpo\"\ntoken = \"{DPO}\"\nroles = [\"audit\"]\n"
        ),
    )
    .unwrap();
    let mut config = consentd::Config::ephemeral(dir.path().join("data"));
    config.catalog = Some(example_catalog_path());
    config.tokens_file = Some(tokens);
    config.tokens = vec![format!("dispatch=check:{CHECK}")];
    let server = TestServer::start_with(config.clone()).await;
    let ch = server.channel().await;
    let mut elig = EligibilityServiceClient::new(ch.clone());
    let mut cons = ConsentsServiceClient::new(ch.clone());
    let mut cat = CatalogServiceClient::new(ch);

    cons.grant(with(
        Some(CRM),
        pb::GrantRequest::from(change("anna", "marketing", None)),
    ))
    .await
    .unwrap();
    let row = pb::ImportRequest {
        action: pb::Action::Grant as i32,
        change: Some(change("anna", "surveys", Some(now() - 60))),
    };
    let summary = cons
        .import(with(Some(CRM), tokio_stream::iter(vec![row])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.applied, 1);
    let link = cons
        .issue_unsubscribe_link(with(
            Some(CRM),
            pb::IssueUnsubscribeLinkRequest {
                to: None,
                contact_id: "anna".into(),
                channel: "email".into(),
                brand: "acme".into(),
                purpose: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let path = link_path(&server, &link.url);
    let (status, _, _) = http(
        server.http_addr,
        "POST",
        &path,
        &[],
        "List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(status, 200);

    // The auditor reads everything, and sees who recorded what.
    let history = cons
        .get_history(with(
            Some(DPO),
            pb::GetHistoryRequest {
                contact_id: "anna".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let actors: Vec<_> = history.iter().map(|e| e.actor.as_str()).collect();
    assert_eq!(actors, ["crm-sync", "crm-sync", "unsubscribe-page"]);
    let get = |consent_id: &str| pb::GetWordingsRequest {
        consent_id: consent_id.into(),
    };
    assert_eq!(
        code(cat.get_wordings(with(Some(DPO), get("marketing"))).await),
        Code::Ok
    );
    assert_eq!(
        code(
            cat.get_catalog(with(Some(DPO), pb::GetCatalogRequest {}))
                .await
        ),
        Code::Ok
    );
    let contact = pb::GetContactRequest {
        as_of: None,
        contact_id: "anna".into(),
        min_sequence: 0,
    };
    assert_eq!(
        code(cons.get_contact(with(Some(DPO), contact)).await),
        Code::Ok
    );
    let export = cons
        .export_contact(with(
            Some(DPO),
            pb::ExportContactRequest {
                contact_id: "anna".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(export.events.len(), 3);
    assert_eq!(export.events[2].actor, "unsubscribe-page");
    assert_eq!(
        code(cat.get_wordings(with(Some(CHECK), get("marketing"))).await),
        Code::PermissionDenied,
        "a dispatcher reads no wordings"
    );

    // ...and changes nothing.
    let denied = [
        code(
            cons.grant(with(
                Some(DPO),
                pb::GrantRequest::from(change("anna", "marketing", None)),
            ))
            .await,
        ),
        code(
            cons.withdraw(with(
                Some(DPO),
                pb::WithdrawRequest::from(change("anna", "marketing", None)),
            ))
            .await,
        ),
        code(
            cons.erase_contact(with(
                Some(DPO),
                pb::EraseContactRequest {
                    contact_id: "anna".into(),
                    reason: "audit tries".into(),
                },
            ))
            .await,
        ),
        code(
            cat.apply_catalog(with(
                Some(DPO),
                pb::ApplyCatalogRequest {
                    catalog: Some(example_catalog()),
                },
            ))
            .await,
        ),
        code(
            elig.can_send(with(Some(DPO), check("anna", "email", "acme")))
                .await,
        ),
    ];
    assert!(
        denied.iter().all(|c| *c == Code::PermissionDenied),
        "{denied:?}"
    );
    assert_eq!(
        history_len(&mut cons, DPO, "anna").await,
        3,
        "nothing recorded"
    );
    server.stop().await;

    // The actors are part of the record: they survive a restart.
    let server = TestServer::start_with(config).await;
    let mut cons = ConsentsServiceClient::new(server.channel().await);
    let history = cons
        .get_history(with(
            Some(DPO),
            pb::GetHistoryRequest {
                contact_id: "anna".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let actors: Vec<_> = history.iter().map(|e| e.actor.as_str()).collect();
    assert_eq!(actors, ["crm-sync", "crm-sync", "unsubscribe-page"]);
    server.stop().await;
}

async fn history_len(
    cons: &mut ConsentsServiceClient<tonic::transport::Channel>,
    token: &str,
    contact: &str,
) -> usize {
    cons.get_history(with(
        Some(token),
        pb::GetHistoryRequest {
            contact_id: contact.into(),
            ..Default::default()
        },
    ))
    .await
    .unwrap()
    .into_inner()
    .events
    .len()
}

#[tokio::test]
async fn tokens_are_checked_before_a_body_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = consentd::Config::ephemeral(dir.path());
    config.catalog = Some(example_catalog_path());
    config.tokens = vec![format!("dispatch=check:{CHECK}")];
    let server = TestServer::start_with(config).await;
    let mut elig = EligibilityServiceClient::new(server.channel().await);
    // 12 MiB of checks: over every message limit, so a server that decoded
    // before checking the token would answer "message too large" instead.
    let big = || pb::CanSendBatchRequest {
        checks: (0..25_000)
            .map(|i| {
                let mut c = check(&format!("{i:0>480}"), "email", "acme");
                c.purpose = String::new();
                c
            })
            .collect(),
        min_sequence: 0,
    };
    for token in [None, Some("not-a-known-token-at-all")] {
        let refused = elig.can_send_batch(with(token, big())).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }
    let too_big = elig
        .can_send_batch(with(Some(CHECK), big()))
        .await
        .unwrap_err();
    assert_ne!(too_big.code(), Code::Unauthenticated);
    assert_ne!(too_big.code(), Code::Ok);
    // Health and reflection stay open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    server.stop().await;
}
