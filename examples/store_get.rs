//! Pull one object from a store three ways, for comparing throughput and
//! memory (run each in its own process, under `/usr/bin/time -v`):
//!
//! ```text
//! cargo run --release --features store --example store_get -- plain     URL OUT [CONCURRENCY] [RANGE]
//! cargo run --release --features store --example store_get -- file      URL OUT [CONCURRENCY] [RANGE]
//! cargo run --release --features store --example store_get -- container URL OUT [CONCURRENCY] [RANGE]
//! ```
//!
//! `plain` is `object_store`'s own `get` streamed into a file (no checks);
//! `file` and `container` are `StoreObject::write_file` and
//! `write_safetensors` (ranged reads in flight, verified against the
//! manifest). `URL` is `s3://BUCKET/KEY` (AWS_* variables) or
//! `file:///DIR/KEY`.

use std::io::Write;
use std::time::Instant;

use futures::StreamExt;
use tensorwire::store::{open_url, ObjectStore, PullOptions, StoreObject};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [how, url, out, rest @ ..] = &args[..] else {
        return Err("usage: store_get plain|file|container URL OUT [CONCURRENCY] [RANGE_BYTES]".into());
    };
    let concurrency = rest.first().map_or(Ok(8), |c| c.parse())?;
    let range_size = rest.get(1).map_or(Ok(8 << 20), |r| r.parse())?;
    let (store, key) = open_url(url, None)?;
    let started = Instant::now();
    let bytes = match how.as_str() {
        "plain" => {
            let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(out)?);
            let mut stream = store.get_opts(&key, Default::default()).await?.into_stream();
            let mut n = 0u64;
            while let Some(b) = stream.next().await {
                let b = b?;
                n += b.len() as u64;
                file.write_all(&b)?;
            }
            file.flush()?;
            n
        }
        "file" | "container" => {
            let options = PullOptions { concurrency, range_size, ..PullOptions::default() };
            let object = StoreObject::open(store, key, options).await?;
            if how == "file" {
                object.write_file(out).await?
            } else {
                object.write_safetensors(None, out).await?
            }
        }
        other => return Err(format!("unknown way {other:?}").into()),
    };
    let secs = started.elapsed().as_secs_f64();
    println!("{how}: {bytes} bytes in {secs:.3} s = {:.3} GB/s", bytes as f64 / secs / 1e9);
    Ok(())
}
