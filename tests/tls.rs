//! Optional TLS for gRPC from PEM files.

mod common;

use common::*;
use consentd::pb::{self, eligibility_service_client::EligibilityServiceClient};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

#[tokio::test]
async fn grpc_over_tls_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();

    let mut config = consentd::Config::ephemeral(dir.path().join("data"));
    config.catalog = Some(example_catalog_path());
    config.tls_cert = Some(cert);
    config.tls_key = Some(key);
    let server = TestServer::start_with(config).await;

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ck.cert.pem()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", server.grpc_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut elig = EligibilityServiceClient::new(channel);
    let r = elig
        .can_send(check("c", "email", "acme"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.reason(), pb::Reason::NoConsent);

    // A plaintext client gets nowhere.
    let plain = Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        assert!(
            EligibilityServiceClient::new(ch)
                .can_send(check("c", "email", "acme"))
                .await
                .is_err()
        );
    }
    server.stop().await;
}
