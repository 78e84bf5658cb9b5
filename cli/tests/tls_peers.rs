//! Real peers over TLS 1.3 with real certificates (rcgen): curl, Python's
//! `ssl` with the `h2` package, and the `tensorwire` binary's `serve`, `get`
//! and `put` with the TLS and access flags.

// The library's test fixture, shared rather than copied.
#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use common::pki::Pki;
use common::{bytes, TempDir, TestServer};
use tensorwire::transport::{Config, Registry, ServerTls};
use tensorwire::wire::{Frame, FrameDecoder};

/// The item bytes of a framed object body, every frame and CRC checked.
fn decode_body(path: &Path) -> Vec<u8> {
    let mut buf = BytesMut::from(&std::fs::read(path).expect("read body")[..]);
    let mut dec = FrameDecoder::new();
    let mut got = Vec::new();
    while let Some(f) = dec.decode_frame_eof(&mut buf).expect("the body decodes") {
        if let Frame::Chunk(c) = f {
            got.extend_from_slice(&c.data);
        }
    }
    got
}

async fn mutual_server(pki: &Pki, root: &Path) -> TestServer {
    let tls = ServerTls::from_pem_files(&pki.server.cert, &pki.server.key)
        .expect("server cert")
        .with_client_ca_file(&pki.ca)
        .expect("client CA");
    let config = Config { server_tls: Some(tls.build().expect("TLS")), ..Config::default() };
    TestServer::start(Registry::root(root).expect("root"), config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_mutual_tls_downloads_a_body_that_decodes() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIPPED: curl is not installed, so the TLS real-peer test cannot run (apt-get install curl)");
        return;
    }
    let pki = Pki::new("curl-tls");
    let src = TempDir::new("curl-tls-src");
    let data = bytes(2_000_001, 12);
    src.file("model.bin", &data);
    let server = mutual_server(&pki, src.path()).await;
    let site = pki.client("site-1", &[]);
    let url = format!("https://127.0.0.1:{}/objects/model.bin?chunk_size=500000", server.addr.port());
    let out = src.join("body.tw");
    let curl = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--http2", "--tlsv1.3", "--cacert"])
        .arg(&pki.ca)
        .arg("--cert")
        .arg(&site.cert)
        .arg("--key")
        .arg(&site.key)
        .arg("-o")
        .arg(&out)
        .arg(&url)
        .output()
        .await
        .expect("run curl");
    assert!(curl.status.success(), "curl failed: {}", String::from_utf8_lossy(&curl.stderr));
    assert_eq!(decode_body(&out), data);

    // Without a client certificate the server refuses the handshake.
    let curl = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--http2", "--cacert"])
        .arg(&pki.ca)
        .arg("-o")
        .arg(src.join("nothing"))
        .arg(&url)
        .output()
        .await
        .expect("run curl");
    assert!(!curl.status.success());
    let stderr = String::from_utf8_lossy(&curl.stderr).to_lowercase();
    assert!(stderr.contains("certificate required") || stderr.contains("alert"), "{stderr}");

    // SPEC.md §8.1: over TLS only h2; a client that offers only HTTP/1.1 is refused.
    let curl = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--http1.1", "--cacert"])
        .arg(&pki.ca)
        .arg("--cert")
        .arg(&site.cert)
        .arg("--key")
        .arg(&site.key)
        .arg("-o")
        .arg(src.join("nothing"))
        .arg(&url)
        .output()
        .await
        .expect("run curl");
    assert!(!curl.status.success(), "an HTTP/1.1-only client was served");
    let stderr = String::from_utf8_lossy(&curl.stderr).to_lowercase();
    assert!(stderr.contains("no application protocol") || stderr.contains("alert"), "{stderr}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_ssl_and_h2_download_a_body_that_decodes() {
    let has_h2 = Command::new("python3").args(["-c", "import ssl, h2"]).output().map(|o| o.status.success());
    if !has_h2.unwrap_or(false) {
        eprintln!(
            "SKIPPED: python3 with the h2 package is not available (pip install h2), so this real-peer test cannot run"
        );
        return;
    }
    let pki = Pki::new("py-tls");
    let src = TempDir::new("py-tls-src");
    let data = bytes(3_000_000, 13);
    src.file("model.bin", &data);
    let server = mutual_server(&pki, src.path()).await;
    let site = pki.client("site-1", &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/peers/h2_tls_get.py");
    let out = src.join("body.tw");
    let port = server.addr.port().to_string();
    let run = |with_cert: bool, out: &Path| {
        let mut cmd = tokio::process::Command::new("python3");
        cmd.arg(script).args(["127.0.0.1", &port, "/objects/model.bin?chunk_size=1000000"]).arg(&pki.ca).arg(out);
        if with_cert {
            cmd.arg(&site.cert).arg(&site.key);
        }
        cmd.output()
    };
    let py = run(true, &out).await.expect("run python");
    assert!(py.status.success(), "python failed: {}", String::from_utf8_lossy(&py.stderr));
    assert_eq!(decode_body(&out), data);

    let py = run(false, &src.join("nothing")).await.expect("run python");
    assert!(!py.status.success());
    let stderr = String::from_utf8_lossy(&py.stderr);
    assert!(stderr.to_uppercase().contains("CERTIFICATE_REQUIRED"), "{stderr}");
    server.stop().await;
}

/// Reads the server's stderr on a thread: the banner's URL, and every log line.
fn serve(args: &[&std::ffi::OsStr]) -> (std::process::Child, String, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tensorwire"))
        .arg("serve")
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let banner = lines.next().expect("a banner").expect("utf-8");
    let url = banner.split(" on ").nth(1).expect("banner names the URL").trim().to_string();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().expect("lock").push(line);
        }
    });
    (child, url, log)
}

