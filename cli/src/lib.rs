//! The `tensorwire` command-line tool's support code: the benchmark harness
//! behind `tensorwire bench memory` and `tensorwire demo`, which the
//! benchmark examples (`cli/examples/`) share.
//!
//! This crate is not the library: a program that moves tensors depends on
//! `tensorwire`, which pulls in none of the tool's dependencies (clap,
//! indicatif, mimalloc, tracing-subscriber).
#![deny(missing_docs, missing_debug_implementations)]
#![warn(unreachable_pub)]

pub mod harness;
