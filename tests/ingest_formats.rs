//! Each input format, cleaning step and bad-input policy on small fixtures.

use crate::common::{run_dir, stderr, Project};
use gnno_core::dataset::Dataset;

fn cfg(ingest: &str) -> String {
    format!("[run]\nworkdir = \"work\"\nthreads = 1\n[ingest]\n{ingest}\n")
}

fn ingest(p: &Project) -> (serde_json::Value, Dataset) {
    p.ok(&["run", "--to", "ingest"]);
    let rep = p.json(&["report", "ingest", "--json"])["report"].clone();
    (
        rep,
        Dataset::load(&run_dir(&p.workdir(), "ingest")).expect("load"),
    )
}

/// Raw ids of a user's sequence: train items, then dev, then test.
fn seq(ds: &Dataset, user: &str) -> Vec<String> {
    let u = ds.user_raw.iter().position(|r| r == user).expect("user");
    let mut v: Vec<String> = ds
        .train_seq(u32::try_from(u).expect("u32"))
        .iter()
        .map(|&i| ds.item_raw[i as usize].clone())
        .collect();
    for i in [ds.dev[u], ds.test[u]] {
        if i != 0 {
            v.push(ds.item_raw[i as usize].clone());
        }
    }
    v
}

#[test]
fn tsv_with_iso_dates_ties_in_log_order_duplicates_and_rating_threshold() {
    let p = Project::new();
    p.write(
        "log.tsv",
        "user\titem\twhen\tstars\n\
         a\tx\t2020-01-03\t5\n\
         a\ty\t2020-01-01\t4\n\
         a\tz\t2020-01-01\t4\n\
         a\tz\t2020-01-01\t4\n\
         a\tw\t2020-01-02T10:00:00Z\t1\n\
         a\tv\t2020-01-04\t3\n\
         b\tx\t2020-02-01\t5\n\
         b\ty\t2020-02-02\t5\n\
         b\t\t2020-02-03\t5\n\
         b\tz\t2020-02-04\t5\n",
    );
    p.config(&cfg("inputs = [\"log.tsv\"]\nseparator = \"\\t\"\nuser-col = \"user\"\nitem-col = \"item\"\ntime-col = \"when\"\nrating-col = \"stars\"\nmin-rating = 3\nuser-core = 0\nitem-core = 0"));
    let (rep, ds) = ingest(&p);
    assert_eq!(rep["rows_read"], 10);
    assert_eq!(rep["dropped_missing"], 1);
    assert_eq!(rep["dropped_duplicates"], 1);
    assert_eq!(rep["dropped_rating"], 1, "w has 1 star");
    assert_eq!(rep["rows_out"], 7);
    // y and z share a timestamp: raw-log order (y first) decides.
    assert_eq!(seq(&ds, "a"), ["y", "z", "x", "v"]);
    assert_eq!(seq(&ds, "b"), ["x", "y", "z"]);
    assert_eq!(rep["users"], 2);
    assert_eq!(rep["items"], 4);
    assert_eq!(ds.item_raw[0], "<pad>");
    assert_eq!(rep["dev_rows"], 2);
    assert_eq!(rep["training_instances"], 1);
}

#[test]
fn movielens_double_colon_without_header_and_kcore() {
    let p = Project::new();
    let mut log = String::new();
    // 4 users x 4 items all rated, plus a user and an item with one rating each.
    for u in 1..=4 {
        for i in 1..=4 {
            log += &format!("{u}::{i}::4::{}\n", 1000 + u * 10 + i);
        }
    }
    log += "9::1::5::2000\n1::99::5::2001\n";
    p.write("ratings.dat", &log);
    p.config(&cfg("inputs = [\"ratings.dat\"]\nseparator = \"::\"\nheader = false\ncolumns = [\"user\", \"item\", \"rating\", \"ts\"]\nuser-col = \"user\"\nitem-col = \"item\"\ntime-col = \"ts\"\nuser-core = 3\nitem-core = 3"));
    let (rep, ds) = ingest(&p);
    assert_eq!(rep["rows_read"], 18);
    assert_eq!(rep["dropped_kcore"], 2);
    assert!(rep["kcore_rounds"].as_u64().expect("rounds") >= 2);
    assert_eq!(rep["users"], 4);
    assert_eq!(rep["items"], 4);
    assert_eq!(seq(&ds, "2"), ["1", "2", "3", "4"]);
}

