//! The benchmark's results: rows of a table printed at the end and written as JSON, each with its
//! target where the project has one, and ratios against the peers measured in the same run.

use std::time::Duration;

use serde_json::{Value, json};

/// A target a figure is held to.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
}

impl Target {
    fn met(self, value: f64) -> bool {
        match self {
            Target::AtMost(limit) => value <= limit,
            Target::AtLeast(floor) => value >= floor,
        }
    }

    fn text(self) -> String {
        match self {
            Target::AtMost(limit) => format!("≤ {}", number(limit)),
            Target::AtLeast(floor) => format!("≥ {}", number(floor)),
        }
    }
}

/// One measured figure.
#[derive(Debug)]
pub struct Row {
    /// Which of the benchmark's sections measured it.
    pub section: &'static str,
    pub metric: String,
    /// Who was measured: `zeroci`, or a peer's name.
    pub system: String,
    pub value: f64,
    pub unit: &'static str,
    pub target: Option<Target>,
    /// How it was measured, or what else is worth knowing.
    pub note: String,
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    /// Adds a figure of ZeroCI's.
    pub fn add(
        &mut self,
        section: &'static str,
        metric: impl Into<String>,
        value: f64,
        unit: &'static str,
        target: Option<Target>,
        note: impl Into<String>,
    ) {
        self.add_for("zeroci", section, metric, value, unit, target, note);
    }

    /// Adds a figure of `system` (ZeroCI or a peer).
    #[allow(clippy::too_many_arguments)]
    pub fn add_for(
        &mut self,
        system: &str,
        section: &'static str,
        metric: impl Into<String>,
        value: f64,
        unit: &'static str,
        target: Option<Target>,
        note: impl Into<String>,
    ) {
        let row = Row {
            section,
            metric: metric.into(),
            system: system.to_string(),
            value,
            unit,
            target,
            note: note.into(),
        };
        println!("  {}", line(&row, None));
        self.rows.push(row);
    }

    /// ZeroCI's figure for `metric` divided into a peer's: how many times better ZeroCI is.
    fn ratio(&self, row: &Row) -> Option<f64> {
        if row.system == "zeroci" {
            return None;
        }
        let ours = self
            .rows
            .iter()
            .find(|r| r.system == "zeroci" && r.metric == row.metric)?;
        let lower_is_better = matches!(row.unit, "ms" | "s" | "MiB" | "KiB");
        Some(if lower_is_better {
            row.value / ours.value
        } else {
            ours.value / row.value
        })
    }

    /// The table.
    pub fn print(&self) {
        println!();
        println!(
            "{:<11} {:<52} {:<9} {:>12} {:<6} {:<10} {:<4} NOTE",
            "SECTION", "METRIC", "SYSTEM", "VALUE", "UNIT", "TARGET", "MET"
        );
        for row in &self.rows {
            println!("{}", line(row, self.ratio(row)));
        }
    }

    pub fn json(&self, machine: Value) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                json!({
                    "section": row.section,
                    "metric": row.metric,
                    "system": row.system,
                    "value": row.value,
                    "unit": row.unit,
                    "target": row.target.map(Target::text),
                    "met": row.target.map(|t| t.met(row.value)),
                    "zeroci_times_better": self.ratio(row),
                    "note": row.note,
                })
            })
            .collect();
        json!({ "machine": machine, "rows": rows })
    }
}

fn line(row: &Row, ratio: Option<f64>) -> String {
    let (target, met) = match row.target {
        Some(target) => (
            target.text(),
            if target.met(row.value) { "yes" } else { "NO" },
        ),
        None => (String::new(), ""),
    };
    let mut note = row.note.clone();
    if let Some(ratio) = ratio {
        note = format!("zeroci {ratio:.1}× better; {note}");
    }
    format!(
        "{:<11} {:<52} {:<9} {:>12} {:<6} {:<10} {:<4} {}",
        row.section,
        row.metric,
        row.system,
        number(row.value),
        row.unit,
        target,
        met,
        note
    )
}

fn number(value: f64) -> String {
    if value.abs() >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// Sorted samples.
pub struct Samples(Vec<f64>);

impl Samples {
    pub fn new(mut values: Vec<f64>) -> Samples {
        assert!(!values.is_empty(), "no samples");
        values.sort_by(f64::total_cmp);
        Samples(values)
    }

    pub fn of_durations(values: &[Duration]) -> Samples {
        Samples::new(values.iter().map(|d| ms(*d)).collect())
    }

    /// The `p`-th percentile (nearest rank).
    pub fn percentile(&self, p: f64) -> f64 {
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    pub fn median(&self) -> f64 {
        self.percentile(50.0)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
