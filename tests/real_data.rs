//! Parity on the real data sets in ../shared/data (GNNO.md §1-3, data/README.md).

use crate::common::{shared, Project};

fn data(rel: &str) -> String {
    let p = shared().join("data").join(rel);
    assert!(
        p.exists(),
        "{} is missing: tests need ../shared/data",
        p.display()
    );
    p.display().to_string()
}

#[test]
fn beauty_ingest_and_graph_match_the_reference_figures() {
    let p = Project::new();
    p.config(&format!(
        "[run]\nworkdir = \"work\"\n[ingest]\ninputs = [\"{}\"]\nformat = \"sequences\"\nuser-core = 0\nitem-core = 0\n",
        data("s3rec/Beauty.txt")
    ));
    p.ok(&["run", "--to", "graph"]);
    let i = p.json(&["report", "ingest", "--json"])["report"].clone();
    assert_eq!(i["users"], 22_363);
    assert_eq!(i["items"], 12_101);
    assert_eq!(i["rows_out"], 198_502);
    assert_eq!(i["training_instances"], 131_413);
    let g = p.json(&["report", "graph", "--json"])["report"].clone();
    assert_eq!(g["items_with_edges"], 12_068);
    assert_eq!(g["directed_edges"], 530_266);
    assert!(
        (g["mean_degree"].as_f64().expect("mean") - 43.94).abs() < 0.005,
        "{g}"
    );
    assert_eq!(g["max_degree"], 1_006);
    assert_eq!(g["overlap_pairs"], 29_306_240);
    assert_eq!(g["overlap_pairs_over_0_1"], 150_298);
    // The default 5-core changes nothing on 5-core data.
    p.config(&format!(
        "[run]\nworkdir = \"work\"\n[ingest]\ninputs = [\"{}\"]\nformat = \"sequences\"\n",
        data("s3rec/Beauty.txt")
    ));
    p.ok(&["run", "--to", "ingest"]);
    let i = p.json(&["report", "ingest", "--json"])["report"].clone();
    assert_eq!(i["rows_out"], 198_502);
    assert_eq!(i["dropped_kcore"], 0);
}

#[test]
fn amazon_beauty_tsv_graph_matches() {
    // The authors' train split: leave-one-out on it drops two more items per user.
    let p = Project::new();
    p.config(&format!(
        "[run]\nworkdir = \"work\"\n[ingest]\ninputs = [\"{}\"]\nseparator = \"\\t\"\ntime-col = \"time\"\nuser-core = 0\nitem-core = 0\n",
        data("amazon-beauty/interactions.tsv")
    ));
    p.ok(&["run", "--to", "graph"]);
    let i = p.json(&["report", "ingest", "--json"])["report"].clone();
    assert_eq!(i["rows_out"], 153_776);
    assert_eq!(i["users"], 22_363);
    let g = p.json(&["report", "graph", "--json"])["report"].clone();
    assert_eq!(g["items_with_edges"], 11_778);
    assert_eq!(g["directed_edges"], 347_954);
    assert_eq!(g["overlap_pairs"], 15_107_804);
}

#[test]
fn amazon_2018_raw_json_dumps_ingest_with_duplicates_counted() {
    let p = Project::new();
    let dir = shared().join("data/amazon2018-raw");
    p.config(&format!(
        "[run]\nworkdir = \"work\"\n[ingest]\ninputs = [\"{}/*.json*\"]\nformat = \"jsonl\"\nuser-col = \"reviewerID\"\nitem-col = \"asin\"\ntime-col = \"unixReviewTime\"\nrating-col = \"overall\"\ndedup-pairs = true\nuser-core = 0\nitem-core = 0\n",
        dir.display()
    ));
    p.ok(&["run", "--to", "ingest"]);
    let i = p.json(&["report", "ingest", "--json"])["report"].clone();
    assert_eq!(i["files"].as_array().expect("files").len(), 5, "{i}");
    let read = i["rows_read"].as_u64().expect("read");
    let dups = i["dropped_duplicates"].as_u64().expect("dups")
        + i["dropped_repeat_pairs"].as_u64().expect("pairs");
    assert!(dups > 0, "the dumps hold duplicate (user, item) pairs: {i}");
    assert_eq!(
        i["rows_out"].as_u64().expect("out"),
        read - dups
            - i["dropped_missing"].as_u64().expect("m")
            - i["bad_rows"].as_u64().expect("b")
    );
    // Counted by hand: distinct (user, item) pairs across the five dumps.
    let mut pairs = std::collections::HashSet::new();
    let mut lines = 0u64;
    for f in std::fs::read_dir(&dir).expect("dir") {
        let path = f.expect("entry").path();
        let text = if path.extension().is_some_and(|e| e == "gz") {
            let mut s = String::new();
            std::io::Read::read_to_string(
                &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(&path).expect("open")),
                &mut s,
            )
            .expect("gz");
            s
        } else {
            std::fs::read_to_string(&path).expect("read")
        };
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            lines += 1;
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            if let (Some(u), Some(it)) = (v["reviewerID"].as_str(), v["asin"].as_str()) {
                pairs.insert((u.to_owned(), it.to_owned()));
            }
        }
    }
    assert_eq!(read, lines);
    assert_eq!(i["rows_out"].as_u64(), Some(pairs.len() as u64));
}

#[test]
fn movielens_sets_ingest_with_their_own_headers() {
    let p = Project::new();
    p.config(&format!(
        "[run]\nworkdir = \"work\"\n[ingest]\ninputs = [\"{}\"]\nseparator = \"\\t\"\nuser-col = \"user_id\"\nitem-col = \"item_id\"\ntime-col = \"timestamp\"\nrating-col = \"rating\"\nuser-core = 0\nitem-core = 0\n",
        data("movielens-100k/ml-100k.inter")
    ));
    p.ok(&["run", "--to", "ingest"]);
    let i = p.json(&["report", "ingest", "--json"])["report"].clone();
    assert_eq!(
        (
            i["rows_out"].as_u64(),
            i["users"].as_u64(),
            i["items"].as_u64()
        ),
        (Some(100_000), Some(943), Some(1_682))
    );
    let q = Project::new();
    q.config(&format!(
        "[run]\nworkdir = \"work\"\n[ingest]\ninputs = [\"{}\"]\nuser-col = \"userId\"\nitem-col = \"movieId\"\ntime-col = \"timestamp\"\nrating-col = \"rating\"\nuser-core = 0\nitem-core = 0\n",
        data("movielens-latest-small/ratings.csv")
    ));
    q.ok(&["run", "--to", "ingest"]);
    let i = q.json(&["report", "ingest", "--json"])["report"].clone();
    assert_eq!(
        (
            i["rows_out"].as_u64(),
            i["users"].as_u64(),
            i["items"].as_u64()
        ),
        (Some(100_004), Some(671), Some(9_066))
    );
}
