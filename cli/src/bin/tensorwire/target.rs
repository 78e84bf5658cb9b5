//! What a `get` or `put` URL names, and where `get` writes.

use std::path::{Path, PathBuf};

use tensorwire::quant::Scheme;
use tensorwire::transport::{Endpoint, Registry};

use super::exit::Failure;

/// A parsed object URL: `[http://]HOST[:PORT]/objects/NAME[?QUERY]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The server: host, port (7470 when the URL has none), TLS or not.
    pub(crate) endpoint: Endpoint,
    /// The object name, percent-decoded and checked.
    pub(crate) name: String,
    /// `mode=` from the query.
    pub(crate) mode: Option<String>,
    /// `items=` from the query (comma-separated, percent-decoded).
    pub(crate) items: Option<Vec<String>>,
    /// `quantize=` from the query.
    pub(crate) quantize: Option<Scheme>,
    /// `chunk_size=` from the query.
    pub(crate) chunk_size: Option<u32>,
}

impl Target {
    /// The server, as error messages name it.
    pub(crate) fn party(&self) -> String {
        format!("server {}", self.endpoint.addr())
    }
}

/// Parses an object URL. A URL without a scheme means `http://`, as in curl;
/// query parameters the server understands (SPEC.md §8.2: `mode`, `items`,
/// `quantize`, `chunk_size`) are honoured, and any other is refused rather
/// than ignored.
pub(crate) fn parse_url(url: &str) -> Result<Target, Failure> {
    let bad = |why: String| Failure::usage(format!("{url}: {why}"));
    let full = if url.contains("://") { url.to_string() } else { format!("http://{url}") };
    let (endpoint, path) = Endpoint::parse(&full).map_err(|e| bad(e.to_string()))?;
    let uri: http::Uri = full.parse().map_err(|e| bad(format!("not a URL ({e})")))?;
    let name = Registry::new().decode_name(&path).map_err(|e| bad(e.to_string()))?;
    let mut t = Target { endpoint, name, mode: None, items: None, quantize: None, chunk_size: None };
    for pair in uri.query().unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| bad(format!("query parameter {key:?} is not UTF-8")))?;
        match key {
            "mode" => match value.as_ref() {
                "file" | "container" => t.mode = Some(value.into_owned()),
                other => return Err(bad(format!("mode {other:?}: expected one of file, container"))),
            },
            "items" => t.items = Some(value.split(',').map(str::to_string).collect()),
            "quantize" => t.quantize = Some(parse_scheme(&value).map_err(bad)?),
            "chunk_size" => {
                t.chunk_size = Some(value.parse().map_err(|_| bad(format!("chunk_size {value:?} is not a number")))?)
            }
            other => {
                return Err(bad(format!(
                    "query parameter {other:?} is not understood (known: mode, items, quantize, chunk_size)"
                )))
            }
        }
    }
    Ok(t)
}

/// Parses a quantization scheme, listing the valid ones when it is not one.
pub(crate) fn parse_scheme(s: &str) -> Result<Scheme, String> {
    Scheme::parse(s).ok_or_else(|| {
        let valid: Vec<&str> = Scheme::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown quantization scheme {s:?}; valid: {}", valid.join(", "))
    })
}

/// Where `get` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Output {
    /// Standard output (`-o -`).
    Stdout,
    /// A file, written as `FILE.part` and renamed when verified.
    File(PathBuf),
}

/// Resolves `-o` / `-O` before anything is transferred: `-o -` is standard
/// output; `-o DIR` (an existing directory) and `-O` write the object's last
/// name segment into that directory (`-O`: the current one); the file's
/// directory must exist.
pub(crate) fn resolve_output(output: Option<&Path>, remote_name: bool, name: &str) -> Result<Output, Failure> {
    let base = name.rsplit('/').next().unwrap_or(name);
    let path = match (output, remote_name) {
        (Some(_), true) => return Err(Failure::usage("-o and -O cannot be used together")),
        (None, false) => return Err(Failure::usage("say where to write: -o FILE, -o - for standard output, or -O")),
        (Some(p), false) if p.as_os_str() == "-" => return Ok(Output::Stdout),
        (Some(p), false) if p.is_dir() => p.join(base),
        (Some(p), false) => p.to_path_buf(),
        (None, true) => PathBuf::from(base),
    };
    if path.is_dir() {
        return Err(Failure::usage(format!("{}: is a directory", path.display())));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(Failure::usage(format!("{}: directory {} does not exist", path.display(), parent.display())));
    }
    Ok(Output::File(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_without_scheme_means_http() {
        let t = parse_url("127.0.0.1:9000/objects/m.safetensors").expect("parses");
        assert_eq!((t.endpoint.addr().as_str(), t.name.as_str()), ("127.0.0.1:9000", "m.safetensors"));
        assert!(!t.endpoint.tls);
        assert_eq!(parse_url("localhost/objects/a").expect("parses").endpoint.addr(), "localhost:7470");
        assert!(parse_url("https://h/objects/a").expect("parses").endpoint.tls);
    }

    #[test]
    fn query_is_honoured_or_refused() {
        let t = parse_url("http://h:1/objects/m?mode=container&items=a,b%2Cc&quantize=nf4&chunk_size=65536")
            .expect("parses");
        assert_eq!(t.mode.as_deref(), Some("container"));
        assert_eq!(t.items, Some(vec!["a".to_string(), "b".into(), "c".into()]));
        assert_eq!(t.quantize, Some(Scheme::Nf4));
        assert_eq!(t.chunk_size, Some(65536));
        let e = parse_url("http://h:1/objects/m?resume=0-10").expect_err("unknown key");
        assert!(e.message.contains("\"resume\" is not understood"), "{}", e.message);
        assert_eq!(e.code, super::super::exit::USAGE);
        assert!(parse_url("http://h:1/objects/m?quantize=int3").expect_err("bad").message.contains("valid: fp16"));
    }

    #[test]
    fn output_rules() {
        assert_eq!(resolve_output(Some(Path::new("-")), false, "a/b").expect("stdout"), Output::Stdout);
        let dir = std::env::temp_dir();
        assert_eq!(resolve_output(Some(&dir), false, "x/m.bin").expect("dir"), Output::File(dir.join("m.bin")));
        assert_eq!(resolve_output(None, true, "x/m.bin").expect("-O"), Output::File(PathBuf::from("m.bin")));
        assert!(resolve_output(Some(Path::new("/nonexistent-dir-tw/f")), false, "m").is_err());
        assert!(resolve_output(None, false, "m").is_err());
    }
}
