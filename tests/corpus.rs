//! A corpus of malformed inputs (issue 11, item 14): ingest formats, config, shards,
//! manifests and the graph store. Each case runs the real binary and states its
//! exit code and a message naming the file, line or key; none may panic.

use crate::common::{run_dir, small_config, stderr, synthetic_log, Project};
use std::path::Path;

/// Ingest-only config over `input` with the given extra [ingest] lines.
fn ingest_cfg(input: &str, extra: &str) -> String {
    let cores = if extra.contains("-core") {
        ""
    } else {
        "user-core = 0\nitem-core = 0\n"
    };
    format!(
        "[run]\nworkdir = \"work\"\nthreads = 1\n[ingest]\ninputs = [\"{input}\"]\n{cores}{extra}\n"
    )
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut e, bytes).expect("gz");
    e.finish().expect("gz")
}

struct Case {
    name: &'static str,
    file: &'static str,
    bytes: Vec<u8>,
    extra: &'static str,
    code: i32,
    /// Every one must appear on stderr.
    needles: &'static [&'static str],
}

fn case(
    name: &'static str,
    file: &'static str,
    bytes: impl Into<Vec<u8>>,
    extra: &'static str,
    code: i32,
    needles: &'static [&'static str],
) -> Case {
    Case {
        name,
        file,
        bytes: bytes.into(),
        extra,
        code,
        needles,
    }
}

fn assert_case(name: &str, o: &std::process::Output, code: i32, needles: &[&str]) {
    let e = stderr(o);
    assert!(!e.contains("panicked"), "{name}: panic:\n{e}");
    assert_eq!(o.status.code(), Some(code), "{name}: exit code:\n{e}");
    for n in needles {
        assert!(e.contains(n), "{name}: missing {n:?} in:\n{e}");
    }
}

const H: &str = "user_id,item_id,timestamp\n";

