//! Roles: each bearer token allowed exactly its services, everything else
//! refused; with no tokens, auth is off and only loopback is bound.

mod common;

use common::*;
use consentd::pb::{
    self, catalog_client::CatalogClient, consents_client::ConsentsClient,
    eligibility_client::EligibilityClient,
};
use tonic::{Code, Request};

const CHECK: &str = "dispatch-0123456789abcdef";
const WRITE: &str = "crm-0123456789abcdef-wr";
const ADMIN: &str = "dpo-0123456789abcdef-ad";

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
    ];
    let server = TestServer::start_with(config).await;
    let ch = server.channel().await;
    let mut elig = EligibilityClient::new(ch.clone());
    let mut cons = ConsentsClient::new(ch.clone());
    let mut cat = CatalogClient::new(ch);

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
                elig.can_send_batch(with(token, pb::CanSendBatchRequest { checks: vec![] }))
                    .await
            ),
            check_code,
            "{token:?} CanSendBatch"
        );
        assert_eq!(
            code(
                cons.grant(with(token, change("c", "marketing", None)))
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
                        contact_id: "c".into()
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
            code(cat.apply_catalog(with(token, spec)).await),
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
