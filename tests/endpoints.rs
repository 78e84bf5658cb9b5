//! The operator's endpoints, with curl as the peer: `/metrics`, `/healthz`,
//! `/objects`, `HEAD /objects/{name}`, and a clean 405 for other methods.

mod common;

use common::{bytes, TempDir, TestServer};
use tensorwire::transport::{Config, Registry};

fn have_curl() -> bool {
    if std::process::Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIPPED: curl is not installed, so the endpoint tests cannot run (apt-get install curl)");
        return false;
    }
    true
}

/// Runs curl (HTTP/2 prior knowledge) and returns (status, headers, body).
async fn curl(args: &[&str], url: &str) -> (u16, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["--http2-prior-knowledge", "--silent", "--show-error", "-D", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .await
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, code) = text.rsplit_once('\n').expect("status line");
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    (code.trim().parse().unwrap_or(0), head.to_ascii_lowercase(), body.to_string())
}

fn model() -> Vec<u8> {
    let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &[0u8; 16]).expect("view");
    let w = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3], &[0u8; 12]).expect("view");
    safetensors::serialize([("a", v), ("b", w)], None).expect("serialize")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_endpoints_answer_curl() {
    if !have_curl() {
        return;
    }
    let src = TempDir::new("endpoints");
    src.file("blob.bin", &bytes(100_000, 3));
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    std::fs::write(src.join("sub/model.safetensors"), model()).expect("write");
    std::fs::write(src.join("sub/.hidden"), b"x").expect("write");
    let registry = Registry::root(src.path()).expect("root").accept_pushes(true);
    let server = TestServer::start(registry, Config::default()).await;
    let base = format!("http://{}", server.addr);

    // One transfer, so the metrics have something to count.
    let (status, _, _) = curl(&["-o", "/dev/null"], &format!("{base}/objects/blob.bin")).await;
    assert_eq!(status, 200);

    let (status, head, body) = curl(&[], &format!("{base}/healthz")).await;
    assert_eq!((status, body.trim()), (200, "ok"), "{head}");

    let (status, head, body) = curl(&[], &format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/openmetrics-text"), "{head}");
    assert!(body.contains("tensorwire_transfers_completed_total{mode=\"file\",direction=\"pull\"} 1"), "{body}");
    assert!(body.contains("tensorwire_wire_bytes_sent_total "), "{body}");
    assert!(body.contains("tensorwire_request_duration_seconds_bucket"), "{body}");
    assert!(body.contains("tensorwire_active_connections 1"), "{body}");

    let (status, _, body) = curl(&[], &format!("{base}/objects")).await;
    assert_eq!(status, 200);
    let listing: serde_json::Value = serde_json::from_str(&body).expect("JSON listing");
    let objects = listing["objects"].as_array().expect("objects");
    let names: Vec<&str> = objects.iter().filter_map(|o| o["name"].as_str()).collect();
    assert_eq!(names, ["blob.bin", "sub/model.safetensors"], "hidden files are not listed");
    assert_eq!(objects[0]["bytes"], 100_000);
    assert_eq!(objects[1]["tensors"], 2);
    assert!(objects[0]["modified"].as_u64().is_some());

    // HEAD (curl -I): status and lengths, no body, no protocol error.
    let (status, head, _) = curl(&["-I"], &format!("{base}/objects/blob.bin")).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("tensorwire-length: 100000"), "{head}");
    let (status, _, _) = curl(&["-I"], &format!("{base}/objects/nope")).await;
    assert_eq!(status, 404);

    // POST: a clean 405 that says what is allowed.
    let (status, head, body) = curl(&["-X", "POST", "-d", "x"], &format!("{base}/objects/blob.bin")).await;
    assert_eq!(status, 405, "{head}");
    assert!(head.contains("allow: get, head, put"), "{head}");
    assert!(body.contains("allowed: GET, HEAD, PUT"), "{body}");

    // A plain file pushed with curl -T keeps the server's 415 explanation.
    let (status, _, body) =
        curl(&["-T", src.join("blob.bin").to_str().expect("utf-8")], &format!("{base}/objects/up.bin")).await;
    assert_eq!(status, 415);
    assert!(body.contains("application/vnd.tensorwire"), "{body}");

    server.stop().await;
}
