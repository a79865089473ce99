//! SVG charts of one `scripts/bench.sh` run, drawn from the same output as
//! its tables, so a chart never disagrees with the table beside it.
//!
//! - Every table whose first column is `variant` gets one chart: a panel per
//!   ratio column ("… vs first row", "ratio to baseline") with a line at 1.0,
//!   and a panel per latency percentile column (`p50 µs`, `p99 µs`).
//! - Every fault run's samples (`fault-<scenario>.csv`, written by
//!   `fault-run` when `BENCH_SAMPLES_DIR` is set) get a latency-over-time
//!   chart: each request a dot at the time it was sent, failures as red
//!   crosses, the faults shaded and named.
//!
//! - A soak's per-minute figures (`soak.csv`, written by `soak`) get one
//!   chart of four panels over the minutes: resident memory, open
//!   descriptors and live Tokio tasks of each service, and the requests'
//!   p99 latency with the failed requests, the minute's fault named.
//!
//! `charts <bench log> <samples dir> <out dir>`; the names of the files it
//! writes are printed, one per line.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

type Failure = Box<dyn std::error::Error>;

fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [log, samples, out] = args.as_slice() else {
        return Err("usage: charts <bench log> <samples dir> <out dir>".into());
    };
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out)?;
    let log = std::fs::read_to_string(log)?;
    let mut names = std::collections::HashSet::new();
    for table in tables(&log) {
        // Two tables with one title get two files.
        let base = slug(&table.title);
        let name = (1..)
            .map(|n| {
                if n == 1 {
                    base.clone()
                } else {
                    format!("{base}-{n}")
                }
            })
            .find(|name| !names.contains(name))
            .unwrap_or(base);
        names.insert(name.clone());
        if let Some(path) = table_chart(&table, &out.join(format!("{name}.svg")))? {
            println!("{}", path.display());
        }
    }
    let mut runs: Vec<PathBuf> = std::fs::read_dir(samples)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("fault-") && name.ends_with(".csv")
        })
        .collect();
    runs.sort();
    for run in runs {
        println!("{}", fault_chart(&run, &out)?.display());
    }
    let soak = Path::new(samples).join("soak.csv");
    if soak.exists() {
        println!("{}", soak_chart(&soak, &out)?.display());
    }
    Ok(())
}

/// A Markdown table of the log and the line that titles it.
struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|c| c.trim().to_string()).collect()
}

/// The tables of `log`, each titled by the last non-table line before it
/// that is not a table's own explanation.
fn tables(log: &str) -> Vec<Table> {
    let lines: Vec<&str> = log.lines().collect();
    let mut found = Vec::new();
    let mut title = String::new();
    // The last `###` heading: the scenario a latency table belongs to.
    let mut heading = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        let is_table = line.starts_with('|')
            && lines
                .get(i + 1)
                .is_some_and(|next| next.trim().starts_with("| ---"));
        if is_table {
            let header = cells(line);
            let mut rows = Vec::new();
            i += 2;
            while let Some(row) = lines.get(i).filter(|l| l.trim().starts_with('|')) {
                rows.push(cells(row));
                i += 1;
            }
            let title = if title.starts_with("latency at") && !heading.is_empty() {
                format!("{heading}: {title}")
            } else {
                title.clone()
            };
            found.push(Table {
                title,
                header,
                rows,
            });
            continue;
        }
        if !line.is_empty() && !line.starts_with('|') {
            title = line.trim_start_matches('#').trim().to_string();
            if line.starts_with("###") {
                heading = title.clone();
            }
        }
        i += 1;
    }
    found
}

/// The number in a cell ("1.23", "+45", "12.5 %", "3.1 ms"), if any.
fn number(cell: &str) -> Option<f64> {
    let digits: String = cell
        .trim()
        .trim_start_matches('+')
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | 'e'))
        .collect();
    digits.parse().ok()
}

/// A file name from a title: lower case words joined by dashes, at most 100 bytes.
fn slug(title: &str) -> String {
    let mut slug = String::new();
    for word in title
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if slug.len() + word.len() > 100 {
            break;
        }
        if !slug.is_empty() {
            slug.push('-');
        }
        slug.push_str(&word.to_ascii_lowercase());
    }
    slug
}