#[test]
fn json_lines_gzip_and_globs() {
    let p = Project::new();
    let lines = [
        r#"{"reviewerID": "A", "asin": "p1", "unixReviewTime": 100, "overall": 5.0, "style": {"x": 1}}"#,
        r#"{"reviewerID": "A", "asin": "p2", "unixReviewTime": 200, "overall": 4.0}"#,
        r#"{"reviewerID": "A", "asin": "p2", "unixReviewTime": 200, "overall": 4.0}"#,
        r#"{"reviewerID": "A", "asin": "p3", "unixReviewTime": 300, "overall": 4.0}"#,
        r#"{"reviewerID": null, "asin": "p3", "unixReviewTime": 300}"#,
    ];
    p.write("dump/a.json", &lines[..3].join("\n"));
    // The second part gzipped.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, lines[3..].join("\n").as_bytes()).expect("gz");
    std::fs::write(p.path().join("dump/b.json.gz"), gz.finish().expect("gz")).expect("write");
    p.config(&cfg("inputs = [\"dump/*.json*\"]\nformat = \"jsonl\"\nuser-col = \"reviewerID\"\nitem-col = \"asin\"\ntime-col = \"unixReviewTime\"\nrating-col = \"overall\"\nuser-core = 0\nitem-core = 0"));
    let (rep, ds) = ingest(&p);
    assert_eq!(rep["files"].as_array().expect("files").len(), 2);
    assert_eq!(rep["rows_read"], 5);
    assert_eq!(rep["dropped_duplicates"], 1);
    assert_eq!(rep["dropped_missing"], 1);
    assert_eq!(seq(&ds, "A"), ["p1", "p2", "p3"]);
}

#[test]
fn sequence_format_uses_position_as_order() {
    let p = Project::new();
    p.write("seqs.txt", "u1 10 11 12 13\nu2 11 12 14\n");
    p.config(&cfg(
        "inputs = [\"seqs.txt\"]\nformat = \"sequences\"\nuser-core = 0\nitem-core = 0",
    ));
    let (rep, ds) = ingest(&p);
    assert_eq!(rep["rows_out"], 7);
    assert_eq!(seq(&ds, "u1"), ["10", "11", "12", "13"]);
    assert_eq!(ds.train_seq(0).len(), 2);
    assert_eq!(rep["training_instances"], 1);
}

#[test]
fn dedup_pairs_keeps_the_first_and_short_users_policy() {
    let p = Project::new();
    p.write(
        "s.csv",
        "user_id,item_id,timestamp\nA,x,1\nA,y,2\nA,x,3\nA,z,4\nB,x,1\nB,y,2\n",
    );
    p.config(&cfg("inputs = [\"s.csv\"]\ndedup-pairs = true\nshort-users = \"drop\"\nuser-core = 0\nitem-core = 0"));
    let (rep, ds) = ingest(&p);
    assert_eq!(rep["dropped_repeat_pairs"], 1);
    assert_eq!(rep["dropped_short_users"], 2, "B has 2 interactions");
    assert_eq!(seq(&ds, "A"), ["x", "y", "z"]);
    // With the default policy B stays, all in train, not evaluated.
    p.config(&cfg("inputs = [\"s.csv\"]\nuser-core = 0\nitem-core = 0"));
    let (rep, ds) = ingest(&p);
    assert_eq!(rep["users"], 2);
    let b = ds.user_raw.iter().position(|r| r == "B").expect("B");
    assert_eq!((ds.dev[b], ds.test[b]), (0, 0));
}

#[test]
fn time_cutoff_split() {
    let p = Project::new();
    p.write(
        "s.csv",
        "user_id,item_id,timestamp\nA,x,1\nA,y,2\nA,z,5\nA,w,9\nB,x,3\nB,y,6\n",
    );
    p.config(&cfg("inputs = [\"s.csv\"]\nsplit = \"time-cutoff\"\ndev-from = 5\ntest-from = 9\nuser-core = 0\nitem-core = 0"));
    let (rep, _) = ingest(&p);
    assert_eq!(
        (
            rep["train_rows"].as_u64(),
            rep["dev_rows"].as_u64(),
            rep["test_rows"].as_u64()
        ),
        (Some(3), Some(2), Some(1))
    );
}