#[test]
fn malformed_ingest_inputs_exit_2_naming_file_and_line() {
    let full = gz(b"user_id,item_id,timestamp\nA,x,1\nA,y,2\nB,x,3\n");
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| u8::try_from((i * 7919 + 13) % 251).expect("byte"))
        .collect();
    let cases = vec![
        case("binary garbage", "d.csv", garbage.clone(), "", 2, &["d.csv"]),
        case(
            "truncated gzip",
            "d.csv.gz",
            full[..full.len() / 2].to_vec(),
            "",
            2,
            &["d.csv.gz", "unreadable input"],
        ),
        case(
            "not gzip at all",
            "d.csv.gz",
            "user_id,item_id,timestamp\nA,x,1\n",
            "",
            2,
            &["d.csv.gz:1", "unreadable input"],
        ),
        case("empty file", "d.csv", "", "", 2, &["d.csv", "the file is empty"]),
        case("header only", "d.csv", H, "", 2, &["d.csv", "holds no data rows"]),
        case(
            "wrong column count",
            "d.csv",
            format!("{H}A,x,1\nA,y\n"),
            "",
            2,
            &["d.csv:3: expected at least 3 fields"],
        ),
        case(
            "non-UTF-8 row",
            "d.csv",
            [format!("{H}A,x,1\n").as_bytes(), b"A,\xff\xfe,2\n"].concat(),
            "",
            2,
            &["d.csv:3", "not valid UTF-8"],
        ),
        case(
            "non-UTF-8 header",
            "d.csv",
            b"user_id,item\xff,timestamp\nA,x,1\n".to_vec(),
            "",
            2,
            &["d.csv:1", "header is not valid UTF-8"],
        ),
        case(
            "NaN rating",
            "d.csv",
            "user_id,item_id,timestamp,r\nA,x,1,4\nA,y,2,NaN\n",
            "rating-col = \"r\"",
            2,
            &["d.csv:3: unparseable rating \"NaN\""],
        ),
        case(
            "infinite rating",
            "d.csv",
            "user_id,item_id,timestamp,r\nA,x,1,inf\n",
            "rating-col = \"r\"",
            2,
            &["d.csv:2: unparseable rating \"inf\""],
        ),
        case(
            "duplicate header",
            "d.csv",
            "user_id,item_id,user_id,timestamp\nA,x,B,1\n",
            "",
            2,
            &["d.csv", "\"user_id\"", "appears twice"],
        ),
        case(
            "23-digit timestamp",
            "d.csv",
            format!("{H}A,x,12345678901234567890123\n"),
            "",
            2,
            &["d.csv:2: unparseable timestamp \"12345678901234567890123\""],
        ),
        case(
            "bad ISO date",
            "d.csv",
            format!("{H}A,x,2020-13-01\n"),
            "",
            2,
            &["d.csv:2: unparseable timestamp \"2020-13-01\""],
        ),
        case(
            "unterminated quote",
            "d.csv",
            format!("{H}A,x,1\n\"A,y,2\nB,z,3\n"),
            "",
            2,
            &["d.csv:3"],
        ),
        case(
            "unknown column",
            "d.csv",
            "uid,iid,ts\nA,x,1\n",
            "",
            2,
            &["d.csv", "unknown column \"user_id\" (ingest.user-col)"],
        ),
        case(
            "k-core leaves nothing",
            "d.csv",
            format!("{H}A,x,1\n"),
            "user-core = 5",
            2,
            &["d.csv", "no interaction is left"],
        ),
        case(
            "JSON lines: not JSON",
            "d.jsonl",
            "{\"user_id\": \"A\", \"item_id\": \"x\", \"timestamp\": 1}\n{oops\n",
            "format = \"jsonl\"",
            2,
            &["d.jsonl:2: not a JSON object"],
        ),
        case(
            "JSON lines: an array",
            "d.jsonl",
            "[1, 2, 3]\n",
            "format = \"jsonl\"",
            2,
            &["d.jsonl:1: not a JSON object"],
        ),
        case(
            "JSON lines: boolean time",
            "d.jsonl",
            "{\"user_id\": \"A\", \"item_id\": \"x\", \"timestamp\": true}\n",
            "format = \"jsonl\"",
            2,
            &["d.jsonl:1: unparseable timestamp true"],
        ),
        case(
            "sequences: a user without items",
            "d.txt",
            "u1 1 2 3\nu2\n",
            "format = \"sequences\"",
            2,
            &["d.txt:2: a user with no items"],
        ),
        case(
            "sequences: non-UTF-8",
            "d.txt",
            b"u1 1 2\nu2 \xc3\x28 3\n".to_vec(),
            "format = \"sequences\"",
            2,
            &["d.txt:2", "not valid UTF-8"],
        ),
        case(
            "MovieLens separator, short row",
            "d.dat",
            "1::2::5::100\n1::3\n",
            "separator = \"::\"\nheader = false\ncolumns = [\"user_id\", \"item_id\", \"r\", \"timestamp\"]",
            2,
            &["d.dat:2: expected at least 4 fields separated by \"::\""],
        ),
        // Legal inputs that look odd: accepted.
        case(
            "UTF-8 BOM",
            "d.csv",
            format!("\u{feff}{H}A,x,1\nA,y,2\n"),
            "",
            0,
            &[],
        ),
        case("CRLF", "d.csv", "user_id,item_id,timestamp\r\nA,x,1\r\nA,y,2\r\n", "", 0, &[]),
        case(
            "quoted field holding the separator",
            "d.csv",
            format!("{H}\"A, the user\",\"x,1\",1\n"),
            "",
            0,
            &[],
        ),
        case(
            "huge and negative ids are opaque strings",
            "d.csv",
            format!(
                "{H}-1,{},1\n-1,-99999999999999999999,2\n",
                "9".repeat(100)
            ),
            "",
            0,
            &[],
        ),
    ];
    assert!(cases.len() >= 26);
    for c in &cases {
        let p = Project::new();
        std::fs::write(p.path().join(c.file), &c.bytes).expect("write");
        p.config(&ingest_cfg(c.file, c.extra));
        let o = p.gnno(&["run", "--to", "ingest"]);
        assert_case(c.name, &o, c.code, c.needles);
        if c.code == 0 {
            let rep = p.json(&["report", "ingest", "--json"]);
            assert!(
                rep["report"]["rows_out"].as_u64() > Some(0),
                "{}: {rep}",
                c.name
            );
        } else {
            assert!(
                !p.workdir().join("ingest/manifest.json").exists(),
                "{}: a failed ingest published",
                c.name
            );
        }
    }
}

#[test]
fn malformed_configs_exit_2_naming_the_key() {
    let cases: [(&str, &str, &[&str]); 7] = [
        (
            "unknown key",
            "[graph]\nhopz = 3\n",
            &["graph.hopz: unknown key"],
        ),
        (
            "wrong type",
            "[train]\nepochs = \"ten\"\n",
            &["train.epochs: expected an integer, found string"],
        ),
        (
            "out of range",
            "[graph]\nhops = 17\n",
            &["graph.hops: 17 is out of range"],
        ),
        (
            "unknown section",
            "[trian]\nepochs = 3\n",
            &["trian: unknown section"],
        ),
        ("TOML syntax", "[run\nseed = 1\n", &["TOML syntax"]),
        (
            "section of the wrong type",
            "run = 3\n",
            &["run: expected a table"],
        ),
        (
            "time-cutoff without cutoffs",
            "[ingest]\nsplit = \"time-cutoff\"\n",
            &["ingest.test-from"],
        ),
    ];
    for (name, text, needles) in cases {
        let p = Project::new();
        p.write("d.csv", &format!("{H}A,x,1\n"));
        // The case's own sections come first so that a duplicate [ingest] merges.
        let cfg = if text.contains("[ingest]") {
            text.replace("[ingest]\n", "[ingest]\ninputs = [\"d.csv\"]\n")
        } else {
            format!("{text}[ingest]\ninputs = [\"d.csv\"]\n")
        };
        p.config(&cfg);
        for cmd in [&["validate"][..], &["run"]] {
            let o = p.gnno(cmd);
            assert_case(name, &o, 2, needles);
        }
        assert!(!p.workdir().exists(), "{name}: the workdir was touched");
    }
    // A config that is not UTF-8, and one that does not exist.
    let p = Project::new();
    std::fs::write(p.path().join("pipeline.toml"), b"[run]\nseed = \xff\n").expect("write");
    assert_case(
        "non-UTF-8 config",
        &p.gnno(&["validate"]),
        2,
        &["pipeline.toml"],
    );
    std::fs::remove_file(p.path().join("pipeline.toml")).expect("rm");
    assert_case(
        "missing config",
        &p.gnno(&["validate"]),
        2,
        &["pipeline.toml"],
    );
}

