//! One function per subcommand. Data goes to stdout, logs to stderr.

use crate::cli::{Audit, Cli, Command, Inspect};
use crate::pipeline::Pipeline;
use crate::runner::{RunOptions, State};
use crate::stages::StageName;
use crate::ui::Bars;
use anyhow::Result;
use gnno_store::GraphRead;
use std::io::Write;

pub fn dispatch(cli: &Cli) -> Result<()> {
    if matches!(cli.command, Command::Validate) {
        return validate(cli);
    }
    let p = Pipeline::load(&cli.config)?;
    set_threads(p.cfg.threads())?;
    let bars = Bars::new(cli.quiet);
    match &cli.command {
        Command::Validate => unreachable!("handled above"),
        Command::Run(a) => {
            let opts = RunOptions {
                force: a.force,
                override_gates: a.override_gates.clone(),
            };
            let done = p.run_all(a.from, a.to, &opts, &bars)?;
            summary(&p, &done)
        }
        Command::Stage {
            stage,
            force,
            override_gates,
        } => {
            let opts = RunOptions {
                force: *force,
                override_gates: if *override_gates {
                    vec![*stage]
                } else {
                    vec![]
                },
            };
            p.run_one(*stage, &opts, &bars)?;
            Ok(())
        }
        Command::History {
            stage,
            last,
            json,
            plot,
        } => crate::history_view::show(&p, *stage, *last, *json, plot.as_deref()),
        Command::Rollback { stage, to, list } => rollback(&p, *stage, to.as_deref(), *list),
        Command::Status { json } => status(&p, *json),
        Command::Report { stage, json } => report(&p, *stage, *json),
        Command::Inspect {
            what: Inspect::Item { id, top, json },
        } => inspect_item(&p, id, *top, *json),
        Command::Audit {
            what:
                Audit::Negatives {
                    epoch,
                    json,
                    plot,
                    run,
                    model,
                },
        } => audit(
            &p,
            epoch,
            *json,
            plot.as_deref(),
            run.as_deref(),
            model.as_deref(),
        ),
    }
}

/// One `threads` setting sizes rayon, polars and (in the train stage) libtorch.
///
/// `set_var` is only sound while no other thread can read the environment, so it
/// runs first, while the process has one thread: before the rayon pool starts its
/// workers and before polars (which reads the variable once) is touched.
fn set_threads(n: usize) -> Result<()> {
    if let Some(t) = os_threads().filter(|&t| t > 1) {
        return Err(gnno_core::Error::internal(format!(
            "POLARS_MAX_THREADS must be set while the process has one thread, it has {t}"
        ))
        .into());
    }
    std::env::set_var("POLARS_MAX_THREADS", n.to_string());
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    Ok(())
}

/// Threads of this process (Linux; None elsewhere).
fn os_threads() -> Option<usize> {
    std::fs::read_dir("/proc/self/task")
        .ok()
        .map(Iterator::count)
}

fn out() -> std::io::StdoutLock<'static> {
    std::io::stdout().lock()
}

fn validate(cli: &Cli) -> Result<()> {
    let cfg = gnno_core::config::Config::load(&cli.config)?;
    let files = gnno_ingest::parse::resolve_inputs(&cfg.ingest.inputs, &cfg.folder)?;
    writeln!(
        out(),
        "{}: valid; {} input file(s), workdir {}, {} thread(s), device {}",
        cli.config.display(),
        files.len(),
        cfg.run.workdir.display(),
        cfg.threads(),
        cfg.run.device
    )?;
    Ok(())
}

