//! Stage crates never depend on each other (they meet through artifacts only).

#[test]
fn stage_crates_do_not_depend_on_each_other() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let stages = ["gnno-ingest", "gnno-graph", "gnno-negatives", "gnno-train"];
    let mut checked = 0;
    for pkg in v["packages"].as_array().expect("packages") {
        let name = pkg["name"].as_str().expect("name");
        let deps: Vec<&str> = pkg["dependencies"]
            .as_array()
            .expect("deps")
            .iter()
            .filter_map(|d| d["name"].as_str())
            .collect();
        if stages.contains(&name) {
            checked += 1;
            for d in &deps {
                assert!(!stages.contains(d), "{name} depends on {d}");
            }
        }
        if name == "gnno-core" || name == "gnno-store" {
            assert!(
                !deps
                    .iter()
                    .any(|d| stages.contains(d) || *d == "polars" || *d == "tch"),
                "{name} must stay small: {deps:?}"
            );
        }
        if name != "gnno-train" && name != "gnno" {
            assert!(
                !deps.contains(&"tch"),
                "only gnno-train links libtorch, not {name}"
            );
        }
    }
    assert_eq!(checked, 4);
}
