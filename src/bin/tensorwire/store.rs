//! `get` and `put` with an object-store URL (`s3://BUCKET/KEY`,
//! `file:///DIR/KEY`): README "Object storage", SPEC.md §11.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tensorwire::quant::Scheme;
use tensorwire::store::{self, ObjectKind, PullOptions, PushOptions, StoreError, StoreObject};
use tensorwire::Error;
use tokio_util::sync::CancellationToken;

use super::exit::{self, Failure};
use super::target::{self, Output};
use super::{GetMode, Report, Summary};

/// Object-store flags of `get`.
#[derive(clap::Args)]
pub(crate) struct StoreGet {
    /// S3 endpoint for s3:// URLs (e.g. http://127.0.0.1:3900); overrides
    /// AWS_ENDPOINT_URL. An http:// endpoint allows cleartext.
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Ranged reads in flight at once (s3:// and file:// URLs).
    #[arg(long, default_value_t = store::DEFAULT_CONCURRENCY as u16, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Bytes per ranged read (s3:// and file:// URLs).
    #[arg(long, default_value_t = store::DEFAULT_RANGE_BYTES, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    range_size: u64,
}

/// Object-store flags of `put`.
#[derive(clap::Args)]
pub(crate) struct StorePut {
    /// S3 endpoint for s3:// URLs (e.g. http://127.0.0.1:3900); overrides
    /// AWS_ENDPOINT_URL. An http:// endpoint allows cleartext.
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Multipart parts in flight at once (s3:// and file:// URLs).
    #[arg(long, default_value_t = store::DEFAULT_CONCURRENCY as u16, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Bytes per multipart part, at least 5 MiB (s3:// and file:// URLs).
    #[arg(long, default_value_t = store::DEFAULT_PART_BYTES, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(store::MIN_PART_BYTES..))]
    part_size: u64,
    /// `file`: store the file's bytes; `container`: store the framed
    /// tensorwire body a server sends for GET ?mode=container (s3:// and
    /// file:// URLs only).
    #[arg(long, value_enum)]
    mode: Option<GetMode>,
    /// Quantize float tensors with this scheme in the stored framed body;
    /// implies --mode container (s3:// and file:// URLs only).
    #[arg(long, value_parser = target::parse_scheme)]
    quantize: Option<Scheme>,
}

impl StorePut {
    /// Whether a flag that only a store push understands was given.
    pub(crate) fn store_only_flags(&self) -> bool {
        self.mode.is_some() || self.quantize.is_some()
    }
}

/// Object-store flags of `serve`.
#[derive(clap::Args)]
pub(crate) struct StoreServe {
    /// Serve the objects under this store prefix instead of a directory:
    /// s3://BUCKET[/PREFIX] or file:///DIR. GET in every mode; PUT (with
    /// --allow-push) uploads into the store. No state is kept here, so
    /// several servers can front one bucket.
    #[arg(long, value_name = "URL", conflicts_with = "root")]
    pub(crate) store: Option<String>,
    /// S3 endpoint for --store s3://...; overrides AWS_ENDPOINT_URL.
    #[arg(long = "endpoint", value_name = "URL", requires = "store")]
    endpoint: Option<String>,
    /// Ranged reads in flight per pull from --store.
    #[arg(long, default_value_t = store::DEFAULT_CONCURRENCY as u16, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Bytes per ranged read from --store.
    #[arg(long, default_value_t = store::DEFAULT_RANGE_BYTES, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    range_size: u64,
    /// Bytes per multipart part of a push into --store (at least 5 MiB).
    #[arg(long, default_value_t = store::DEFAULT_PART_BYTES, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(store::MIN_PART_BYTES..))]
    part_size: u64,
}

impl StoreServe {
    /// A registry serving from the store, when --store was given.
    pub(crate) fn registry(&self) -> Result<Option<tensorwire::transport::Registry>, Failure> {
        let Some(url) = &self.store else { return Ok(None) };
        let (store, prefix) = store::open_prefix(url, self.endpoint.as_deref()).map_err(|e| failure(url, e))?;
        let concurrency = usize::from(self.concurrency);
        let pull = PullOptions { concurrency, range_size: self.range_size, ..PullOptions::default() };
        let push = PushOptions { concurrency, part_size: self.part_size, cancel: None };
        let source = store::StoreSource::new(store, prefix).with_pull_options(pull).with_push_options(push);
        Ok(Some(tensorwire::transport::Registry::new().with_source(std::sync::Arc::new(source))))
    }
}

/// What `get URL` asked for when URL names a store.
pub(crate) struct StoreGetRequest {
    pub(crate) url: String,
    pub(crate) output: Option<PathBuf>,
    pub(crate) remote_name: bool,
    pub(crate) mode: Option<GetMode>,
    pub(crate) items: Option<Vec<String>>,
    pub(crate) quantize: Option<Scheme>,
    pub(crate) keep_subnormals: bool,
}

/// The exit code of a store failure: integrity (4) for a failed check,
/// refused (5) for a missing object, usage (2) for bad options, connection
/// (3) for the store failing a request.
pub(crate) fn classify(e: &StoreError) -> u8 {
    match e {
        e if e.is_integrity() => exit::INTEGRITY,
        StoreError::NotFound { .. } => exit::REFUSED,
        StoreError::Option(_) | StoreError::Url { .. } => exit::USAGE,
        _ => exit::CONNECTION,
    }
}

fn failure(url: &str, e: Error) -> Failure {
    match e {
        Error::Cancelled => Failure::new(exit::INTERRUPTED, "interrupted"),
        e => Failure::new(exit::classify(&e), format!("{url}: {e}")),
    }
}

/// Runs `fut` until Ctrl-C: then it is dropped (a pull removes its
/// `.part`, a push aborts through its token) and the command is
/// interrupted.
async fn until_interrupted<T>(fut: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
    tokio::select! {
        r = fut => r,
        _ = tokio::signal::ctrl_c() => Err(Error::Cancelled),
    }
}

/// `tensorwire get s3://BUCKET/KEY -o FILE [--mode container] [--items a,b]`.
pub(crate) async fn get(req: StoreGetRequest, flags: &StoreGet, report: &Report) -> Result<(), Failure> {
    if req.quantize.is_some() {
        return Err(Failure::usage(format!(
            "{}: --quantize asks a server to quantize; a store holds what was put (put --quantize stores a quantized object)",
            req.url
        )));
    }
    let (store, key) = store::open_url(&req.url, flags.endpoint.as_deref()).map_err(|e| failure(&req.url, e))?;
    let name = key.filename().unwrap_or_default().to_string();
    let dest = match target::resolve_output(req.output.as_deref(), req.remote_name, &name)? {
        Output::File(p) => p,
        Output::Stdout => return Err(Failure::usage("-o -: a store pull writes a file")),
    };
    let subnormals =
        if req.keep_subnormals { tensorwire::quant::Subnormals::Keep } else { tensorwire::quant::Subnormals::Flush };
    let options = PullOptions { concurrency: usize::from(flags.concurrency), range_size: flags.range_size, subnormals };
    let started = Instant::now();
    let url = req.url.clone();
    let object = until_interrupted(StoreObject::open(store, key, options)).await.map_err(|e| failure(&url, e))?;
    if object.manifest().is_none() {
        eprintln!(
            "tensorwire: {url}: no manifest ({name}{}): only the {} is validated",
            store::MANIFEST_SUFFIX,
            if object.kind() == ObjectKind::Framed { "framing's own CRCs are" } else { "safetensors structure" }
        );
    }
    let container = req.mode == Some(GetMode::Container) || req.items.is_some();
    let written = if container || object.kind() == ObjectKind::Framed {
        until_interrupted(object.write_safetensors(req.items.as_deref(), &dest)).await
    } else {
        until_interrupted(object.write_file(&dest)).await
    };
    let written = written.map_err(|e| failure(&url, e))?;
    let seconds = started.elapsed().as_secs_f64();
    let summary = Summary {
        direction: "received",
        object: url.clone(),
        mode: if container || object.kind() == ObjectKind::Framed { "container" } else { "file" },
        quantize: None,
        wire_bytes: object.bytes_read(),
        restored_bytes: written,
        seconds,
        gb_per_s: super::rate(object.bytes_read(), seconds),
        crc: object.manifest().map(|m| format!("{:#010x}", m.crc32)),
        resumed_bytes: 0,
        target: dest.display().to_string(),
    };
    summary.print(report, false)
}

/// `tensorwire put FILE s3://BUCKET/KEY [--mode container [--quantize nf4]]`.
pub(crate) async fn put(file: &Path, url: &str, flags: &StorePut, report: &Report) -> Result<(), Failure> {
    if !file.is_file() {
        return Err(Failure::usage(format!("{}: not a readable file", file.display())));
    }
    let (store, key) = store::open_url(url, flags.endpoint.as_deref()).map_err(|e| failure(url, e))?;
    let cancel = CancellationToken::new();
    let options = PushOptions {
        concurrency: usize::from(flags.concurrency),
        part_size: flags.part_size,
        cancel: Some(cancel.clone()),
    };
    let container = flags.mode == Some(GetMode::Container) || flags.quantize.is_some();
    if flags.mode == Some(GetMode::File) && flags.quantize.is_some() {
        return Err(Failure::usage("--quantize stores a framed container: it needs --mode container"));
    }
    let started = Instant::now();
    let push = async {
        if container {
            store::put_container(store, &key, file, flags.quantize, &options).await
        } else {
            store::put_file(store, &key, file, &options).await
        }
    };
    // Ctrl-C cancels the token: the push aborts its multipart upload
    // before it returns, so no parts remain.
    let mut push = std::pin::pin!(push);
    let pushed = tokio::select! {
        r = &mut push => r,
        _ = tokio::signal::ctrl_c() => {
            cancel.cancel();
            push.await
        }
    };
    let pushed = pushed.map_err(|e| match e {
        e @ Error::Io(_) => Failure::transfer(url, Some(file), e),
        e => failure(url, e),
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let summary = Summary {
        direction: "sent",
        object: key.to_string(),
        mode: if container { "container" } else { "file" },
        quantize: flags.quantize.map(|q| q.to_string()),
        wire_bytes: pushed.manifest.size,
        restored_bytes: size,
        seconds,
        gb_per_s: super::rate(pushed.manifest.size, seconds),
        crc: Some(format!("{:#010x}", pushed.manifest.crc32)),
        resumed_bytes: 0,
        target: url.to_string(),
    };
    summary.print(report, false)
}
