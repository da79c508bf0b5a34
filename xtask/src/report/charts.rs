//! The report's pictures, drawn with plotters' SVG backend from the rows' JSON reports.
//!
//! Two shapes serve every row:
//! - side by side: per measured experiment, the process side's median beside the thread
//!   side's, with the spread of the runs (low..high) as an error bar; one chart per unit, so
//!   that an axis never mixes ns/switch with ns/call;
//! - sweeps: where an experiment steps through a size or a count (the switching working sets,
//!   concurrency's workers and parent sizes, the web server's connections, communication's
//!   message sizes), one line per side over the steps.
//!
//! The x axis is always a list of labelled steps; the y axis turns logarithmic when the values
//! span more than 30 ×. Every chart says which side the claim expects to win, and each SVG
//! carries a `<desc>` naming its row and the experiments whose data it draws (the report's
//! test counts one data mark, a circle, per experiment and side).

use anyhow::Result;
use harness::report::{Better, Expected, Experiment, Report, Side};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde_json::Value;

const PROCESS: RGBColor = RGBColor(200, 60, 40);
const THREAD: RGBColor = RGBColor(40, 90, 200);
/// Shades for several mechanisms per side (communication): reds for processes, blues for threads.
const PROCESS_SHADES: [RGBColor; 5] = [
    RGBColor(200, 60, 40),
    RGBColor(230, 140, 30),
    RGBColor(150, 30, 90),
    RGBColor(120, 80, 20),
    RGBColor(240, 90, 120),
];
const THREAD_SHADES: [RGBColor; 5] = [
    RGBColor(40, 90, 200),
    RGBColor(30, 160, 160),
    RGBColor(90, 60, 180),
    RGBColor(20, 120, 60),
    RGBColor(100, 150, 230),
];
/// Values spanning more than this factor get a logarithmic axis.
const LOG_SPAN: f64 = 30.0;

/// One picture: its file name in the pictures folder, what it shows, and the SVG text.
pub struct Chart {
    pub file: String,
    /// The caption under it in the Markdown: what is drawn and which side the claim expects to win.
    pub caption: String,
    /// The experiments whose data it draws.
    pub experiments: Vec<String>,
    pub svg: String,
}

/// A labelled step of the x axis and its value there, with the spread when there is one.
struct Point {
    x: f64,
    y: f64,
    spread: Option<(f64, f64)>,
}

struct Series {
    name: String,
    color: RGBColor,
    /// Joined by a line (a sweep) or not (side by side).
    line: bool,
    points: Vec<Point>,
}

/// What frames a chart: its title, the axes' descriptions and the labels of the x steps.
struct Frame {
    title: String,
    x_desc: String,
    y_desc: String,
    steps: Vec<String>,
    width: u32,
}

/// Every chart of a row, side-by-side charts first, then its sweeps.
pub fn for_row(report: &Report) -> Result<Vec<Chart>> {
    let mut charts = side_by_side(report)?;
    charts.extend(sweeps(report)?);
    Ok(charts)
}

/// The experiments that ran both sides with a median each.
fn measured(report: &Report) -> Vec<&Experiment> {
    report
        .experiments
        .iter()
        .filter(|e| e.process.as_ref().and_then(|s| s.median).is_some())
        .filter(|e| e.thread.as_ref().and_then(|s| s.median).is_some())
        .collect()
}

fn expected_word(e: Expected) -> &'static str {
    match e {
        Expected::Process => "process",
        Expected::Thread => "thread",
        Expected::Same => "neither (a control)",
    }
}

fn expected_mark(e: Expected) -> &'static str {
    match e {
        Expected::Process => "P",
        Expected::Thread => "T",
        Expected::Same => "=",
    }
}

fn better_word(b: Option<Better>) -> &'static str {
    match b {
        Some(Better::Higher) => "higher is better",
        _ => "lower is better",
    }
}

/// "ns/switch" → "ns-switch": a unit as part of a file name.
fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            'µ' => out.push('u'),
            c if c.is_ascii_alphanumeric() => out.push(c.to_ascii_lowercase()),
            _ if !out.ends_with('-') => out.push('-'),
            _ => {}
        }
    }
    out.trim_matches('-').to_string()
}