/// Copy a project (config, data and workdir) so each damage case starts clean.
fn clone_project(from: &Project) -> Project {
    fn copy(a: &Path, b: &Path) {
        std::fs::create_dir_all(b).expect("mkdir");
        for e in std::fs::read_dir(a).expect("read_dir") {
            let e = e.expect("entry");
            let to = b.join(e.file_name());
            if e.file_type().expect("type").is_dir() {
                copy(&e.path(), &to);
            } else {
                std::fs::copy(e.path(), &to).expect("copy");
            }
        }
    }
    let p = Project::new();
    copy(from.path(), p.path());
    p
}

#[test]
fn damaged_artifacts_exit_2_naming_the_file() {
    let base = Project::new();
    base.write("data.tsv", &synthetic_log(200, 80, 5));
    base.config(&small_config(""));
    base.ok(&["run", "--to", "negatives"]);

    type Damage = fn(&Path);
    let flip: Damage = |w| {
        let f = run_dir(w, "negatives").join("epoch-0001/part-00000.parquet");
        let mut b = std::fs::read(&f).expect("read");
        let mid = b.len() / 2;
        b[mid] ^= 0x55;
        std::fs::write(&f, b).expect("write");
    };
    let truncate: Damage = |w| {
        let f = run_dir(w, "negatives").join("epoch-0001/part-00000.parquet");
        let b = std::fs::read(&f).expect("read");
        std::fs::write(&f, &b[..b.len() / 3]).expect("write");
    };
    let foreign: Damage = |w| {
        let f = run_dir(w, "negatives").join("epoch-0001/part-00000.parquet");
        std::fs::copy(run_dir(w, "ingest").join("users.parquet"), &f).expect("copy");
    };
    let store_garbage: Damage = |w| {
        let s = run_dir(w, "graph").join("store");
        for f in gnno_core::fsutil::list_files(&s).expect("list") {
            let p = s.join(f);
            let n = std::fs::metadata(&p).expect("md").len();
            let junk: Vec<u8> = (0..n)
                .map(|i| u8::try_from(i % 253).expect("byte"))
                .collect();
            std::fs::write(&p, junk).expect("write");
        }
    };
    let store_gone: Damage = |w| {
        std::fs::remove_dir_all(run_dir(w, "graph").join("store")).expect("rm");
    };
    let manifest_cut: Damage = |w| {
        let f = w.join("graph/manifest.json");
        let b = std::fs::read(&f).expect("read");
        std::fs::write(&f, &b[..b.len() / 2]).expect("write");
    };
    let manifest_version: Damage = |w| {
        let f = w.join("negatives/manifest.json");
        let t = std::fs::read_to_string(&f).expect("read");
        std::fs::write(
            &f,
            t.replace("\"format_version\": 1", "\"format_version\": 99"),
        )
        .expect("write");
    };
    let table_garbage: Damage = |w| {
        std::fs::write(
            run_dir(w, "ingest").join("interactions.parquet"),
            b"PAR1 not really",
        )
        .expect("write");
    };
    let cases: [(&str, Damage, &[&str], &[&str]); 8] = [
        (
            "flipped shard byte",
            flip,
            &["audit", "negatives"],
            &["epoch-0001/part-00000.parquet", "checksum"],
        ),
        (
            "truncated shard",
            truncate,
            &["audit", "negatives"],
            &["epoch-0001/part-00000.parquet", "size"],
        ),
        (
            "foreign shard",
            foreign,
            &["audit", "negatives"],
            &["epoch-0001/part-00000.parquet"],
        ),
        (
            "damaged sled store",
            store_garbage,
            &["inspect", "item", "#1"],
            &["store"],
        ),
        (
            "missing sled store",
            store_gone,
            &["inspect", "item", "#1"],
            &["store"],
        ),
        (
            "truncated manifest",
            manifest_cut,
            &["status"],
            &["graph/manifest.json", "not a gnno manifest"],
        ),
        (
            "manifest of another version",
            manifest_version,
            &["report", "negatives"],
            &["negatives/manifest.json", "format version 99"],
        ),
        (
            "garbage ingest table",
            table_garbage,
            &["inspect", "item", "#1"],
            &["interactions.parquet"],
        ),
    ];
    for (name, damage, cmd, needles) in cases {
        let p = clone_project(&base);
        damage(&p.workdir());
        let o = p.gnno(cmd);
        assert_case(name, &o, 2, needles);
    }
}
