//! TLS 1.3 and mutual TLS with real certificates (made by rcgen in the
//! test): pulls and pushes as a verified identity, the access rules of
//! SPEC.md §8.9, per-identity bounds, and each way a handshake is refused,
//! with a clear message on both sides.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::pki::{CertFiles, Pki};
use common::{bytes, TempDir, TestServer};
use tensorwire::transport::{Access, Client, ClientTls, Config, Registry, Server, ServerEvent, ServerTls};
use tensorwire::Error;

type Events = Arc<Mutex<Vec<ServerEvent>>>;

fn server_config(pki: &Pki, mutual: bool) -> Config {
    let mut tls = ServerTls::from_pem_files(&pki.server.cert, &pki.server.key).expect("server cert");
    if mutual {
        tls = tls.with_client_ca_file(&pki.ca).expect("client CA");
    }
    Config { server_tls: Some(tls.build().expect("server TLS")), ..Config::default() }
}

fn client_config(ca: &std::path::Path, identity: Option<&CertFiles>) -> Config {
    let mut tls = ClientTls::new().with_ca_file(ca).expect("CA");
    if let Some(id) = identity {
        tls = tls.with_identity_files(&id.cert, &id.key).expect("client cert");
    }
    Config { client_tls: Some(tls.build().expect("client TLS")), ..Config::default() }
}

async fn start(registry: Registry, config: Config) -> (TestServer, Events) {
    let events: Events = Arc::default();
    let sink = Arc::clone(&events);
    let server = Server::bind("127.0.0.1:0", registry, config).await.expect("bind");
    let server = server.with_events(Arc::new(move |e: &ServerEvent| sink.lock().expect("lock").push(e.clone())));
    (TestServer::run(server), events)
}