type Pick = fn(&Experiment) -> Option<&Side>;
const PROCESS_SIDE: Pick = |e| e.process.as_ref();
const THREAD_SIDE: Pick = |e| e.thread.as_ref();

/// One side's median of each experiment, the i-th at step i (moved by `offset` so that the two
/// sides stand beside each other), with the spread of its runs.
fn medians(exps: &[&Experiment], pick: Pick, offset: f64) -> Vec<Point> {
    exps.iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let s = pick(e)?;
            Some(Point { x: i as f64 + offset, y: s.median?, spread: s.low.zip(s.high) })
        })
        .collect()
}

/// One chart per unit: each measured experiment's two medians with their spread.
fn side_by_side(report: &Report) -> Result<Vec<Chart>> {
    let all = measured(report);
    let mut units: Vec<&str> = Vec::new();
    for e in &all {
        let u = e.unit.as_deref().unwrap_or("");
        if !units.contains(&u) {
            units.push(u);
        }
    }
    let mut charts = Vec::new();
    for unit in units {
        let exps: Vec<&Experiment> = all.iter().copied().filter(|e| e.unit.as_deref().unwrap_or("") == unit).collect();
        let series = vec![
            Series { name: "process".into(), color: PROCESS, line: false, points: medians(&exps, PROCESS_SIDE, -0.12) },
            Series { name: "thread".into(), color: THREAD, line: false, points: medians(&exps, THREAD_SIDE, 0.12) },
        ];
        let better = better_word(exps[0].better);
        let frame = Frame {
            title: format!("{}: process beside thread, {unit} ({better})", report.row),
            x_desc: "experiment [side the claim expects to win: P process, T thread, = neither]".into(),
            y_desc: format!("{unit}: median, bar from low to high"),
            steps: exps.iter().map(|e| format!("{} [{}]", e.id, expected_mark(e.expected))).collect(),
            width: (170 * exps.len() as u32).clamp(640, 1400),
        };
        let mut expects: Vec<String> = Vec::new();
        for side in [Expected::Thread, Expected::Process, Expected::Same] {
            let ids: Vec<&str> = exps.iter().filter(|e| e.expected == side).map(|e| e.id.as_str()).collect();
            if !ids.is_empty() {
                expects.push(format!("{} for {}", expected_word(side), ids.join(", ")));
            }
        }
        let ids: Vec<String> = exps.iter().map(|e| e.id.clone()).collect();
        charts.push(Chart {
            file: format!("{}-{}.svg", report.row, slug(unit)),
            caption: format!(
                "{}: the median of each side in {unit} ({better}), the bar spanning its runs from low to high. \
                 The claim expects to win: {}.",
                report.row,
                expects.join("; ")
            ),
            svg: draw(&frame, &series, &report.row, &ids)?,
            experiments: ids,
        });
    }
    Ok(charts)
}

/// The sweeps this row's report holds.
fn sweeps(report: &Report) -> Result<Vec<Chart>> {
    let mut charts = Vec::new();
    let find = |id: &str| measured(report).into_iter().find(|e| e.id == id);
    match report.row.as_str() {
        "switching" => charts.extend(working_sets(report)?),
        "concurrency" => {
            if let Some(e) = find("speedup") {
                charts.extend(array_sweep(
                    report,
                    e,
                    "workers",
                    "speedup",
                    "workers",
                    "speedup (× one worker), higher is better",
                    true,
                )?);
            }
            if let Some(e) = find("spawn-vs-size") {
                charts.extend(array_sweep(
                    report,
                    e,
                    "parent_mib",
                    "us_at_each_size",
                    "memory the parent has touched (MiB)",
                    "µs per start, lower is better",
                    false,
                )?);
            }
            if let Some(e) = find("contention") {
                charts.extend(array_sweep(
                    report,
                    e,
                    "workers",
                    "ops_per_s_per_worker",
                    "workers",
                    "operations/s per worker, higher is better",
                    false,
                )?);
            }
        }
        "use-cases" => {
            if let Some(e) = find("web-server") {
                charts.extend(requests_per_connection(report, e)?);
            }
        }
        "communication" => {
            if let Some(e) = report.experiments.iter().find(|e| e.id == "throughput-shm") {
                charts.extend(throughput_by_size(report, e)?);
            }
        }
        _ => {}
    }
    Ok(charts)
}