fn status(p: &Pipeline, json: bool) -> Result<()> {
    let mut rows = Vec::new();
    for s in StageName::ALL {
        let state = p.state(s)?;
        rows.push(serde_json::json!({ "stage": s.as_str(), "status": state }));
        if !json {
            let line = match &state {
                State::UpToDate => "up to date".to_owned(),
                State::Missing => "missing".to_owned(),
                State::Stale { reasons } => format!("stale: {}", reasons.join("; ")),
            };
            writeln!(out(), "{:<10} {line}", s.as_str())?;
        }
    }
    if json {
        writeln!(out(), "{}", serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(())
}

fn report(p: &Pipeline, s: StageName, json: bool) -> Result<()> {
    let (m, _) = p.require(s)?;
    if json {
        let v = serde_json::json!({ "stage": s.as_str(), "report": m.report, "timings_s": m.timings_s, "fingerprint": m.fingerprint });
        writeln!(out(), "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(
            out(),
            "{s} (run {}, fingerprint {})",
            m.run_dir,
            &m.fingerprint[..12.min(m.fingerprint.len())]
        )?;
        print_flat(&m.report, "  ")?;
        for (k, v) in &m.timings_s {
            writeln!(out(), "  time.{k:<24} {v:.3} s")?;
        }
    }
    Ok(())
}

fn print_flat(v: &serde_json::Value, indent: &str) -> Result<()> {
    if let serde_json::Value::Object(m) = v {
        for (k, x) in m {
            match x {
                serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
                    writeln!(out(), "{indent}{k:<30} {}", serde_json::to_string(x)?)?;
                }
                _ => writeln!(out(), "{indent}{k:<30} {x}")?,
            }
        }
    }
    Ok(())
}

/// Headline figures after `gnno run`.
fn summary(p: &Pipeline, done: &[(StageName, bool)]) -> Result<()> {
    let mut o = out();
    writeln!(o, "workdir: {}", p.workdir().display())?;
    for (s, ran) in done {
        writeln!(
            o,
            "  {:<10} {}",
            s.as_str(),
            if *ran { "ran" } else { "up to date" }
        )?;
    }
    if let Some(m) = p.manifest(StageName::Evaluate)? {
        writeln!(
            o,
            "results: {}",
            m.run_path(&p.stage_dir(StageName::Evaluate)).display()
        )?;
        if let Some(full) = m.report.get("test_full") {
            let pick = |k: &str| {
                full.get(k)
                    .and_then(serde_json::Value::as_f64)
                    .unwrap_or(f64::NAN)
            };
            let protocol =
                if m.report.get("exclude_history") == Some(&serde_json::Value::Bool(false)) {
                    "history included"
                } else {
                    "history excluded"
                };
            writeln!(
                o,
                "test (full ranking, {protocol}): HR@10 {:.4}  NDCG@10 {:.4}  HR@20 {:.4}  NDCG@20 {:.4}",
                pick("HR@10"),
                pick("NDCG@10"),
                pick("HR@20"),
                pick("NDCG@20")
            )?;
        }
        writeln!(o, "all figures: gnno report evaluate --json")?;
    }
    Ok(())
}

fn inspect_item(p: &Pipeline, id: &str, top: usize, json: bool) -> Result<()> {
    let (ds, fp) = p.dataset()?;
    let store = p.graph_store(Some(&fp))?;
    let idx = if let Some(n) = id.strip_prefix('#') {
        n.parse::<u32>().ok().filter(|&i| i >= 1 && i <= ds.n_items)
    } else {
        ds.item_raw
            .iter()
            .position(|r| r == id)
            .and_then(|i| u32::try_from(i).ok())
            .filter(|&i| i >= 1)
    }
    .ok_or_else(|| {
        gnno_core::Error::usage(format!("no item {id:?} in the ingest output"))
            .with_hint("give a raw item id, or #N for the item index N")
    })?;
    let raw = |i: u32| ds.item_raw.get(i as usize).cloned().unwrap_or_default();
    let (wn, ww) = store.witg(idx)?;
    let mut witg: Vec<(u32, f64)> = wn.into_iter().zip(ww).collect();
    witg.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let (on, oj) = store.overlap(idx)?;
    let degree = witg.len();
    let list_len = on.len();
    if json {
        let v = serde_json::json!({
            "item": idx, "raw_id": raw(idx), "degree": degree, "overlap_list_len": list_len,
            "witg": witg.iter().take(top).map(|&(j, w)| serde_json::json!({"item": j, "raw_id": raw(j), "weight": w})).collect::<Vec<_>>(),
            "overlap": on.iter().zip(&oj).filter(|(j, _)| **j != idx).take(top).map(|(&j, &v)| serde_json::json!({"item": j, "raw_id": raw(j), "jaccard": v})).collect::<Vec<_>>(),
        });
        writeln!(out(), "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    let mut o = out();
    writeln!(
        o,
        "item #{idx} (raw {}): {degree} WITG neighbours, {list_len} items with overlap > 0",
        raw(idx)
    )?;
    writeln!(o, "top WITG neighbours (w'):")?;
    for &(j, w) in witg.iter().take(top) {
        writeln!(o, "  {:<16} #{j:<8} {w:.6}", raw(j))?;
    }
    writeln!(o, "top overlaps (J):")?;
    for (&j, &v) in on.iter().zip(&oj).filter(|(j, _)| **j != idx).take(top) {
        writeln!(o, "  {:<16} #{j:<8} {v:.6}", raw(j))?;
    }
    Ok(())
}

fn audit(
    p: &Pipeline,
    want: &[u32],
    json: bool,
    plot: Option<&std::path::Path>,
    kept_run: Option<&str>,
    model: Option<&std::path::Path>,
) -> Result<()> {
    let dir = p.stage_dir(StageName::Negatives);
    let (m, ds, store) = match kept_run {
        None => {
            let (m, _) = p.require(StageName::Negatives)?;
            (m, p.dataset()?.0, p.graph_store(None)?)
        }
        Some(r) => {
            // The ingest and graph runs this one was drawn from, by fingerprint.
            let m = p.kept_manifest(StageName::Negatives, |k| {
                k.run_dir == r || k.run_dir.starts_with(r)
            })?;
            let input = |s: StageName| {
                m.inputs
                    .iter()
                    .find(|i| i.name == s.as_str())
                    .map(|i| i.fingerprint.clone())
                    .unwrap_or_default()
            };
            let (ingest_fp, graph_fp) = (input(StageName::Ingest), input(StageName::Graph));
            let im = p.kept_manifest(StageName::Ingest, |k| k.fingerprint == ingest_fp)?;
            let gm = p.kept_manifest(StageName::Graph, |k| k.fingerprint == graph_fp)?;
            let ds =
                gnno_core::dataset::Dataset::load(&im.run_path(&p.stage_dir(StageName::Ingest)))?;
            let store = gnno_store::Store::open_snapshot(
                &gm.run_path(&p.stage_dir(StageName::Graph))
                    .join(crate::stages::STORE_DIR),
                Some(&ingest_fp),
            )?;
            (m, ds, store)
        }
    };
    // Checksums first: a damaged shard is named before any statistic is computed.
    m.verify_outputs(&dir, true)?;
    let run = m.run_path(&dir);
    // J of every drawn negative comes from the graph store, whatever the sampler.
    let index = gnno_negatives::sampler::OverlapIndex::load(store.store(), 1.0)?;
    drop(store);
    let epochs = m
        .report
        .get("epochs")
        .and_then(|e| e.as_array())
        .cloned()
        .unwrap_or_default();
    let mut audits = Vec::new();
    for e in &epochs {
        let ep = u32::try_from(
            e.get("epoch")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
        )
        .unwrap_or(0);
        if !want.is_empty() && !want.contains(&ep) {
            continue;
        }
        let h = e.get("hardness").and_then(serde_json::Value::as_f64);
        if h.is_none() {
            audits.push(gnno_negatives::audit::EpochAudit {
                epoch: ep,
                hardness: None,
                rows: 0,
                negatives: 0,
                overlap_quantiles: [0.0; 7],
                share_overlap_positive: 0.0,
                share_dev_item: 0.0,
                share_test_item: 0.0,
                share_in_train_history: 0.0,
                distinct_items: 0,
                overlap_mismatches: 0,
                top_negatives: vec![],
            });
            continue;
        }
        audits.push(gnno_negatives::audit::audit_epoch(
            &run.join(gnno_core::shards::epoch_dir(ep)),
            ep,
            h,
            &ds,
            Some(&index),
        )?);
    }
    if let Some(missing) = want.iter().find(|w| !audits.iter().any(|a| a.epoch == **w)) {
        return Err(gnno_core::Error::usage(format!(
            "epoch {missing} was not drawn (epochs 0..{})",
            epochs.len()
        ))
        .into());
    }
    let scored = match model {
        None => Vec::new(),
        Some(m) => {
            let file = if m.is_dir() {
                m.join(gnno_train::export::MODEL_FILE)
            } else {
                m.to_path_buf()
            };
            let progress = gnno_core::progress::NoProgress;
            let job = crate::stages::train_job(p, &ds, &run, &run, &progress);
            let ep: Vec<u32> = audits.iter().map(|a| a.epoch).collect();
            gnno_train::hardness(&job, &file, &ep)?
        }
    };
    let plot_path = plot.map_or_else(|| dir.join("audit.svg"), std::path::Path::to_path_buf);
    gnno_core::fsutil::write_atomic(
        &plot_path,
        gnno_negatives::audit::plot_svg(&audits).as_bytes(),
    )?;
    if json {
        let mut rows = serde_json::to_value(&audits)?;
        for (row, s) in rows.as_array_mut().into_iter().flatten().zip(&scored) {
            row["model"] = serde_json::to_value(s)?;
        }
        let v = serde_json::json!({ "epochs": rows, "plot": plot_path.display().to_string(), "checksums_verified": m.outputs.len(), "model": model.map(|m| m.display().to_string()) });
        writeln!(out(), "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    let mut o = out();
    writeln!(
        o,
        "{} shard files verified against the manifest",
        m.outputs.len()
    )?;
    writeln!(o, "epoch  h      negatives  J p50    J p90    J p99    J>0     dev     test    hist    distinct  top")?;
    for a in &audits {
        match a.hardness {
            None => writeln!(o, "{:<6} warm-up: no hard negatives", a.epoch)?,
            Some(h) => writeln!(
                o,
                "{:<6} {h:<6.3} {:<10} {:<8.4} {:<8.4} {:<8.4} {:<7.4} {:<7.5} {:<7.5} {:<7.5} {:<9} {}",
                a.epoch,
                a.negatives,
                a.overlap_quantiles[2],
                a.overlap_quantiles[4],
                a.overlap_quantiles[5],
                a.share_overlap_positive,
                a.share_dev_item,
                a.share_test_item,
                a.share_in_train_history,
                a.distinct_items,
                a.top_negatives.iter().take(3).map(|(r, c)| format!("{r}({c})")).collect::<Vec<_>>().join(" ")
            )?,
        }
    }
    if let Some(m) = model {
        writeln!(
            o,
            "scored by {}: share of the valid negatives above the target",
            m.display()
        )?;
        writeln!(o, "epoch  loss     random   hard")?;
        let share = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
        for s in &scored {
            writeln!(
                o,
                "{:<6} {:<8.4} {:<8} {}",
                s.epoch,
                s.loss,
                share(s.random_above_target),
                share(s.hard_above_target)
            )?;
        }
    }
    writeln!(o, "plot: {}", plot_path.display())?;
    Ok(())
}

fn rollback(p: &Pipeline, s: StageName, to: Option<&str>, list: bool) -> Result<()> {
    if list {
        let (kept, current) = p.kept(s)?;
        let cur = current.as_ref().map(|m| m.run_dir.as_str());
        let mut o = out();
        for k in &kept {
            let mark = if Some(k.run_dir.as_str()) == cur {
                "  (published)"
            } else {
                ""
            };
            writeln!(o, "{:>6}  {}{mark}", k.seq, k.run_dir)?;
        }
        return Ok(());
    }
    let done = p.rollback(s, to)?;
    let mut o = out();
    if done.is_empty() {
        writeln!(o, "{s}: already published, nothing to do")?;
    }
    for (st, m) in &done {
        writeln!(o, "{st}: published {} again", m.run_dir)?;
    }
    writeln!(
        o,
        "see `gnno status` for what the next `gnno run` would redo"
    )?;
    Ok(())
}
