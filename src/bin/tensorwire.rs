//! The `tensorwire` command-line tool.
//!
//! ```text
//! tensorwire frames OBJECT     decode a framed object (a file, or - for stdin),
//!                              check every CRC and ordering rule, list its frames
//! ```

use std::io::Read;
use std::process::ExitCode;

use bytes::BytesMut;
use clap::{Parser, Subcommand};
use tensorwire::wire::{Frame, FrameDecoder};

#[derive(Parser)]
#[command(name = "tensorwire", version, about = "Stream models and tensors over HTTP/2")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode a framed object (SPEC.md), verify it, and list its frames.
    Frames {
        /// A file holding the object body, or `-` for standard input.
        object: String,
        /// List every chunk, not only item and object frames.
        #[arg(long)]
        chunks: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Frames { object, chunks } => frames(&object, chunks),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tensorwire: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the object in 1 MiB pieces, so memory stays at about one frame.
fn frames(path: &str, list_chunks: bool) -> Result<(), Box<dyn std::error::Error>> {
    let mut input: Box<dyn Read> = if path == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?)
    };
    let mut dec = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut piece = vec![0u8; 1 << 20];
    let (mut chunks, mut bytes) = (0u64, 0u64);
    loop {
        let n = input.read(&mut piece)?;
        buf.extend_from_slice(&piece[..n]);
        let frame = if n == 0 { dec.decode_frame_eof(&mut buf)? } else { dec.decode_frame(&mut buf)? };
        let mut next = frame;
        while let Some(f) = next {
            match &f {
                Frame::Chunk(c) => {
                    chunks += 1;
                    bytes += c.data.len() as u64;
                    if list_chunks {
                        println!(
                            "  chunk     item {} offset {} len {} crc {:#010x}",
                            c.item,
                            c.offset,
                            c.data.len(),
                            c.crc
                        );
                    }
                }
                Frame::ObjectHeader(h) => println!(
                    "object    {:?} mode {} items {} total {}",
                    h.name,
                    h.mode.as_str(),
                    h.items.map_or("?".into(), |n| n.to_string()),
                    h.total_len.map_or("?".into(), |n| n.to_string())
                ),
                Frame::ItemHeader(h) => println!(
                    "item {:<4} {:?} {} {:?} len {} encoding {}",
                    h.item,
                    h.name,
                    h.dtype.map_or("bytes", |d| d.as_str()),
                    h.shape.clone().unwrap_or_default(),
                    h.len,
                    h.encoding.scheme()
                ),
                Frame::ItemEnd(e) => println!("  end      item {} len {} crc {:#010x}", e.item, e.len, e.crc),
                Frame::ObjectEnd(e) => {
                    println!("end       items {} len {} crc {:#010x}", e.items, e.len, e.crc)
                }
                Frame::Abort(a) => println!("abort     {} {:?}", a.code, a.message),
            }
            next = if n == 0 { dec.decode_frame_eof(&mut buf)? } else { dec.decode_frame(&mut buf)? };
        }
        if n == 0 {
            break;
        }
    }
    println!("verified: {chunks} chunks, {bytes} data bytes; every CRC and ordering rule checked");
    Ok(())
}
