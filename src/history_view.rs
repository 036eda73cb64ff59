//! `gnno history`: the run history as nights side by side, one stage's runs, JSON,
//! or an SVG of the quality trend.

use crate::history::{self, Outcome, Record};
use crate::pipeline::Pipeline;
use crate::stages::StageName;
use anyhow::Result;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// The columns of the nights table: (header, stage, figure).
const NIGHT_COLUMNS: [(&str, &str, &str); 9] = [
    ("rows in", "ingest", "rows-read"),
    ("rows", "ingest", "rows"),
    ("users", "ingest", "users"),
    ("items", "ingest", "items"),
    ("pairs", "graph", "pairs"),
    ("leakage", "negatives", "leakage"),
    ("dev NDCG@10", "evaluate", "dev.NDCG@10"),
    ("test NDCG@10", "evaluate", "test.NDCG@10"),
    ("wall s", "", ""),
];

/// One invocation's records.
pub struct Night<'a> {
    pub id: &'a str,
    pub records: Vec<&'a Record>,
}

impl Night<'_> {
    /// The worst outcome, with the stage it happened at.
    pub fn outcome(&self) -> String {
        for bad in [Outcome::Failed, Outcome::GateFailed] {
            if let Some(r) = self.records.iter().find(|r| r.outcome == bad) {
                return format!("{} at {}", bad.as_str(), r.stage);
            }
        }
        for o in [Outcome::RolledBack, Outcome::Overridden, Outcome::Published] {
            if self.records.iter().any(|r| r.outcome == o) {
                return o.as_str().to_owned();
            }
        }
        Outcome::UpToDate.as_str().to_owned()
    }

    /// A figure of a stage this night (the last record of the stage that has it).
    pub fn figure(&self, stage: &str, figure: &str) -> Option<(f64, Outcome)> {
        self.records
            .iter()
            .rev()
            .filter(|r| r.stage == stage)
            .find_map(|r| r.figures.get(figure).map(|&v| (v, r.outcome)))
    }

    pub fn wall_s(&self) -> f64 {
        self.records.iter().map(|r| r.wall_s).sum()
    }
}

/// Group records by invocation, in order of first appearance.
pub fn nights(records: &[Record]) -> Vec<Night<'_>> {
    let mut out: Vec<Night<'_>> = Vec::new();
    for r in records {
        match out.iter_mut().find(|n| n.id == r.invocation) {
            Some(n) => n.records.push(r),
            None => out.push(Night {
                id: &r.invocation,
                records: vec![r],
            }),
        }
    }
    out
}

pub fn show(
    p: &Pipeline,
    stage: Option<StageName>,
    last: Option<usize>,
    json: bool,
    plot: Option<&Path>,
) -> Result<()> {
    let (records, damaged) = history::read(p.workdir())?;
    if damaged > 0 {
        tracing::warn!(
            lines = damaged,
            file = %history::path(p.workdir()).display(),
            "skipped damaged history lines (a crash while appending)"
        );
    }
    let mut o = std::io::stdout().lock();
    if let Some(path) = plot {
        let mut all = nights(&records);
        if let Some(n) = last {
            all.drain(..all.len().saturating_sub(n));
        }
        gnno_core::fsutil::write_atomic(path, plot_svg(&all).as_bytes())?;
        writeln!(o, "plot: {}", path.display())?;
    }
    if let Some(s) = stage {
        let mut rows: Vec<&Record> = records.iter().filter(|r| r.stage == s.as_str()).collect();
        if let Some(n) = last {
            rows.drain(..rows.len().saturating_sub(n));
        }
        if json {
            writeln!(o, "{}", serde_json::to_string_pretty(&rows)?)?;
        } else {
            stage_table(&mut o, &rows)?;
        }
        return Ok(());
    }
    let mut all = nights(&records);
    if let Some(n) = last {
        all.drain(..all.len().saturating_sub(n));
    }
    if json {
        let flat: Vec<&Record> = all.iter().flat_map(|n| n.records.clone()).collect();
        writeln!(o, "{}", serde_json::to_string_pretty(&flat)?)?;
        return Ok(());
    }
    nights_table(&mut o, &all)
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
    }
}

fn print_rows(o: &mut impl Write, header: &[String], rows: &[Vec<String>]) -> Result<()> {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(o, "{}", line(header))?;
    for r in rows {
        writeln!(o, "{}", line(r))?;
    }
    Ok(())
}