/// The columns of a table worth a panel: ratios (with a line at 1.0) and latency percentiles.
fn panels(header: &[String]) -> Vec<(usize, bool)> {
    header
        .iter()
        .enumerate()
        .filter_map(|(index, name)| {
            let ratio = name.contains("vs first row") || name.contains("ratio");
            let latency = name == "p50 µs" || name == "p99 µs";
            (ratio || latency).then_some((index, ratio))
        })
        .collect()
}

const ROW_HEIGHT: u32 = 26;
const WIDTH: u32 = 960;
const LABELS: u32 = 330;

fn table_chart(table: &Table, path: &Path) -> Result<Option<PathBuf>, Failure> {
    if table.header.first().map(String::as_str) != Some("variant") || table.rows.is_empty() {
        return Ok(None);
    }
    let panels = panels(&table.header);
    if panels.is_empty() {
        return Ok(None);
    }
    let names: Vec<String> = table.rows.iter().map(|row| row[0].clone()).collect();
    let panel_height = ROW_HEIGHT * names.len() as u32 + 70;
    let height = panel_height * panels.len() as u32 + 40;
    let path = path.to_path_buf();
    {
        let root = SVGBackend::new(&path, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(&table.title, ("sans-serif", 17))?;
        let areas = root.split_evenly((panels.len(), 1));
        for ((column, ratio), area) in panels.into_iter().zip(areas) {
            let values: Vec<f64> = table
                .rows
                .iter()
                .map(|row| row.get(column).and_then(|c| number(c)).unwrap_or(0.0))
                .collect();
            bars(&area, &table.header[column], &names, &values, ratio)?;
        }
        root.present()?;
    }
    Ok(Some(path))
}

/// Horizontal bars, one per variant, the value written at the bar's end.
fn bars(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    names: &[String],
    values: &[f64],
    ratio: bool,
) -> Result<(), Failure> {
    let top = values
        .iter()
        .copied()
        .fold(if ratio { 1.0 } else { 0.0 }, f64::max)
        * 1.18;
    let top = if top > 0.0 { top } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 14))
        .margin(8)
        .x_label_area_size(24)
        .y_label_area_size(LABELS)
        .build_cartesian_2d(0f64..top, (0..names.len()).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(names.len())
        .y_label_formatter(&|value| match value {
            SegmentValue::CenterOf(i) => names
                .len()
                .checked_sub(i + 1)
                .and_then(|row| names.get(row))
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    let palette = [RGBColor(90, 90, 90), RGBColor(31, 119, 180)];
    // The first row at the top, as in the table (segments count upwards).
    let at = |row: usize| names.len() - 1 - row;
    chart.draw_series(values.iter().enumerate().map(|(i, &value)| {
        // The first row is the baseline: grey; the others blue.
        let color = palette[usize::from(i > 0)];
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(at(i))),
                (value, SegmentValue::Exact(at(i) + 1)),
            ],
            color.filled(),
        );
        bar.set_margin(4, 4, 0, 0);
        bar
    }))?;
    chart.draw_series(values.iter().enumerate().map(|(i, &value)| {
        let label = if ratio {
            format!("{value:.2}")
        } else {
            format!("{value:.0}")
        };
        Text::new(
            label,
            (value + top * 0.01, SegmentValue::CenterOf(at(i))),
            ("sans-serif", 12).into_font().color(&BLACK),
        )
    }))?;
    if ratio {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![
                (1.0, SegmentValue::Exact(0)),
                (1.0, SegmentValue::Exact(names.len())),
            ],
            RED.stroke_width(2),
        )))?;
    }
    Ok(())
}

/// One fault run: its phases and its requests.
struct FaultRun {
    title: String,
    /// (start ms, is a fault, name)
    phases: Vec<(f64, bool, String)>,
    /// (sent ms, latency ms, answered 200)
    samples: Vec<(f64, f64, bool)>,
}

