//! A `tensorwire get` killed with SIGKILL mid-transfer, run again with the
//! same arguments, resumes from the ledger beside `FILE.part` instead of
//! starting over.

// The library's test fixture, shared rather than copied.
#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::wan::{Link, WanProxy};
use common::{bytes, TempDir, TestServer};
use tensorwire::recv::PartLedger;
use tensorwire::transport::{Config, Registry};

const LEN: usize = 16 << 20;

fn verified(dest: &std::path::Path) -> u64 {
    PartLedger::load(dest).map_or(0, |l| l.chunks.iter().map(|c| c.2).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_get_resumes_from_its_ledger() {
    let dir = TempDir::new("restart");
    let data = bytes(LEN, 21);
    dir.file("src/model.bin", &data);
    let config = Config { chunk_size: 256 << 10, ..Config::default() };
    let server = TestServer::start(Registry::root(dir.join("src")).expect("root"), config).await;
    // 20 Mbit/s: the file takes about 7 s, so twenty kills land mid-transfer.
    let proxy = WanProxy::start(server.addr, Link::new(20, Duration::from_millis(2))).await;
    let url = format!("http://{}/objects/model.bin", proxy.addr);
    let dest = dir.join("out.bin");
    let get = || {
        Command::new(env!("CARGO_BIN_EXE_tensorwire"))
            .args(["get", &url, "-o"])
            .arg(&dest)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn get")
    };
    let mut x = 0x9E37_79B9u64;
    let (mut resumed_runs, mut kills) = (0, 0);
    for round in 0..20 {
        let before = verified(&dest);
        let mut child = get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        tokio::time::sleep(Duration::from_millis(150 + x % 300)).await;
        child.kill().expect("SIGKILL");
        kills += 1;
        let _ = child.wait();
        assert!(!dest.exists() || std::fs::read(&dest).expect("read") == data, "round {round}: a wrong file in place");
        if dest.exists() {
            break; // finished before the kill
        }
        let after = verified(&dest);
        // What a run verified is never lost to the next kill.
        assert!(after >= before, "round {round}: verified {before} then {after}");
        resumed_runs += usize::from(before > 0);
    }
    eprintln!("{kills} kills, {resumed_runs} runs resumed from a ledger");
    assert_eq!(kills, 20, "the transfer finished before twenty kills");
    assert!(resumed_runs > 0, "no run resumed from a ledger");
    let left = LEN as u64 - verified(&dest);
    let down = proxy.down_bytes();
    let out = get().wait_with_output().expect("final get");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&dest).expect("read") == data);
    assert!(!PartLedger::path_for(&dest).exists(), "the ledger is removed once the file is in place");
    // The last run sent what was left, not the whole file (plus one chunk
    // at most of what its ledger had not yet listed, and headers).
    let sent = proxy.down_bytes() - down;
    eprintln!("final run: {left} bytes were left, {sent} sent");
    assert!(sent < left + (512 << 10), "sent {sent}, {left} were left");
}

/// A safetensors file of four u8 tensors, `len` bytes of data in all.
fn safetensors_model(len: usize, seed: u64, shapes: &[u64; 4]) -> Vec<u8> {
    let data = bytes(len, seed);
    let total: u64 = shapes.iter().sum();
    assert_eq!(total as usize, len);
    let mut at = 0usize;
    let mut tensors = Vec::new();
    for (i, &n) in shapes.iter().enumerate() {
        let n = n as usize;
        let t = tensorwire::tensor::Tensor::new(
            format!("layer{i}.weight"),
            tensorwire::tensor::Dtype::U8,
            vec![n as u64],
            bytes::Bytes::copy_from_slice(&data[at..at + n]),
        )
        .expect("tensor");
        at += n;
        tensors.push(t);
    }
    let views: Vec<_> = tensors.iter().map(|t| (t.name().to_string(), t.as_view().expect("view"))).collect();
    safetensors::serialize(views, None).expect("serialize")
}

/// What `get --mode container` of the source writes, fetched once without
/// faults: the file every resumed run must end with, byte for byte.
async fn reference(server: &TestServer, dir: &TempDir, tag: &str) -> Vec<u8> {
    let client = server.client(Config::default()).await;
    let out = dir.join(&format!("ref-{tag}.safetensors"));
    let opts = tensorwire::transport::TransferOptions::default();
    client.get_container_file("model.safetensors", None, &out, &opts).await.expect("reference get");
    std::fs::read(&out).expect("read reference")
}

/// Issue 15 item 4 in container mode: SIGKILLed `get --mode container`
/// runs resume from the ledger beside FILE.part, the last run sends less
/// than what was left, and a changed source starts over and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_container_get_resumes_from_its_ledger() {
    const SHAPES: [u64; 4] = [4 << 20, 6 << 20, 2 << 20, 4 << 20];
    let dir = TempDir::new("restart-ctr");
    dir.file("src/model.safetensors", &safetensors_model(LEN, 22, &SHAPES));
    let config = Config { chunk_size: 256 << 10, ..Config::default() };
    let server = TestServer::start(Registry::root(dir.join("src")).expect("root"), config).await;
    let want = reference(&server, &dir, "a").await;
    let proxy = WanProxy::start(server.addr, Link::new(20, Duration::from_millis(2))).await;
    let url = format!("http://{}/objects/model.safetensors", proxy.addr);
    let dest = dir.join("out.safetensors");
    let get = || {
        Command::new(env!("CARGO_BIN_EXE_tensorwire"))
            .args(["get", "--mode", "container", &url, "-o"])
            .arg(&dest)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn get")
    };
    let mut x = 0x2545_F491u64;
    let mut resumed_runs = 0;
    for round in 0..8 {
        let before = verified(&dest);
        let mut child = get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        tokio::time::sleep(Duration::from_millis(300 + x % 400)).await;
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        assert!(!dest.exists(), "round {round}: the transfer finished before the kill, or left a file in place");
        let after = verified(&dest);
        assert!(after >= before, "round {round}: verified {before} then {after}");
        resumed_runs += usize::from(before > 0);
    }
    assert!(resumed_runs > 0, "no run resumed from a ledger");
    let left = LEN as u64 - verified(&dest);
    assert!(left < LEN as u64, "nothing verified after the kills");
    let down = proxy.down_bytes();
    let out = get().wait_with_output().expect("final get");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resuming"), "the run did not say it resumed: {stderr}");
    assert!(std::fs::read(&dest).expect("read") == want, "the resumed file differs from a clean get");
    assert!(!PartLedger::path_for(&dest).exists(), "the ledger is removed once the file is in place");
    let sent = proxy.down_bytes() - down;
    eprintln!("container: final run: {left} bytes were left, {sent} sent");
    assert!(sent < left + (512 << 10), "sent {sent}, {left} were left");

    // A changed source (another layout): the next run starts over, says
    // so, and ends with the new object.
    std::fs::remove_file(&dest).expect("remove");
    let mut child = get();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert!(verified(&dest) > 0, "the killed run left no ledger");
    dir.file("src/model.safetensors", &safetensors_model(LEN, 23, &[8 << 20, 2 << 20, 2 << 20, 4 << 20]));
    let want = reference(&server, &dir, "b").await;
    let out = get().wait_with_output().expect("get after the change");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("starting over"), "a changed source was not reported: {stderr}");
    assert!(std::fs::read(&dest).expect("read") == want, "the file is not the new source's");
}
