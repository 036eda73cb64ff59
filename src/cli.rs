//! The command line, in one place (clap derive).

use crate::stages::StageName;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "gnno",
    version,
    about = "Neighbourhood-based hard negative mining for sequential recommenders: an offline pipeline."
)]
pub struct Cli {
    /// The pipeline config.
    #[arg(
        long,
        short,
        global = true,
        env = "GNNO_CONFIG",
        default_value = "pipeline.toml"
    )]
    pub config: PathBuf,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress bars and only warnings in the log.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the stage graph, skipping stages that are up to date.
    Run(RunArgs),
    /// Run one stage alone (its upstream outputs must exist).
    Stage {
        stage: StageName,
        /// Rerun even when up to date.
        #[arg(long)]
        force: bool,
        /// Publish even if a gate fails (recorded as "overridden" in the history).
        #[arg(long)]
        override_gates: bool,
    },
    /// Show each stage as up to date, stale (and why) or missing.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Print a stage's report figures.
    Report {
        stage: StageName,
        #[arg(long)]
        json: bool,
    },
    /// Check the config without running anything.
    Validate,
    /// Look at stored artifacts.
    Inspect {
        #[command(subcommand)]
        what: Inspect,
    },
    /// The run history: nights side by side, or one stage's runs.
    History {
        /// One stage's records, with all its figures.
        #[arg(long)]
        stage: Option<StageName>,
        /// Only the last N nights (with --stage: records).
        #[arg(long)]
        last: Option<usize>,
        /// The records as a JSON array.
        #[arg(long)]
        json: bool,
        /// Also draw dev and test NDCG@10 by night into this SVG file.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Publish an earlier kept run of a stage again (default: the one before the
    /// current); for export, `current` then points at it.
    Rollback {
        stage: StageName,
        /// The kept run to publish (its folder name, or a prefix of it).
        #[arg(long)]
        to: Option<String>,
        /// List the kept runs instead.
        #[arg(long)]
        list: bool,
    },
    /// Audit stored artifacts.
    Audit {
        #[command(subcommand)]
        what: Audit,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Rerun from this stage on, even if up to date.
    #[arg(long)]
    pub from: Option<StageName>,
    /// Stop after this stage.
    #[arg(long)]
    pub to: Option<StageName>,
    /// Rerun every stage.
    #[arg(long)]
    pub force: bool,
    /// Publish these stages even if one of their gates fails (recorded as
    /// "overridden"); the gates of every other stage still hold.
    #[arg(long, value_delimiter = ',', value_name = "STAGE")]
    pub override_gates: Vec<StageName>,
}

#[derive(Debug, Subcommand)]
pub enum Inspect {
    /// An item's top WITG neighbours and top overlaps, with raw ids.
    Item {
        /// Raw item id, or `#N` for the item index N.
        id: String,
        #[arg(long, default_value_t = 10)]
        top: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum Audit {
    /// Statistics of the stored negative shards, per epoch, and a plot.
    Negatives {
        /// Only these epochs (`--epoch 20` or `--epoch 20,60,100`).
        #[arg(long, value_delimiter = ',')]
        epoch: Vec<u32>,
        #[arg(long)]
        json: bool,
        /// Where to write the SVG plot (default: <workdir>/negatives/audit.svg).
        #[arg(long)]
        plot: Option<PathBuf>,
        /// An earlier kept run (its folder name, as `gnno history` shows it), audited
        /// against the ingest and graph runs it was drawn from.
        #[arg(long)]
        run: Option<String>,
        /// A trained model (an export folder, or its model.safetensors) for this
        /// config's [train] settings: each audited epoch's batches, drawn exactly as
        /// training draws them, are scored by it, and the shares of random and hard
        /// negatives it scores above the target are reported (a forward pass over
        /// the epoch per epoch audited: pass --epoch to choose a few).
        #[arg(long)]
        model: Option<PathBuf>,
    },
}