#[test]
fn cli_serves_mutual_tls_with_push_rules() {
    let pki = Pki::new("cli-tls");
    let dir = TempDir::new("cli-tls");
    std::fs::create_dir_all(dir.join("srv/updates")).expect("mkdir");
    let model = bytes(1_500_000, 14);
    dir.file("srv/global.bin", &model);
    let site = pki.client("site-1", &["site-1.example.org"]);
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let (mut server, url, log) = serve(&[
        os("--addr"),
        os("127.0.0.1:0"),
        os("--root"),
        dir.join("srv").as_os_str(),
        os("--tls-cert"),
        pki.server.cert.as_os_str(),
        os("--tls-key"),
        pki.server.key.as_os_str(),
        os("--client-ca"),
        pki.ca.as_os_str(),
        os("--allow-push"),
        os("site-*=updates/"),
    ]);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let bin = env!("CARGO_BIN_EXE_tensorwire");
    let tls_args = |cmd: &mut Command| {
        cmd.arg("--ca").arg(&pki.ca).arg("--cert").arg(&site.cert).arg("--key").arg(&site.key);
    };

    let got = dir.join("got.bin");
    let mut get = Command::new(bin);
    get.arg("get").arg(format!("{url}global.bin")).arg("-o").arg(&got);
    tls_args(&mut get);
    let out = get.output().expect("run get");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&got).expect("read"), model);

    let mut put = Command::new(bin);
    put.arg("put").arg(&got).arg(format!("{url}updates/site-1.bin"));
    tls_args(&mut put);
    let out = put.output().expect("run put");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(dir.join("srv/updates/site-1.bin")).expect("pushed"), model);

    // Outside the prefix: 403, one line, nothing written.
    let mut put = Command::new(bin);
    put.arg("put").arg(&got).arg(format!("{url}global-new.bin"));
    tls_args(&mut put);
    let out = put.output().expect("run put");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("403") && stderr.contains("may not push"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!dir.join("srv/global-new.bin").exists());

    // No client certificate: refused, with a message that says what to do.
    let out = Command::new(bin)
        .arg("get")
        .arg(format!("{url}global.bin"))
        .arg("-o")
        .arg(dir.join("x"))
        .arg("--ca")
        .arg(&pki.ca)
        .output()
        .expect("run get");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("requires a client certificate: use --cert and --key"), "{stderr}");

    // TLS flags with an http:// URL are a usage error.
    let out = Command::new(bin)
        .args(["get", "http://127.0.0.1:1/objects/x", "-o"])
        .arg(dir.join("x"))
        .arg("--ca")
        .arg(&pki.ca)
        .output()
        .expect("run get");
    assert!(String::from_utf8_lossy(&out.stderr).contains("need an https:// URL"));

    let _ = server.kill();
    let _ = server.wait();
    let log = log.lock().expect("lock").join("\n");
    assert!(log.contains("mutual TLS; pushes from site-*=updates/; pulls by anyone"), "{log}");
    // The structured request line names the verified identity.
    let line = |path: &str| log.lines().find(|l| l.contains(&format!("path={path}"))).unwrap_or_default().to_string();
    let push = line("/objects/updates/site-1.bin");
    assert!(push.contains("(CN=site-1 SAN=site-1.example.org) method=PUT") && push.contains("status=201"), "{log}");
    assert!(line("/objects/global-new.bin").contains("status=403"), "{log}");
    assert!(log.contains("connection refused: TLS: peer sent no certificates"), "{log}");
}