/// One row per night: its start, outcome and the headline figures. A figure of a
/// stage whose gate failed is the rejected value, marked with `!`.
fn nights_table(o: &mut impl Write, nights: &[Night<'_>]) -> Result<()> {
    let mut header = vec!["night (UTC)".to_owned(), "outcome".to_owned()];
    header.extend(NIGHT_COLUMNS.iter().map(|c| c.0.to_owned()));
    let rows: Vec<Vec<String>> = nights
        .iter()
        .map(|n| {
            let mut r = vec![
                n.id.split('/').next().unwrap_or(n.id).to_owned(),
                n.outcome(),
            ];
            for (_, stage, fig) in NIGHT_COLUMNS {
                r.push(if stage.is_empty() {
                    format!("{:.1}", n.wall_s())
                } else {
                    match n.figure(stage, fig) {
                        Some((v, Outcome::GateFailed)) => format!("{}!", num(v)),
                        Some((v, _)) => num(v),
                        None => "-".to_owned(),
                    }
                });
            }
            r
        })
        .collect();
    print_rows(o, &header, &rows)
}

/// One row per record of a stage, with every figure it has.
fn stage_table(o: &mut impl Write, rows: &[&Record]) -> Result<()> {
    let mut figs: Vec<&String> = rows.iter().flat_map(|r| r.figures.keys()).collect();
    figs.sort();
    figs.dedup();
    let mut header: Vec<String> = ["time (UTC)", "outcome", "run", "wall s"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    header.extend(figs.iter().map(|f| (*f).clone()));
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut c = vec![
                r.time.clone(),
                r.outcome.as_str().to_owned(),
                r.run_dir.clone().unwrap_or_else(|| "-".into()),
                format!("{:.1}", r.wall_s),
            ];
            c.extend(
                figs.iter()
                    .map(|f| r.figures.get(*f).map_or_else(|| "-".into(), |&v| num(v))),
            );
            c
        })
        .collect();
    print_rows(o, &header, &table)?;
    for r in rows {
        for g in r.gates.iter().filter(|g| !g.passed) {
            writeln!(o, "{} {}: {}", r.time, r.stage, crate::gates::describe(g))?;
        }
        if let Some(e) = &r.error {
            writeln!(o, "{} {}: {e}", r.time, r.stage)?;
        }
    }
    Ok(())
}

/// Dev and test NDCG@10 by night; nights whose evaluate gate failed are red crosses.
pub fn plot_svg(nights: &[Night<'_>]) -> String {
    let series: [(&str, &str); 2] = [("dev.NDCG@10", "#1f77b4"), ("test.NDCG@10", "#d62728")];
    let points: Vec<BTreeMap<&str, (f64, Outcome)>> = nights
        .iter()
        .map(|n| {
            series
                .iter()
                .filter_map(|(f, _)| n.figure("evaluate", f).map(|v| (*f, v)))
                .collect()
        })
        .collect();
    let ymax = points
        .iter()
        .flat_map(|p| p.values().map(|v| v.0))
        .fold(0.0_f64, f64::max)
        .max(1e-6)
        * 1.1;
    let (w, h, m) = (720.0, 360.0, 50.0);
    #[expect(clippy::cast_precision_loss, reason = "plot coordinates")]
    let x = |i: usize| m + (w - 2.0 * m) * (i as f64 + 0.5) / nights.len().max(1) as f64;
    let y = |v: f64| h - m - (h - 2.0 * m) * v / ymax;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{m}\" y=\"20\">NDCG@10 by night (blue dev, red test; x = gate failed)</text>\n<line x1=\"{m}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{b}\" stroke=\"black\"/>\n<text x=\"5\" y=\"{ty}\">{ymax:.4}</text>\n<text x=\"5\" y=\"{b}\">0</text>\n",
        b = h - m,
        r = w - m,
        ty = m + 4.0,
    );
    for (f, colour) in series {
        let accepted: Vec<String> = points
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                p.get(f)
                    .filter(|v| v.1.accepted())
                    .map(|v| format!("{:.1},{:.1}", x(i), y(v.0)))
            })
            .collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n",
            accepted.join(" ")
        );
        for (i, p) in points.iter().enumerate() {
            if let Some(&(v, o)) = p.get(f) {
                let (cx, cy) = (x(i), y(v));
                if o.accepted() {
                    s += &format!(
                        "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"3\" fill=\"{colour}\"/>\n"
                    );
                } else {
                    s += &format!("<path d=\"M{:.1},{:.1}L{:.1},{:.1}M{:.1},{:.1}L{:.1},{:.1}\" stroke=\"red\" stroke-width=\"2\"/>\n", cx - 4.0, cy - 4.0, cx + 4.0, cy + 4.0, cx - 4.0, cy + 4.0, cx + 4.0, cy - 4.0);
                }
            }
        }
    }
    for (i, n) in nights.iter().enumerate() {
        let day = n.id.get(..10).unwrap_or(n.id);
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{day}</text>\n",
            x(i),
            h - m + 15.0
        );
    }
    s += "</svg>\n";
    s
}
