//! `tensorwire bench memory` end to end, on a tiny model: every mode runs as
//! two processes, reports its peaks, verifies, and cleans up.

use std::process::Command;

#[test]
fn bench_memory_runs_every_mode_and_cleans_up() {
    let dir = std::env::temp_dir().join(format!("tw-harness-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let out = Command::new(env!("CARGO_BIN_EXE_tensorwire"))
        .args(["bench", "memory", "--shape", "tiny", "--verify", "--json", "--modes"])
        .arg("regular,container,container-file,file,blockwise8,nf4")
        .arg("--dir")
        .arg(&dir)
        .output()
        .expect("run bench");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 6);
    for row in rows {
        let mode = row["mode"].as_str().unwrap_or_default();
        assert!(row["sender"]["hwm_kib"].as_u64().unwrap_or(0) > 0, "{mode}: no sender peak");
        assert!(row["receiver"]["hwm_kib"].as_u64().unwrap_or(0) > 0, "{mode}: no receiver peak");
        assert!(row["wire_bytes"].as_u64().unwrap_or(0) > 0, "{mode}: no bytes");
        assert!(row["secs"].as_f64().unwrap_or(0.0) > 0.0, "{mode}: no time");
    }
    let verified = |i: usize| rows[i]["verified"].as_str().unwrap_or_default().to_string();
    // The tiny model has 2 + 9 per layer * 2 layers + 1 tensors.
    assert_eq!(verified(1), "21 tensors identical");
    assert_eq!(verified(2), "every tensor identical");
    assert_eq!(verified(3), "byte-identical");
    assert!(verified(5).starts_with("max abs error"), "{}", verified(5));
    // Quantized bytes are fewer than raw ones.
    assert!(rows[5]["wire_bytes"].as_u64() < rows[1]["wire_bytes"].as_u64());
    // Nothing is left behind.
    assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 0, "temporary files left in {}", dir.display());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small model is not compared with NVFlare's 5.7 GB figures by ratio
/// ("358x faster" for a 357 MiB model was not like with like).
#[test]
fn small_models_show_no_ratios_against_the_full_model() {
    let dir = std::env::temp_dir().join(format!("tw-harness-ratio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let out = Command::new(env!("CARGO_BIN_EXE_tensorwire"))
        .args(["bench", "memory", "--shape", "tiny", "--modes", "file,container", "--dir"])
        .arg(&dir)
        .output()
        .expect("run bench");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("file streaming | 19176 | 170 |"), "{text}");
    assert!(!text.contains("x faster") && !text.contains("x less"), "{text}");
    assert!(text.contains("no ratios are shown"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
