//! Gates (`[gates.<stage>]` in pipeline.toml): bounds on a stage's figures, checked
//! by the runner after the stage ran and before it publishes. A failed gate leaves
//! the stage's published (last accepted) output in place, so nothing downstream
//! ever sees the rejected run.

use crate::history::GateCheck;
use gnno_core::config::Gate;
use std::collections::BTreeMap;

/// A stage whose figures broke one or more gates (exit code `exit::GATE`).
#[derive(Debug)]
pub struct GateFailed {
    pub stage: String,
    pub run_dir: String,
    pub failed: Vec<GateCheck>,
    /// Every figure of the rejected run (for the history).
    pub figures: BTreeMap<String, f64>,
}

impl std::fmt::Display for GateFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "gate failed after stage {} (run {} not published):",
            self.stage, self.run_dir
        )?;
        for c in &self.failed {
            write!(f, "\n  - {}", describe(c))?;
        }
        Ok(())
    }
}

impl std::error::Error for GateFailed {}

/// One check in words: "rows = 412 is below 825.6 (max-drop 0.2 from 1032 in run-…)".
pub fn describe(c: &GateCheck) -> String {
    let side = match c.rule.as_str() {
        "min" | "max-drop" => "below",
        _ => "above",
    };
    let verdict = if c.passed { "within" } else { side };
    let base = match (&c.baseline_run, c.baseline_value) {
        (Some(run), Some(v)) => format!(
            " ({} {} from {} in the last accepted run {run})",
            c.rule,
            c.limit,
            fmt(v)
        ),
        _ => format!(" ({} {})", c.rule, c.limit),
    };
    format!(
        "{} = {} is {verdict} the bound {}{base}",
        c.figure,
        fmt(c.value),
        fmt(c.bound)
    )
}

fn fmt(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.6}")
    }
}

/// Check every gate of `stage` against its figures. `baseline`: the run folder and
/// figures of the stage's last accepted run, if any (relative rules are skipped on
/// the first run). A gate whose figure the stage did not produce is a failure:
/// a bound that silently checks nothing would be worse than none.
pub fn check(
    gates: &[Gate],
    stage: &str,
    figures: &BTreeMap<String, f64>,
    baseline: Option<(&str, &BTreeMap<String, f64>)>,
) -> Vec<GateCheck> {
    let mut out = Vec::new();
    for g in gates.iter().filter(|g| g.stage == stage) {
        let value = figures.get(&g.figure).copied().unwrap_or(f64::NAN);
        let mut push = |rule: &str, limit: f64, bound: f64, base: Option<(&str, f64)>, ok: bool| {
            out.push(GateCheck {
                figure: g.figure.clone(),
                value,
                rule: rule.to_owned(),
                limit,
                bound,
                baseline_run: base.map(|b| b.0.to_owned()),
                baseline_value: base.map(|b| b.1),
                // NaN (a missing or broken figure) fails every comparison.
                passed: ok && value.is_finite(),
            });
        };
        if let Some(m) = g.min {
            push("min", m, m, None, value >= m);
        }
        if let Some(m) = g.max {
            push("max", m, m, None, value <= m);
        }
        let base = baseline.and_then(|(run, f)| f.get(&g.figure).map(|&v| (run, v)));
        if base.is_none() && baseline.is_some() && (g.max_drop.is_some() || g.max_rise.is_some()) {
            tracing::warn!(
                stage,
                figure = g.figure,
                "the last accepted run has no such figure (made by an older gnno): relative bounds skipped"
            );
        }
        if let Some((run, b)) = base {
            if let Some(d) = g.max_drop {
                let bound = b - d * b.abs();
                push("max-drop", d, bound, Some((run, b)), value >= bound);
            }
            if let Some(r) = g.max_rise {
                let bound = b + r * b.abs();
                push("max-rise", r, bound, Some((run, b)), value <= bound);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(figure: &str) -> Gate {
        Gate {
            stage: "ingest".into(),
            figure: figure.into(),
            min: None,
            max: None,
            max_drop: None,
            max_rise: None,
        }
    }

    #[test]
    fn absolute_and_relative_bounds_hold_values_to_the_last_accepted_run() {
        let gates = vec![
            Gate {
                min: Some(100.0),
                max_drop: Some(0.2),
                ..gate("rows")
            },
            Gate {
                max: Some(0.01),
                ..gate("bad-row-share")
            },
            Gate {
                max_rise: Some(0.5),
                ..gate("items")
            },
        ];
        let base = BTreeMap::from([("rows".to_owned(), 1000.0), ("items".to_owned(), 40.0)]);
        let now = BTreeMap::from([
            ("rows".to_owned(), 799.0),
            ("bad-row-share".to_owned(), 0.01),
            ("items".to_owned(), 60.0),
        ]);
        let c = check(&gates, "ingest", &now, Some(("run-a", &base)));
        let verdicts: Vec<(&str, bool, f64)> = c
            .iter()
            .map(|c| (c.rule.as_str(), c.passed, c.bound))
            .collect();
        assert_eq!(
            verdicts,
            vec![
                ("min", true, 100.0),
                ("max-drop", false, 800.0),
                ("max", true, 0.01),
                ("max-rise", true, 60.0),
            ]
        );
        let text = describe(&c[1]);
        assert_eq!(
            text,
            "rows = 799 is below the bound 800 (max-drop 0.2 from 1000 in the last accepted run run-a)"
        );
        // The first run has no baseline: only the absolute bounds apply.
        let first = check(&gates, "ingest", &now, None);
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|c| c.passed));
        // Gates of other stages are not checked here.
        assert!(check(&gates, "graph", &now, None).is_empty());
    }

    #[test]
    fn a_missing_or_nan_figure_fails_its_gate() {
        let gates = vec![Gate {
            max: Some(1.0),
            ..gate("bad-row-share")
        }];
        let c = check(&gates, "ingest", &BTreeMap::new(), None);
        assert_eq!(c.len(), 1);
        assert!(!c[0].passed);
        let nan = BTreeMap::from([("bad-row-share".to_owned(), f64::NAN)]);
        assert!(!check(&gates, "ingest", &nan, None)[0].passed);
    }
}