/// switching: ns/switch as the working set each task touches between switches grows.
fn working_sets(report: &Report) -> Result<Option<Chart>> {
    let exps: Vec<&Experiment> = measured(report).into_iter().filter(|e| e.id.starts_with("working-set-")).collect();
    if exps.is_empty() {
        return Ok(None);
    }
    let series = vec![
        Series { name: "process".into(), color: PROCESS, line: true, points: medians(&exps, PROCESS_SIDE, 0.0) },
        Series { name: "thread".into(), color: THREAD, line: true, points: medians(&exps, THREAD_SIDE, 0.0) },
    ];
    let frame = Frame {
        title: "switching: ns/switch by working set touched per switch (lower is better; claim: thread wins)".into(),
        x_desc: "working set each task touches between switches".into(),
        y_desc: "ns/switch: median, bar from low to high".into(),
        steps: exps.iter().map(|e| e.id.trim_start_matches("working-set-").to_string()).collect(),
        width: 720,
    };
    let ids: Vec<String> = exps.iter().map(|e| e.id.clone()).collect();
    Ok(Some(Chart {
        file: "switching-working-set.svg".into(),
        caption: "switching: the cost of a switch as each task touches more memory between switches (a process \
                  switch may lose its cached translations). The claim expects the thread side to win."
            .into(),
        svg: draw(&frame, &series, &report.row, &ids)?,
        experiments: ids,
    }))
}

/// An experiment whose sides hold per-step arrays: `x` the steps, `y` the values.
fn array_sweep(
    report: &Report,
    e: &Experiment,
    x: &str,
    y: &str,
    x_desc: &str,
    y_desc: &str,
    linear_reference: bool,
) -> Result<Option<Chart>> {
    let numbers = |v: Option<&Value>| -> Vec<f64> {
        v.and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
    };
    let (Some(p), Some(t)) = (&e.process, &e.thread) else { return Ok(None) };
    let steps = numbers(p.facts.get(x));
    if steps.is_empty() {
        return Ok(None);
    }
    let points = |values: Vec<f64>| -> Vec<Point> {
        values.into_iter().take(steps.len()).enumerate().map(|(i, y)| Point { x: i as f64, y, spread: None }).collect()
    };
    let mut series = vec![
        Series { name: "process".into(), color: PROCESS, line: true, points: points(numbers(p.facts.get(y))) },
        Series { name: "thread".into(), color: THREAD, line: true, points: points(numbers(t.facts.get(y))) },
    ];
    if linear_reference {
        let linear = numbers(p.facts.get("linear_speedup"));
        if !linear.is_empty() {
            series.push(Series {
                name: "the CPUs allow".into(),
                color: RGBColor(120, 120, 120),
                line: true,
                points: points(linear),
            });
        }
    }
    let claim = expected_word(e.expected);
    let frame = Frame {
        title: format!("{}: {} by {x_desc} (claim: {claim} wins)", report.row, e.id),
        x_desc: x_desc.to_string(),
        y_desc: y_desc.to_string(),
        steps: steps.iter().map(|s| harness::report::fmt_num(*s).trim_end_matches(".00").to_string()).collect(),
        width: 720,
    };
    let ids = vec![e.id.clone()];
    Ok(Some(Chart {
        file: format!("{}-{}.svg", report.row, e.id),
        caption: format!(
            "{}: {} — {y_desc}, at each step of {x_desc} (one run's figures, from the facts). The claim expects \
             {claim} to win.",
            report.row, e.id
        ),
        svg: draw(&frame, &series, &report.row, &ids)?,
        experiments: ids,
    }))
}

