//! A FedAvg-style controller built from tensorwire's streams.
//!
//! ```text
//! cargo run --release --example fedavg -- [--clients 3] [--rounds 2] [--llama-3.2-1b]
//! ```
//!
//! Each round the controller broadcasts its global model (a container served
//! from memory); each client — its own process — retrieves it, computes an
//! update (a weight difference) and pushes it back as a stream. The
//! controller takes the N pushes together and averages them **item by
//! item**: it reads tensor k from every client, writes `global[k] +=
//! mean(delta[k])`, and only then asks for tensor k+1. Its memory is one
//! model plus one tensor per client in flight, not N models; it prints the
//! peak resident memory it reached next to the model size, and checks the
//! result.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tensorwire::models::LlamaShape;
use tensorwire::recv::ObjectRetriever;
use tensorwire::send::ContainerStreamer;
use tensorwire::tensor::{Dtype, Tensor, TensorMap};
use tensorwire::transport::{Client, Config, FrameStream, PushHandler, Registry, Server, TransferOptions};
use tensorwire::Error;
use tokio::sync::{mpsc, oneshot};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    if args.first().map(String::as_str) == Some("client") {
        return rt.block_on(client(&args[1], args[2].parse()?, args[3].parse()?));
    }
    let flag = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let shape = if args.iter().any(|a| a == "--llama-3.2-1b") { LlamaShape::LLAMA_3_2_1B } else { LlamaShape::SMALL };
    rt.block_on(controller(shape, flag("--clients", 3), flag("--rounds", 2)))
}

/// What client `id` adds to every weight: known, so the result can be checked.
fn delta_of(id: usize) -> f32 {
    (id as f32 + 1.0) * 1e-3
}

/// One pushed update, waiting for the aggregator.
type Update = (ObjectRetriever<FrameStream>, oneshot::Sender<Result<(), Error>>);

