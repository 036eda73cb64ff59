//! Every key of docs/CONFIG.md belongs to exactly the stages whose output it can
//! change (issue 11, item 5).

use super::StageName;
use gnno_core::config::Config;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `section.key` of every key documented in docs/CONFIG.md (kebab-case).
fn documented_keys() -> Vec<String> {
    let text = include_str!("../../docs/CONFIG.md");
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in text.lines() {
        if let Some(s) = line.strip_prefix("## [") {
            section = s.trim_end_matches(']').to_owned();
            continue;
        }
        let Some(cell) = line.strip_prefix("| `") else {
            continue;
        };
        let first = cell.split(" |").next().unwrap_or_default();
        for k in first.split(',') {
            let k = k.trim().trim_matches('`');
            assert!(!section.is_empty(), "key {k} outside a section");
            keys.push(format!("{section}.{k}"));
        }
    }
    keys
}

/// Stages whose declared settings cover a key path (`section.key`, kebab-case).
fn owners(cfg: &Config, key: &str) -> BTreeSet<StageName> {
    let norm = |s: &str| s.replace('-', "_");
    let (section, k) = key.split_once('.').expect("section.key");
    StageName::ALL
        .into_iter()
        .filter(|s| {
            let v = s.stage().settings(cfg);
            let m = v.as_object().expect("settings are an object");
            m.iter().any(|(top, val)| {
                norm(top) == norm(key) || (norm(top) == section && val.get(norm(k)).is_some())
            })
        })
        .collect()
}

/// Which stages each key must belong to. Keys of a section belong to the stage of
/// that name unless listed here; [train] keys are read from the serialized
/// `TrainSettings`, so new keys are covered as they are added.
fn expected(key: &str, train_keys: &BTreeSet<String>) -> BTreeSet<StageName> {
    use StageName::{Evaluate, Export, Graph, Ingest, Negatives, Train};
    let (section, k) = key.split_once('.').expect("section.key");
    let set = |v: &[StageName]| v.iter().copied().collect::<BTreeSet<_>>();
    match (section, k) {
        // Where and how fast, never what.
        ("run", "workdir" | "threads" | "device" | "keep-runs") => set(&[]),
        // Gates judge outputs; they never change one.
        ("gates", _) => set(&[]),
        ("run", "seed") => set(&[Negatives, Train, Evaluate]),
        ("ingest", _) => set(&[Ingest]),
        ("graph", _) => set(&[Graph]),
        ("negatives", _) => set(&[Negatives]),
        // The negatives stage draws one folder per epoch.
        ("train", "epochs") => set(&[Negatives, Train]),
        ("train", k) => {
            assert!(
                train_keys.contains(k),
                "train.{k} is documented but not a field of TrainSettings"
            );
            set(&[Train])
        }
        // It picks the best epoch on dev, and shapes the final ranking.
        ("evaluate", "exclude-history") => set(&[Train, Evaluate]),
        // Memory only.
        ("evaluate", "batch-size") => set(&[]),
        ("evaluate", _) => set(&[Evaluate]),
        // Memory only.
        ("export", "batch-size") => set(&[]),
        ("export", _) => set(&[Export]),
        _ => panic!("{key}: unknown section in docs/CONFIG.md"),
    }
}

#[test]
fn every_documented_key_belongs_to_exactly_the_stages_whose_output_it_changes() {
    let mut cfg = Config::defaults(Path::new("/x"));
    // Keys added after a stage's first release are left out of its settings at
    // their default (older configs keep their run keys): set them off default.
    cfg.train.random_scope = gnno_core::config::RandomScope::Batch;
    cfg.train.random_groups = 2;
    cfg.train.sasrec_residual = gnno_core::config::SasrecResidual::Input;
    cfg.train.sasrec_padding = gnno_core::config::SasrecPadding::Attended;
    cfg.train.sasrec_init = gnno_core::config::SasrecInit::Xavier;
    cfg.train.output_embedding = gnno_core::config::OutputEmbedding::Separate;
    cfg.train.loss = gnno_core::config::Loss::Gbce;
    cfg.train.bce_offset = gnno_core::config::BceOffset::Prior;
    cfg.train.negative_weight = 4.0;
    cfg.train.history_negatives = true;
    cfg.train.head_negatives = 64;
    cfg.negatives.distinct = true;
    let train_keys: BTreeSet<String> = serde_json::to_value(&cfg.train)
        .expect("serializes")
        .as_object()
        .expect("object")
        .keys()
        .map(|k| k.replace('_', "-"))
        .collect();
    let keys = documented_keys();
    assert!(keys.len() > 50, "parsed only {} keys", keys.len());
    let mut wrong = BTreeMap::new();
    for key in &keys {
        let got = owners(&cfg, key);
        let want = expected(key, &train_keys);
        if got != want {
            wrong.insert(key.clone(), (got, want));
        }
    }
    assert!(wrong.is_empty(), "(declared, expected): {wrong:#?}");
    // Every [train] key is documented, so none escapes the walk above.
    for k in &train_keys {
        assert!(
            keys.contains(&format!("train.{k}")),
            "train.{k} is missing from docs/CONFIG.md"
        );
    }
}

#[test]
fn every_setting_a_stage_declares_is_a_documented_key() {
    // A declared key that docs/CONFIG.md does not know would be a typo that hashes
    // nothing useful (e.g. "run.sed").
    let cfg = Config::defaults(Path::new("/x"));
    let keys: BTreeSet<String> = documented_keys()
        .into_iter()
        .map(|k| k.replace('-', "_"))
        .collect();
    let sections: BTreeSet<&str> = keys.iter().filter_map(|k| k.split('.').next()).collect();
    for s in StageName::ALL {
        for (top, v) in s.stage().settings(&cfg).as_object().expect("object") {
            let top = top.replace('-', "_");
            if top.contains('.') {
                assert!(keys.contains(&top), "{s} declares unknown key {top}");
            } else {
                assert!(
                    sections.contains(top.as_str()),
                    "{s}: unknown section {top}"
                );
                for k in v.as_object().expect("a section is an object").keys() {
                    let full = format!("{top}.{k}");
                    assert!(keys.contains(&full), "{s} declares undocumented {full}");
                }
            }
        }
    }
}