#[test]
fn bad_rows_error_with_file_and_line_or_are_skipped_and_counted() {
    let p = Project::new();
    p.write(
        "s.csv",
        "user_id,item_id,timestamp\nA,x,1\nA,y\nA,z,yesterday\nA,w,4\n",
    );
    p.config(&cfg("inputs = [\"s.csv\"]\nuser-core = 0\nitem-core = 0"));
    let o = p.gnno(&["run", "--to", "ingest"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("s.csv:3: expected at least 3 fields"), "{e}");
    assert!(
        e.contains("hint: fix the row, or set ingest.on-bad-row"),
        "{e}"
    );
    assert!(
        !p.workdir().join("ingest/manifest.json").exists(),
        "nothing published"
    );
    p.config(&cfg(
        "inputs = [\"s.csv\"]\non-bad-row = \"skip\"\nuser-core = 0\nitem-core = 0",
    ));
    let (rep, _) = ingest(&p);
    assert_eq!(rep["bad_rows"], 2);
    let ex = rep["bad_row_examples"].as_array().expect("examples");
    assert!(
        ex[1]
            .as_str()
            .expect("s")
            .contains("s.csv:4: unparseable timestamp \"yesterday\""),
        "{ex:?}"
    );
    assert_eq!(rep["rows_out"], 2);
}

#[test]
fn unknown_columns_and_empty_input_are_clear_errors() {
    let p = Project::new();
    p.write("s.csv", "uid,iid,ts\nA,x,1\n");
    p.config(&cfg("inputs = [\"s.csv\"]"));
    let o = p.gnno(&["run", "--to", "ingest"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("unknown column \"user_id\" (ingest.user-col); the columns are: uid, iid, ts"),
        "{e}"
    );
    p.write("s.csv", "user_id,item_id,timestamp\n");
    p.config(&cfg("inputs = [\"s.csv\"]"));
    let o = p.gnno(&["run", "--to", "ingest"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("holds no data rows"), "{}", stderr(&o));
    p.config(&cfg("inputs = [\"nothing/*.csv\"]"));
    let o = p.gnno(&["run", "--to", "ingest"]);
    assert!(stderr(&o).contains("matches no file"), "{}", stderr(&o));
}

#[test]
fn without_a_time_column_file_order_then_line_order_is_time_order() {
    // Issue 11, item 3: the row counter that stands in for time ran per file (and
    // per sequence line), so A's rows from b.csv interleaved with those of a.csv.
    let p = Project::new();
    p.write("in/a.csv", "user_id,item_id\nA,x\nA,y\nB,x\nB,w\n");
    p.write("in/b.csv", "user_id,item_id\nA,z\nB,y\nA,v\n");
    p.config(&cfg(
        "inputs = [\"in/*.csv\"]\ntime-col = \"\"\nuser-core = 0\nitem-core = 0",
    ));
    let (_, ds) = ingest(&p);
    assert_eq!(seq(&ds, "A"), ["x", "y", "z", "v"]);
    assert_eq!(seq(&ds, "B"), ["x", "w", "y"]);
    // Files listed explicitly keep the listed order, whatever their names.
    p.config(&cfg(
        "inputs = [\"in/b.csv\", \"in/a.csv\"]\ntime-col = \"\"\nuser-core = 0\nitem-core = 0",
    ));
    let (_, ds) = ingest(&p);
    assert_eq!(seq(&ds, "A"), ["z", "v", "x", "y"]);
    // A user on two lines of a sequence file.
    p.write("s.txt", "u1 10 11\nu2 10 12\nu1 12 13\n");
    p.config(&cfg(
        "inputs = [\"s.txt\"]\nformat = \"sequences\"\nuser-core = 0\nitem-core = 0",
    ));
    let (_, ds) = ingest(&p);
    assert_eq!(seq(&ds, "u1"), ["10", "11", "12", "13"]);
}

#[test]
fn rfc4180_quoted_fields_bom_and_crlf() {
    let p = Project::new();
    p.write(
        "q.csv",
        "\u{feff}user_id,item_id,timestamp\r\n\
         \"Smith, J.\",\"the \"\"best\"\" pan\",1\r\n\
         \"Smith, J.\",\"multi\nline\",2\r\n\
         \"Smith, J.\",plain,3\r\n\
         bob,plain,\"4\"\r\n",
    );
    p.config(&cfg("inputs = [\"q.csv\"]\nuser-core = 0\nitem-core = 0"));
    let (rep, ds) = ingest(&p);
    assert_eq!(rep["rows_read"], 4, "{rep}");
    assert_eq!(
        seq(&ds, "Smith, J."),
        ["the \"best\" pan", "multi\nline", "plain"]
    );
    assert_eq!(seq(&ds, "bob"), ["plain"]);
    // A bad row after a quoted line break is reported at its own line.
    p.write(
        "q.csv",
        "user_id,item_id,timestamp\n\"a\",\"multi\nline\",1\na,x,soon\n",
    );
    let o = p.gnno(&["run", "--to", "ingest"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("q.csv:4: unparseable timestamp \"soon\""),
        "{}",
        stderr(&o)
    );
}