/// use-cases: requests/s at each number of connections (`requests_per_s_N` facts).
fn requests_per_connection(report: &Report, e: &Experiment) -> Result<Option<Chart>> {
    let (Some(p), Some(t)) = (&e.process, &e.thread) else { return Ok(None) };
    let levels = |facts: &serde_json::Map<String, Value>| -> Vec<(u64, f64)> {
        let mut v: Vec<(u64, f64)> = facts
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("requests_per_s_")?.parse().ok()?, v.as_f64()?)))
            .collect();
        v.sort_by_key(|l| l.0);
        v
    };
    let (pl, tl) = (levels(&p.facts), levels(&t.facts));
    if pl.is_empty() {
        return Ok(None);
    }
    let points = |l: &[(u64, f64)]| -> Vec<Point> {
        l.iter().enumerate().map(|(i, (_, y))| Point { x: i as f64, y: *y, spread: None }).collect()
    };
    let series = vec![
        Series { name: "process (prefork)".into(), color: PROCESS, line: true, points: points(&pl) },
        Series { name: "thread (pool)".into(), color: THREAD, line: true, points: points(&tl) },
    ];
    let claim = expected_word(e.expected);
    let frame = Frame {
        title: format!("use-cases: web-server requests/s by connections (higher is better; claim: {claim})"),
        x_desc: "connections".into(),
        y_desc: "requests/s".into(),
        steps: pl.iter().map(|(c, _)| c.to_string()).collect(),
        width: 720,
    };
    let ids = vec![e.id.clone()];
    Ok(Some(Chart {
        file: "use-cases-web-server-connections.svg".into(),
        caption: format!(
            "use-cases: requests per second of the prefork server and the thread pool at each number of \
             connections (one run's figures, from the facts). The claim expects {claim} to win."
        ),
        svg: draw(&frame, &series, &report.row, &ids)?,
        experiments: ids,
    }))
}

/// communication: GB/s by message size for every mechanism of both sides, read from the
/// matrix facts of `throughput-shm` ("4 KiB 2.08 GB/s, 64 KiB 2.96 GB/s, 1 MiB ...; checksums match").
fn throughput_by_size(report: &Report, e: &Experiment) -> Result<Option<Chart>> {
    let mut steps: Vec<String> = Vec::new();
    // (mechanism, on the process side, its figures by size)
    type Figures = (String, bool, Vec<(String, f64)>);
    let mut lines: Vec<Figures> = Vec::new();
    for (is_process, side) in [(true, &e.process), (false, &e.thread)] {
        let Some(side) = side else { continue };
        for (mechanism, v) in &side.facts {
            let Some(text) = v.as_str() else { continue };
            let figures = parse_rates(text);
            if figures.is_empty() {
                continue;
            }
            for (size, _) in &figures {
                if !steps.contains(size) {
                    steps.push(size.clone());
                }
            }
            lines.push((mechanism.clone(), is_process, figures));
        }
    }
    if lines.is_empty() {
        return Ok(None);
    }
    let (mut pn, mut tn) = (0, 0);
    let series: Vec<Series> = lines
        .into_iter()
        .map(|(mechanism, is_process, figures)| {
            let color = if is_process {
                pn += 1;
                PROCESS_SHADES[(pn - 1) % PROCESS_SHADES.len()]
            } else {
                tn += 1;
                THREAD_SHADES[(tn - 1) % THREAD_SHADES.len()]
            };
            let points = figures
                .iter()
                .filter_map(|(size, y)| {
                    Some(Point { x: steps.iter().position(|s| s == size)? as f64, y: *y, spread: None })
                })
                .collect();
            let side = if is_process { "P" } else { "T" };
            Series { name: format!("{side}: {mechanism}"), color, line: true, points }
        })
        .collect();
    let claim = expected_word(e.expected);
    let frame = Frame {
        title: format!("communication: throughput by message size (higher is better; claim: {claim})"),
        x_desc: "message size".into(),
        y_desc: "GB/s, checksummed".into(),
        steps,
        width: 820,
    };
    let ids = vec![e.id.clone()];
    Ok(Some(Chart {
        file: "communication-throughput-by-size.svg".into(),
        caption: format!(
            "communication: bulk throughput of every mechanism at each message size, processes (P, reds) and \
             threads (T, blues); one run's figures, from the facts of throughput-shm. The claim expects {claim} \
             to win."
        ),
        svg: draw(&frame, &series, &report.row, &ids)?,
        experiments: ids,
    }))
}

