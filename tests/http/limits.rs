//! How the public listener bounds its clients: connections over the cap,
//! requests that never finish arriving, and pages that may not be framed.

use super::*;

#[tokio::test]
async fn connections_over_the_cap_are_closed_and_grpc_is_untouched() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let mut config = consentd::Config::ephemeral(dir.path());
    config.catalog = Some(example_catalog_path());
    config.http_max_connections = 8;
    let server = TestServer::start_with(config).await;
    let held = half_open(server.http_addr, 8).await;
    assert_eq!(held.len(), 8);
    let mut elig = server.eligibility().await;
    assert!(!can_send(&mut elig, "anna", "email", "acme").await.0);
    let mut ninth = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), ninth.read(&mut buf))
        .await
        .expect("the ninth connection is closed at once, not left hanging");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // gRPC and the admin listener are untouched.
    assert!(!can_send(&mut elig, "anna", "email", "acme").await.0);
    let (status, _, _) = http(server.admin_addr, "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
    drop(held);
    // Once they go (the server sees them close), the listener serves again.
    let mut answered = false;
    for _ in 0..100 {
        let mut s = tokio::net::TcpStream::connect(server.http_addr)
            .await
            .unwrap();
        use tokio::io::AsyncWriteExt;
        s.write_all(b"GET /u/abc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        if out.starts_with(b"HTTP/1.1 404") {
            answered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        answered,
        "the listener serves again once the slots are free"
    );
    server.stop().await;
}

#[tokio::test]
async fn no_page_may_be_framed() {
    let server = TestServer::start().await;
    let mut cons = server.consents().await;
    cons.grant(change("anna", "marketing", Some(now() - 60)))
        .await
        .unwrap();
    let link = unsubscribe_link(&server, "anna", "email", "acme").await;
    let path = link_path(&server, &link.url);
    // The unsubscribe page, the preference page it links to, the one 404.
    let (_, _, body) = http(server.http_addr, "GET", &path, &[], "").await;
    let prefs = preference_path_in(&body);
    for page in [path.as_str(), prefs.as_str(), "/u/not-a-token"] {
        let (_, head, _) = http(server.http_addr, "GET", page, &[], "").await;
        let head = head.to_ascii_lowercase();
        assert!(head.contains("x-frame-options: deny"), "{page}: {head}");
        assert!(
            head.contains("content-security-policy: frame-ancestors 'none'"),
            "{page}: {head}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn stalled_requests_do_not_lock_people_out() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut config = consentd::Config::ephemeral(dir.path());
    config.catalog = Some(example_catalog_path());
    config.http_max_connections = 8;
    let server = TestServer::start_with(config).await;
    let link = unsubscribe_link(&server, "anna", "email", "acme").await;
    let path = link_path(&server, &link.url);
    // Eight connections send a POST's headers and never its body.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut s = tokio::net::TcpStream::connect(server.http_addr)
            .await
            .unwrap();
        s.write_all(
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nList-")
                .as_bytes(),
        )
        .await
        .unwrap();
        stalled.push(s);
    }
    // The whole request must arrive within 10 s: then they are answered and
    // closed, and the page is reachable again (well before 45 s).
    let started = std::time::Instant::now();
    loop {
        use tokio::io::AsyncReadExt;
        // Over the cap a connection is closed at once: tolerate that.
        let mut s = tokio::net::TcpStream::connect(server.http_addr)
            .await
            .unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let _ = s.write_all(request.as_bytes()).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        if out.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the page stayed unreachable"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    drop(stalled);
    server.stop().await;
}
