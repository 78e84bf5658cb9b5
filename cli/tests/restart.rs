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