/// "4 KiB 2.08 GB/s, 64 KiB not possible (msgsize_max), 1 MiB 0.68 GB/s; checksums match"
/// → [("4 KiB", 2.08), ("1 MiB", 0.68)].
fn parse_rates(text: &str) -> Vec<(String, f64)> {
    let figures = text.split(';').next().unwrap_or("");
    figures
        .split(", ")
        .filter_map(|f| {
            let w: Vec<&str> = f.split_whitespace().collect();
            match w.as_slice() {
                [n, size_unit, rate, "GB/s"] => Some((format!("{n} {size_unit}"), rate.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}

/// Draws the series in the frame and returns the SVG, with a `<desc>` naming the row and the
/// experiments drawn.
fn draw(frame: &Frame, series: &[Series], row: &str, experiments: &[String]) -> Result<String> {
    let values: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter())
        .flat_map(|p| [Some(p.y), p.spread.map(|s| s.0), p.spread.map(|s| s.1)])
        .flatten()
        .filter(|v| v.is_finite())
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let x = -0.5..frame.steps.len().max(1) as f64 - 0.5;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (frame.width, 440)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut builder = ChartBuilder::on(&root);
        builder.caption(&frame.title, ("sans-serif", 17)).margin(12).x_label_area_size(48).y_label_area_size(72);
        if lo > 0.0 && hi / lo > LOG_SPAN {
            let mut chart = builder.build_cartesian_2d(x, (lo / 1.4..hi * 1.4).log_scale())?;
            body(&mut chart, frame, series)?;
        } else {
            // Room above the data for the legend, one line per series.
            let top = if hi > 0.0 { hi * (1.1 + 0.06 * series.len() as f64) } else { 1.0 };
            let bottom = if lo < 0.0 { lo * 1.12 } else { 0.0 };
            let mut chart = builder.build_cartesian_2d(x, bottom..top)?;
            body(&mut chart, frame, series)?;
        }
        root.present()?;
    }
    let desc = format!("<desc>row: {row}; experiments: {}</desc>\n", experiments.join(", "));
    let at = svg.find('\n').map_or(svg.len(), |i| i + 1);
    svg.insert_str(at, &desc);
    Ok(svg)
}

/// The mesh, the series and the legend, on either kind of y axis.
fn body<'a, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    frame: &Frame,
    series: &[Series],
) -> Result<()>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let steps = frame.steps.clone();
    let label = move |v: &f64| {
        let i = v.round();
        if (v - i).abs() < 0.01 && i >= 0.0 {
            steps.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(frame.steps.len() * 2 + 1)
        .x_label_formatter(&label)
        .y_label_formatter(&|v| harness::report::fmt_num(*v))
        .x_desc(frame.x_desc.as_str())
        .y_desc(frame.y_desc.as_str())
        .draw()?;
    for s in series.iter().filter(|s| !s.points.is_empty()) {
        let color = s.color;
        if s.line {
            chart.draw_series(LineSeries::new(s.points.iter().map(|p| (p.x, p.y)), color.stroke_width(2)))?;
        }
        chart.draw_series(
            s.points
                .iter()
                .filter_map(|p| p.spread)
                .zip(s.points.iter())
                .map(|((low, high), p)| ErrorBar::new_vertical(p.x, low, p.y, high, color.stroke_width(1), 10)),
        )?;
        chart
            .draw_series(s.points.iter().map(|p| Circle::new((p.x, p.y), 4, color.filled())))?
            .label(s.name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 12, y + 4)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_by_size_are_read_from_the_matrix_lines() {
        let line = "4 KiB 2.08 GB/s, 64 KiB not possible (msgsize_max), 1 MiB 0.68 GB/s; checksums match (16 MiB)";
        assert_eq!(parse_rates(line), vec![("4 KiB".to_string(), 2.08), ("1 MiB".to_string(), 0.68)]);
        assert!(parse_rates("one CPU: p50 5.45 µs, p99 7.93 µs").is_empty());
    }

    #[test]
    fn units_become_file_names() {
        assert_eq!(slug("ns/switch"), "ns-switch");
        assert_eq!(slug("µs/round-trip"), "us-round-trip");
    }
}