/// Reads what `fault-run` writes: `# title`, `# phase,<start ms>,<fault>,<name>`
/// lines, then `sent_ms,latency_us,ok` rows.
fn read_fault_run(path: &Path) -> Result<FaultRun, Failure> {
    let text = std::fs::read_to_string(path)?;
    let mut run = FaultRun {
        title: String::new(),
        phases: Vec::new(),
        samples: Vec::new(),
    };
    for line in text.lines() {
        if let Some(phase) = line.strip_prefix("# phase,") {
            let mut parts = phase.splitn(3, ',');
            let (Some(start), Some(fault), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("{}: bad phase line {line:?}", path.display()).into());
            };
            run.phases
                .push((start.parse()?, fault == "true", name.replace('`', "")));
        } else if let Some(title) = line.strip_prefix("# ") {
            run.title = title.to_string();
        } else if let Some((sent, rest)) = line.split_once(',') {
            let Some((latency, ok)) = rest.split_once(',') else {
                continue;
            };
            let (Ok(sent), Ok(latency)) = (sent.parse::<f64>(), latency.parse::<f64>()) else {
                continue;
            };
            run.samples.push((sent, latency / 1e3, ok == "1"));
        }
    }
    Ok(run)
}

/// (bucket start s, median ms, max ms) of the requests sent in each `width_ms` bucket.
fn bucketed(samples: &[(f64, f64, bool)], width_ms: f64) -> Vec<(f64, f64, f64)> {
    let mut buckets: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    for &(sent, latency, _) in samples {
        buckets
            .entry((sent / width_ms) as u64)
            .or_default()
            .push(latency);
    }
    buckets
        .into_iter()
        .map(|(bucket, mut latencies)| {
            latencies.sort_by(f64::total_cmp);
            let median = latencies[latencies.len() / 2];
            let max = latencies[latencies.len() - 1];
            (bucket as f64 * width_ms / 1e3, median, max)
        })
        .collect()
}

fn fault_chart(samples: &Path, out: &Path) -> Result<PathBuf, Failure> {
    let run = read_fault_run(samples)?;
    let stem = samples
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("fault-run");
    let path = out.join(format!("{stem}.svg"));
    let end_s = run.samples.iter().map(|s| s.0).fold(0.0, f64::max) / 1e3 + 0.2;
    let slowest = run.samples.iter().map(|s| s.1).fold(1.0, f64::max);
    let failed = run.samples.iter().filter(|s| !s.2).count();
    let mut title = run.title.clone();
    let _ = write!(title, ": {} requests, {failed} failed", run.samples.len());
    {
        let root = SVGBackend::new(&path, (WIDTH, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..end_s, (0.05f64..slowest * 2.0).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("time the request was sent (s)")
            .y_desc("latency (ms, log scale)")
            .draw()?;
        // Faults shaded from their start to the next phase's start, named at the top.
        let y_top = slowest * 1.6;
        for (index, (start, fault, name)) in run.phases.iter().enumerate() {
            let start_s = start / 1e3;
            let end = run.phases.get(index + 1).map_or(end_s, |next| next.0 / 1e3);
            if *fault {
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(start_s, 0.05), (end, slowest * 2.0)],
                    RGBColor(255, 200, 120).mix(0.35).filled(),
                )))?;
            }
            if index > 0 {
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(start_s, 0.05), (start_s, slowest * 2.0)],
                    BLACK.mix(0.6).stroke_width(1),
                )))?;
                chart.draw_series(std::iter::once(Text::new(
                    name.clone(),
                    // Alternate rows, so that names of phases close together do not overlap.
                    (
                        start_s + 0.05,
                        if index % 2 == 0 { y_top } else { y_top / 2.5 },
                    ),
                    ("sans-serif", 12).into_font().color(&BLACK),
                )))?;
            }
        }
        // Requests in 50 ms buckets by the time they were sent: the median and
        // the slowest of each bucket (every request drawn would be megabytes).
        let buckets = bucketed(&run.samples, 50.0);
        let (red, blue) = (RGBColor(214, 39, 40), RGBColor(31, 119, 180));
        chart
            .draw_series(LineSeries::new(
                buckets.iter().map(|b| (b.0, b.2.max(0.05))),
                red.stroke_width(2),
            ))?
            .label("slowest request of each 50 ms")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], red.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(
                buckets.iter().map(|b| (b.0, b.1.max(0.05))),
                blue.stroke_width(2),
            ))?
            .label("median of each 50 ms")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], blue.stroke_width(2))
            });
        chart
            .draw_series(
                run.samples
                    .iter()
                    .filter(|s| !s.2)
                    .map(|&(sent, latency, _)| {
                        Cross::new((sent / 1e3, latency.max(0.05)), 4, BLACK.stroke_width(2))
                    }),
            )?
            .label("failed request")
            .legend(|(x, y)| Cross::new((x + 9, y), 4, BLACK.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        root.present()?;
    }
    Ok(path)
}