/// Waits (at most 5 s) for an event that `want` accepts, and returns its text.
async fn wait_event(events: &Events, want: impl Fn(&ServerEvent) -> bool) -> String {
    for _ in 0..500 {
        if let Some(e) = events.lock().expect("lock").iter().find(|e| want(e)) {
            return e.to_string();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no such event; got {:?}", events.lock().expect("lock"));
}

fn connection_failed(e: &ServerEvent) -> bool {
    matches!(e, ServerEvent::ConnectionFailed { .. })
}

/// Connects and pulls `name`; the error, if any, as the client reports it.
async fn pull(
    server: &TestServer,
    name: &str,
    server_name: &str,
    config: Config,
    dest: &std::path::Path,
) -> Result<(), Error> {
    let client = Client::connect_tls(server.addr, server_name, config).await?;
    client.get_file(name, dest).await.map(|_| ())
}

/// A container of one f32 tensor of `numel` values.
fn one_tensor(name: &str, numel: usize) -> tensorwire::send::ContainerStreamer {
    let data = bytes::Bytes::from(bytes(numel * 4, 3));
    let t =
        tensorwire::tensor::Tensor::new("w", tensorwire::wire::Dtype::F32, vec![numel as u64], data).expect("tensor");
    tensorwire::send::ContainerStreamer::from_tensors(name, futures::stream::iter(vec![Ok(t)]))
}

fn root_with(files: &[(&str, usize)]) -> TempDir {
    let dir = TempDir::new("tls-root");
    for (i, (name, len)) in files.iter().enumerate() {
        dir.file(name, &bytes(*len, i as u64 + 1));
    }
    std::fs::create_dir_all(dir.join("updates")).expect("mkdir");
    dir
}

/// A mutual-TLS server over `root`, with these rules.
async fn mutual(pki: &Pki, registry: Registry) -> (TestServer, Events) {
    start(registry, server_config(pki, true)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_pulls_and_pushes_as_a_verified_identity() {
    let pki = Pki::new("tls-ok");
    let root = root_with(&[("global.bin", 2_500_000)]);
    let registry =
        Registry::root(root.path()).expect("root").allow_push(Access::only(["site-*=updates/"]).expect("rule"));
    let (server, events) = mutual(&pki, registry).await;
    let site = pki.client("site-1", &["site-1.example.org"]);
    let client = Client::connect_tls(server.addr, "127.0.0.1", client_config(&pki.ca, Some(&site))).await.expect("TLS");

    let local = TempDir::new("tls-ok-local");
    let got = client.get_file("global.bin", local.join("global.bin")).await.expect("pull over TLS");
    assert_eq!(got.len, 2_500_000);
    assert_eq!(
        std::fs::read(local.join("global.bin")).expect("read"),
        std::fs::read(root.join("global.bin")).expect("src")
    );

    let update = local.file("update.bin", &bytes(700_000, 42));
    client.put_file(&update, "updates/site-1.bin").await.expect("push under the allowed prefix");
    assert_eq!(std::fs::read(root.join("updates/site-1.bin")).expect("pushed"), bytes(700_000, 42));

    // The log names the verified identity with each request.
    let line = wait_event(&events, |e| matches!(e, ServerEvent::Request { status: 201, .. })).await;
    assert!(line.contains("(CN=site-1 SAN=site-1.example.org) PUT updates/site-1.bin -> 201"), "{line}");
    server.stop().await;
}

/// SPEC.md §8.9: outside its prefix, or from an identity no rule names, a
/// push is a 403 and nothing is created under the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_push_is_403_before_any_byte_is_written() {
    let pki = Pki::new("tls-403");
    let root = root_with(&[("global.bin", 1000)]);
    let registry =
        Registry::root(root.path()).expect("root").allow_push(Access::only(["site-*=updates/"]).expect("rule"));
    let (server, events) = mutual(&pki, registry).await;
    let local = TempDir::new("tls-403-local");
    let update = local.file("update.bin", &bytes(3_000_000, 7));
    let original = std::fs::read(root.join("global.bin")).expect("src");

    let site = Client::connect_tls(server.addr, "127.0.0.1", client_config(&pki.ca, Some(&pki.client("site-1", &[]))))
        .await
        .expect("TLS");
    let err = site.put_file(&update, "global.bin").await.expect_err("outside the prefix");
    assert!(matches!(&err, Error::Status { status: 403, message } if message.contains("may not push")), "{err}");

    let mallory =
        Client::connect_tls(server.addr, "127.0.0.1", client_config(&pki.ca, Some(&pki.client("mallory", &[]))))
            .await
            .expect("TLS");
    let err = mallory.put_file(&update, "updates/site-1.bin").await.expect_err("no rule names mallory");
    assert!(matches!(&err, Error::Status { status: 403, .. }), "{err}");

    assert_eq!(std::fs::read(root.join("global.bin")).expect("src"), original, "the served model was overwritten");
    assert_eq!(std::fs::read_dir(root.join("updates")).expect("dir").count(), 0, "something was written");
    assert!(!root.join("global.bin.part").exists());
    let line = wait_event(&events, |e| matches!(e, ServerEvent::Request { status: 403, .. })).await;
    assert!(line.contains("CN=site-1") && line.contains("may not push"), "{line}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_handler_receives_the_verified_peer() {
    use futures::FutureExt;
    use tensorwire::transport::{Peer, PushHandler, TransferOptions};
    let pki = Pki::new("tls-handler");
    let seen: Arc<Mutex<Option<Peer>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let handler: PushHandler = Arc::new(move |_name, peer, mut tensors| {
        *sink.lock().expect("lock") = Some(peer);
        async move {
            use futures::StreamExt;
            while let Some(t) = tensors.next().await {
                t?;
            }
            Ok(())
        }
        .boxed()
    });
    let registry =
        Registry::new().with_push_handler(handler).allow_push(Access::only(["*.hospital.example"]).expect("rule"));
    let (server, _) = mutual(&pki, registry).await;
    let id = pki.client("site-3", &["node3.hospital.example", "10.1.2.3"]);
    let client = Client::connect_tls(server.addr, "localhost", client_config(&pki.ca, Some(&id))).await.expect("TLS");
    client.put_container(one_tensor("update", 64 * 64), &TransferOptions::default()).await.expect("push");
    let peer = seen.lock().expect("lock").clone().expect("the handler ran");
    let identity = peer.identity().expect("a verified identity");
    assert_eq!(identity.common_name(), Some("site-3"));
    assert_eq!(identity.alt_names(), ["node3.hospital.example", "10.1.2.3"]);
    assert_eq!(peer.addr().map(|a| a.ip()), Some(std::net::Ipv4Addr::LOCALHOST.into()));
    server.stop().await;
}

/// `--allow-get`: only named identities may pull; a TLS client without a
/// certificate (the server has no client CA here) is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_rules_refuse_other_peers_with_403() {
    let pki = Pki::new("tls-get");
    let root = root_with(&[("global.bin", 1000)]);
    let registry = Registry::root(root.path()).expect("root").allow_get(Access::only(["site-1"]).expect("rule"));
    let (server, _) = mutual(&pki, registry.clone()).await;
    let local = TempDir::new("tls-get-local");
    let dest = local.join("g.bin");
    pull(&server, "global.bin", "127.0.0.1", client_config(&pki.ca, Some(&pki.client("site-1", &[]))), &dest)
        .await
        .expect("site-1 may pull");
    let err = pull(&server, "global.bin", "127.0.0.1", client_config(&pki.ca, Some(&pki.client("site-2", &[]))), &dest)
        .await
        .expect_err("site-2 may not");
    assert!(matches!(&err, Error::Status { status: 403, message } if message.contains("may not pull")), "{err}");
    server.stop().await;

    let (server, _) = start(registry, server_config(&pki, false)).await;
    let err =
        pull(&server, "global.bin", "127.0.0.1", client_config(&pki.ca, None), &dest).await.expect_err("anonymous");
    assert!(matches!(&err, Error::Status { status: 403, .. }), "{err}");
    server.stop().await;
}

/// Runs one refused case: the client's error and the server's log line.
async fn refused(pki: &Pki, client: Config, server_name: &str) -> (String, String) {
    let root = root_with(&[("m.bin", 1000)]);
    let (server, events) = mutual(pki, Registry::root(root.path()).expect("root")).await;
    let dest = root.join("out.bin");
    let err = pull(&server, "m.bin", server_name, client, &dest).await.expect_err("must be refused");
    assert!(matches!(err, Error::Tls(_)), "not a TLS error: {err:?}");
    assert!(!dest.exists());
    let line = wait_event(&events, connection_failed).await;
    server.stop().await;
    (err.to_string(), line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_client_without_certificate() {
    let pki = Pki::new("tls-nocert");
    let (client, server) = refused(&pki, client_config(&pki.ca, None), "127.0.0.1").await;
    assert!(client.contains("CertificateRequired") && client.contains("use --cert and --key"), "{client}");
    assert!(server.contains("peer sent no certificates"), "{server}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_certificate_from_another_ca() {
    let pki = Pki::new("tls-otherca");
    let (client, server) =
        refused(&pki, client_config(&pki.ca, Some(&pki.foreign_client("site-1"))), "127.0.0.1").await;
    assert!(client.contains("UnknownCA") && client.contains("does not trust the CA"), "{client}");
    assert!(server.contains("invalid peer certificate: UnknownIssuer"), "{server}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_an_expired_certificate() {
    let pki = Pki::new("tls-expired");
    let (client, server) =
        refused(&pki, client_config(&pki.ca, Some(&pki.expired_client("site-1"))), "127.0.0.1").await;
    assert!(client.contains("CertificateExpired"), "{client}");
    assert!(server.contains("certificate expired"), "{server}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_server_with_the_wrong_name() {
    let pki = Pki::new("tls-name");
    let id = pki.client("site-1", &[]);
    let (client, server) = refused(&pki, client_config(&pki.ca, Some(&id)), "models.wrong.example").await;
    assert!(client.contains("not valid for name \"models.wrong.example\""), "{client}");
    assert!(server.contains("BadCertificate") && server.contains("rejected this side's certificate"), "{server}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_server_whose_certificate_the_client_does_not_trust() {
    let pki = Pki::new("tls-servca");
    let id = pki.client("site-1", &[]);
    let (client, server) = refused(&pki, client_config(&pki.other_ca, Some(&id)), "127.0.0.1").await;
    assert!(client.contains("invalid peer certificate: UnknownIssuer"), "{client}");
    assert!(server.contains("UnknownCA") && server.contains("does not trust the CA"), "{server}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_cleartext_client_on_the_tls_port() {
    let pki = Pki::new("tls-h2c");
    let root = root_with(&[("m.bin", 1000)]);
    let (server, events) = mutual(&pki, Registry::root(root.path()).expect("root")).await;
    // The client proves the peer speaks HTTP/2 before it returns, so the
    // connection itself is refused, with the reason.
    let err = Client::connect(server.addr, Config::default()).await.expect_err("must fail");
    assert!(err.to_string().contains("the server speaks TLS on this port: use an https:// URL"), "{err}");
    let line = wait_event(&events, connection_failed).await;
    assert!(line.contains("InvalidContentType") && line.contains("does the peer speak TLS?"), "{line}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_tls_client_on_a_cleartext_port() {
    let pki = Pki::new("tls-on-h2c");
    let root = root_with(&[("m.bin", 1000)]);
    let (server, events) = start(Registry::root(root.path()).expect("root"), Config::default()).await;
    let err = pull(&server, "m.bin", "127.0.0.1", client_config(&pki.ca, None), &root.join("out.bin"))
        .await
        .expect_err("must fail");
    assert!(err.to_string().contains("does the peer speak TLS?"), "{err}");
    let line = wait_event(&events, connection_failed).await;
    assert!(line.contains("a TLS client on this cleartext (h2c) port"), "{line}");
    server.stop().await;
}

/// SPEC.md §8.9: one identity's connections beyond its bound get 503s;
/// another identity is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_bounded_per_identity() {
    let pki = Pki::new("tls-conns");
    let root = root_with(&[("m.bin", 1000)]);
    let config = Config { max_connections_per_identity: 1, ..server_config(&pki, true) };
    let (server, events) = start(Registry::root(root.path()).expect("root"), config).await;
    let site1 = client_config(&pki.ca, Some(&pki.client("site-1", &[])));
    let dest = root.join("out.bin");
    let first = Client::connect_tls(server.addr, "127.0.0.1", site1.clone()).await.expect("TLS");
    first.get_file("m.bin", &dest).await.expect("first connection works");
    let second = Client::connect_tls(server.addr, "127.0.0.1", site1.clone()).await.expect("TLS");
    let err = second.get_file("m.bin", &dest).await.expect_err("over the bound");
    assert!(
        matches!(&err, Error::Status { status: 503, message } if message.contains("too many connections")),
        "{err}"
    );
    assert!(err.is_retryable());
    wait_event(&events, |e| matches!(e, ServerEvent::IdentityOverLimit { .. })).await;
    pull(&server, "m.bin", "127.0.0.1", client_config(&pki.ca, Some(&pki.client("site-2", &[]))), &dest)
        .await
        .expect("another identity is not starved");
    drop((first, second));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_bounded_per_identity_across_connections() {
    use futures::FutureExt;
    use tensorwire::transport::{PushHandler, TransferOptions};
    let pki = Pki::new("tls-streams");
    let release = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(tokio::sync::Notify::new());
    let (r, e) = (Arc::clone(&release), Arc::clone(&entered));
    // The handler takes the whole update, then holds its push open until released.
    let handler: PushHandler = Arc::new(move |_, _, mut tensors| {
        let (r, e) = (Arc::clone(&r), Arc::clone(&e));
        async move {
            use futures::StreamExt;
            while let Some(t) = tensors.next().await {
                t?;
            }
            e.notify_one();
            r.notified().await;
            Ok(())
        }
        .boxed()
    });
    let config = Config { max_streams_per_identity: 1, ..server_config(&pki, true) };
    let (server, _) = start(Registry::new().with_push_handler(handler).accept_pushes(true), config).await;
    let site1 = client_config(&pki.ca, Some(&pki.client("site-1", &[])));
    let push =
        |client: Client| async move { client.put_container(one_tensor("u", 8), &TransferOptions::default()).await };
    let a = Client::connect_tls(server.addr, "127.0.0.1", site1.clone()).await.expect("TLS");
    let held = tokio::spawn(push(a));
    tokio::time::timeout(Duration::from_secs(5), entered.notified()).await.expect("first push reached the handler");
    let b = Client::connect_tls(server.addr, "127.0.0.1", site1).await.expect("TLS");
    let err = push(b).await.expect_err("a second concurrent request of site-1");
    assert!(matches!(&err, Error::Status { status: 503, message } if message.contains("concurrent requests")), "{err}");
    let other = Client::connect_tls(server.addr, "127.0.0.1", client_config(&pki.ca, Some(&pki.client("site-2", &[]))))
        .await
        .expect("TLS");
    let other_push = tokio::spawn(push(other));
    tokio::time::timeout(Duration::from_secs(5), entered.notified()).await.expect("site-2 is not starved");
    release.notify_waiters();
    release.notify_one();
    held.await.expect("join").expect("first push completes");
    release.notify_one();
    other_push.await.expect("join").expect("site-2's push completes");
    server.stop().await;
}