async fn controller(shape: LlamaShape, clients: usize, rounds: usize) -> Result<(), BoxError> {
    let global = shape.synthetic(Dtype::F32, 7);
    let model_bytes: u64 = global.values().map(|t| t.data().len() as u64).sum();
    let probe: Vec<(String, f32)> = global.iter().map(|(n, t)| (n.clone(), first_f32(t))).collect();
    let global = Arc::new(Mutex::new(global));

    let served = Arc::clone(&global);
    let (updates_tx, mut updates) = mpsc::channel::<Update>(clients);
    let handler: PushHandler = Arc::new(move |_name, _peer, tensors| {
        let updates_tx = updates_tx.clone();
        async move {
            let (done_tx, done) = oneshot::channel();
            updates_tx.send((tensors, done_tx)).await.map_err(|_| Error::Protocol("controller stopped"))?;
            done.await.map_err(|_| Error::Protocol("controller stopped"))?
        }
        .boxed()
    });
    let registry = Registry::new()
        .with_container_source(
            "global",
            Arc::new(move || Arc::new(served.lock().map(|m| m.clone()).unwrap_or_default())),
        )
        .with_push_handler(handler)
        // Loopback only: every client may push its update.
        .accept_pushes(true);
    let server = Server::bind("127.0.0.1:0", registry, Config::default()).await?;
    let addr = server.local_addr()?;
    let handle = server.handle();
    let serving = tokio::spawn(server.run());
    println!(
        "controller: {} tensors, {:.1} MiB in fp32, {clients} clients, {rounds} rounds, on {addr}",
        shape.tensors().len(),
        model_bytes as f64 / 1048576.0
    );

    for round in 0..rounds {
        let started = Instant::now();
        let exe = std::env::current_exe()?;
        let children: Vec<_> = (0..clients)
            .map(|id| {
                tokio::process::Command::new(&exe)
                    .args(["client", &addr.to_string(), &id.to_string(), &round.to_string()])
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        // Take the N pushes, then average them item by item.
        let mut streams = Vec::with_capacity(clients);
        while streams.len() < clients {
            streams.push(updates.recv().await.ok_or("push channel closed")?);
        }
        let result = average(&global, &mut streams, clients).await;
        let failed = result.as_ref().err().map(|e| e.to_string());
        for (_, done) in streams {
            let _ = done.send(match &failed {
                None => Ok(()),
                Some(_) => Err(Error::Protocol("aggregation failed")),
            });
        }
        result?;
        for mut child in children {
            if !child.wait().await?.success() {
                return Err("a client failed".into());
            }
        }
        println!("round {round}: {clients} updates averaged in {:.2} s", started.elapsed().as_secs_f64());
    }

    // Every weight moved by the mean of the clients' deltas, each round.
    let step: f32 = (0..clients).map(delta_of).sum::<f32>() / clients as f32;
    let after: Vec<f32> = {
        let model = global.lock().map_err(|_| "lock")?;
        probe.iter().map(|(name, _)| first_f32(&model[name])).collect()
    };
    for ((name, before), after) in probe.iter().zip(after) {
        let expected = (0..rounds).fold(*before, |v, _| v + step);
        if (after - expected).abs() > 1e-5 {
            return Err(format!("{name}: {after} after averaging, expected {expected}").into());
        }
    }
    handle.shutdown();
    serving.await??;
    let peak = peak_rss_kib();
    println!(
        "result checked: every tensor moved by the mean delta; peak RSS {:.1} MiB for a {:.1} MiB model ({:.2}x)",
        peak as f64 / 1024.0,
        model_bytes as f64 / 1048576.0,
        peak as f64 * 1024.0 / model_bytes as f64
    );
    Ok(())
}

/// global[k] += mean over clients of update[k], one tensor at a time, in
/// place: each client's tensor k is added into the global tensor as it
/// arrives and dropped, so memory is the model plus one client tensor.
async fn average(global: &Mutex<TensorMap>, streams: &mut [Update], clients: usize) -> Result<(), BoxError> {
    let scale = 1.0 / clients as f32;
    loop {
        let mut ended = 0;
        let mut name: Option<String> = None;
        for (stream, _) in streams.iter_mut() {
            let Some(update) = stream.next().await else {
                ended += 1;
                continue;
            };
            let update = update?;
            if update.dtype() != Dtype::F32 {
                return Err("updates must be F32".into());
            }
            if name.get_or_insert_with(|| update.name().to_string()) != update.name() {
                return Err(format!("clients sent {:?} and {} out of step", name, update.name()).into());
            }
            let mut model = global.lock().map_err(|_| "lock")?;
            let (meta, data) = model.remove(update.name()).ok_or("unknown tensor")?.into_parts();
            if meta.shape != update.shape() {
                return Err(format!("{}: shape differs", meta.name).into());
            }
            // Unique once every client has downloaded it: updated in place.
            let mut weights = data.try_into_mut().unwrap_or_else(|shared| bytes::BytesMut::from(&shared[..]));
            for (w, d) in weights.chunks_exact_mut(4).zip(update.data().chunks_exact(4)) {
                let v =
                    f32::from_le_bytes([w[0], w[1], w[2], w[3]]) + scale * f32::from_le_bytes([d[0], d[1], d[2], d[3]]);
                w.copy_from_slice(&v.to_le_bytes());
            }
            model.insert(meta.name.clone(), Tensor::from_meta(meta, weights.freeze())?);
        }
        match (name, ended) {
            (None, n) if n == clients => return Ok(()),
            (_, 0) => {}
            _ => return Err("an update ended early".into()),
        }
    }
}

/// A client: retrieve the global model, push back a weight difference.
async fn client(addr: &str, id: usize, _round: usize) -> Result<(), BoxError> {
    let client = Client::connect(addr, Config::default()).await?;
    let model = client.retrieve("global", None, &TransferOptions::default()).await?.collect_map().await?;
    // "Training": every weight moves by this client's delta. The update is
    // produced lazily, one tensor at a time, as the push is sent.
    let d = delta_of(id);
    let updates = futures::stream::iter(model.into_values()).map(move |t| {
        let data: Vec<u8> = t.data().chunks_exact(4).flat_map(|_| d.to_le_bytes()).collect();
        Tensor::from_meta(t.meta().clone(), Bytes::from(data))
    });
    let streamer = ContainerStreamer::from_tensors(format!("update-{id}"), updates);
    client.put_container(streamer, &TransferOptions::default()).await?;
    Ok(())
}

fn first_f32(t: &Tensor) -> f32 {
    t.data().get(..4).map_or(0.0, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// This process's peak resident set (VmHWM) in KiB, 0 where unknown
/// (Linux's `/proc/self/status`).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmHWM:"));
    line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}