/// One minute of a soak, and per service [RSS MiB, descriptors, tasks].
struct SoakMinute {
    minute: f64,
    fault: String,
    /// Failed requests that began during the minute's fault or its recovery.
    failed: f64,
    /// Failed requests that began anywhere else.
    failed_outside: f64,
    p99_ms: f64,
    services: [[f64; 3]; 2],
}

fn read_soak(path: &Path) -> Result<Vec<SoakMinute>, Failure> {
    let text = std::fs::read_to_string(path)?;
    let mut minutes = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 14 {
            continue;
        }
        let n = |i: usize| f[i].parse::<f64>().unwrap_or(0.0);
        minutes.push(SoakMinute {
            minute: n(0),
            fault: f[1].to_string(),
            failed: n(3),
            failed_outside: n(4),
            p99_ms: n(6),
            services: [[n(8) / 1024.0, n(9), n(10)], [n(11) / 1024.0, n(12), n(13)]],
        });
    }
    Ok(minutes)
}

fn soak_chart(samples: &Path, out: &Path) -> Result<PathBuf, Failure> {
    let minutes = read_soak(samples)?;
    let path = out.join("soak.svg");
    let last = minutes.iter().map(|m| m.minute).fold(1.0, f64::max);
    {
        let root = SVGBackend::new(&path, (WIDTH, 900)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((4, 1));
        let colours = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];
        let names = ["search-service", "portfolio"];
        let titles = [
            "resident memory (MiB)",
            "open file descriptors",
            "live Tokio tasks",
        ];
        for (index, title) in titles.iter().enumerate() {
            let top = minutes
                .iter()
                .flat_map(|m| m.services.iter().map(move |s| s[index]))
                .fold(1.0, f64::max);
            let mut chart = ChartBuilder::on(&panels[index])
                .caption(*title, ("sans-serif", 15))
                .margin(8)
                .x_label_area_size(24)
                .y_label_area_size(56)
                .build_cartesian_2d(0f64..last, 0f64..top * 1.25)?;
            chart.configure_mesh().x_desc("minute").draw()?;
            for (service, colour) in colours.iter().enumerate() {
                let colour = *colour;
                chart
                    .draw_series(LineSeries::new(
                        minutes
                            .iter()
                            .map(|m| (m.minute, m.services[service][index])),
                        colour.stroke_width(2),
                    ))?
                    .label(names[service])
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .draw()?;
        }
        let top = minutes.iter().map(|m| m.p99_ms).fold(1.0, f64::max);
        let failed: f64 = minutes.iter().map(|m| m.failed).sum();
        let outside: f64 = minutes.iter().map(|m| m.failed_outside).sum();
        let mut chart = ChartBuilder::on(&panels[3])
            .caption(
                format!(
                    "p99 latency (ms) per minute, and its fault; failed requests: {failed} during faults, {outside} outside"
                ),
                ("sans-serif", 15),
            )
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..last, 0f64..top * 1.6)?;
        chart.configure_mesh().x_desc("minute").draw()?;
        let blue = colours[0];
        chart
            .draw_series(LineSeries::new(
                minutes.iter().map(|m| (m.minute, m.p99_ms)),
                blue.stroke_width(2),
            ))?
            .label("p99 of the minute's requests")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], blue.stroke_width(2))
            });
        chart
            .draw_series(
                minutes
                    .iter()
                    .filter(|m| m.failed_outside > 0.0)
                    .map(|m| Cross::new((m.minute, m.p99_ms), 5, BLACK.stroke_width(2))),
            )?
            .label("a minute with failed requests outside its fault")
            .legend(|(x, y)| Cross::new((x + 9, y), 4, BLACK.stroke_width(2)));
        for (index, m) in minutes
            .iter()
            .enumerate()
            .filter(|(_, m)| m.fault != "none")
        {
            chart.draw_series(std::iter::once(Text::new(
                m.fault.clone(),
                (
                    m.minute,
                    if index % 2 == 0 {
                        top * 1.45
                    } else {
                        top * 1.25
                    },
                ),
                ("sans-serif", 10).into_font().color(&BLACK),
            )))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        root.present()?;
    }
    Ok(path)
}
