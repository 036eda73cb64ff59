//! End-to-end tests: the real `gnno` binary on real files in temporary workdirs.

mod common;

mod cli;
mod corpus;
mod crash;
mod depcheck;
mod export;
mod ingest_formats;
mod nightly;
mod objectives;
mod pipeline;
mod real_data;
