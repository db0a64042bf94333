//! `report.html`: a [`Report`] as one self-contained page (inline `<style>` and inline `<svg>`
//! only, nothing fetched), readable offline and attachable to a CI run.
//!
//! Layout, top to bottom: a header (scenario, description, seed, duration, nodes and a big
//! PASSED / FAILED verdict); the invariants table and the run's figures (throughput, readings,
//! windows, failovers, max RSS per node); the violations; six plots over time (readings/s,
//! replication lag, inference p99, offloaded share, gateway term with its changes, cloud backlog),
//! each with every fault drawn as a dashed vertical line; then the faults and the gateway changes
//! as tables. Every string taken from the report is HTML-escaped.

use std::collections::BTreeSet;
use std::fmt::{self, Write};

use crate::report::{NodeSample, Report, Sample};

/// Line colours, one per node, cycled; each further cycle gets a dash pattern (see [`DASHES`]) so
/// twenty or thirty nodes stay distinguishable.
const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#393b79",
];

/// SVG dash pattern and the matching CSS border style, per palette cycle.
const DASHES: [(Option<&str>, &str); 3] = [
    (None, "solid"),
    (Some("7 3"), "dashed"),
    (Some("2 2"), "dotted"),
];

/// Plot geometry (SVG user units; the SVG scales to the page width).
const W: f64 = 960.0;
const H: f64 = 300.0;
const ML: f64 = 72.0;
const MR: f64 = 16.0;
const MT: f64 = 14.0;
const MB: f64 = 44.0;

/// Values beyond this are treated like NaN: not drawn (they would make every scale useless).
const HUGE: f64 = 1e300;

/// The page for `report`.
pub fn render(report: &Report) -> String {
    let mut out = String::with_capacity(64 * 1024);
    // Writing into a String cannot fail.
    let _ = page(&mut out, report);
    out
}

/// `s` with `& < > " '` escaped, for text and attribute values alike.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// At most `max` characters of `s`, with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut o: String = s.chars().take(max.saturating_sub(1)).collect();
        o.push('…');
        o
    }
}

/// A figure for a table: `decimals` places, scientific when huge, `n/a` when not finite.
fn num(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        "n/a".to_string()
    } else if v.abs() >= 1e9 {
        format!("{v:.3e}")
    } else {
        format!("{v:.decimals$}")
    }
}

/// A coordinate, rounded to one decimal, without a trailing `.0`.
fn c(v: f64) -> String {
    let s = format!("{v:.1}");
    match s.strip_suffix(".0") {
        Some("-0") => "0".to_string(),
        Some(t) => t.to_string(),
        None => s,
    }
}

fn usable(v: f64) -> bool {
    v.is_finite() && v.abs() < HUGE
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    })
}

/// A round step (1, 2 or 5 × 10^k) that cuts `range` into about `target` pieces.
fn nice_step(range: f64, target: f64) -> f64 {
    let raw = range / target;
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let f = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    let step = f * mag;
    if step.is_finite() && step > 0.0 {
        step
    } else {
        1.0
    }
}

/// A tick label for `v` on an axis stepping by `step`.
fn tick_label(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    if v.abs() >= 1e6 || step < 1e-4 {
        let s = format!("{v:.2e}");
        // 1.50e6 → 1.5e6, 2.00e9 → 2e9
        match s.split_once('e') {
            Some((m, e)) => {
                let m = m.trim_end_matches('0').trim_end_matches('.');
                format!("{m}e{e}")
            }
            None => s,
        }
    } else {
        let d = if step >= 1.0 {
            0
        } else {
            ((-step.log10()).ceil() as usize).min(6)
        };
        format!("{v:.d$}")
    }
}

/// Every node: the report's, in order, then any only the samples name.
fn all_nodes(report: &Report) -> Vec<String> {
    let mut nodes = report.nodes.clone();
    let known: BTreeSet<&str> = report.nodes.iter().map(String::as_str).collect();
    let mut extra = BTreeSet::new();
    for s in &report.samples {
        for n in s.nodes.keys() {
            if !known.contains(n.as_str()) {
                extra.insert(n.clone());
            }
        }
    }
    nodes.extend(extra);
    nodes
}

/// Colour and dash (SVG, CSS) of the `i`-th node.
fn style(i: usize) -> (&'static str, Option<&'static str>, &'static str) {
    let (dash, css) = DASHES[(i / PALETTE.len()) % DASHES.len()];
    (PALETTE[i % PALETTE.len()], dash, css)
}

fn page(o: &mut String, r: &Report) -> fmt::Result {
    let nodes = all_nodes(r);
    let title = if r.scenario.is_empty() {
        "(unnamed scenario)"
    } else {
        r.scenario.as_str()
    };
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    o.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    writeln!(o, "<title>verge sim: {}</title>", esc(title))?;
    o.push_str(CSS);
    o.push_str("</head>\n<body>\n");

    // Header.
    o.push_str("<header>\n<div class=\"head\">\n<div>\n");
    writeln!(o, "<h1>{}</h1>", esc(title))?;
    if !r.description.is_empty() {
        writeln!(o, "<p class=\"desc\">{}</p>", esc(&r.description))?;
    }
    o.push_str("<dl class=\"meta\">\n");
    writeln!(o, "<dt>seed</dt><dd>{}</dd>", r.seed)?;
    writeln!(o, "<dt>duration</dt><dd>{} s</dd>", num(r.duration_s, 1))?;
    let names: Vec<String> = nodes.iter().map(|n| esc(n)).collect();
    writeln!(
        o,
        "<dt>nodes ({})</dt><dd>{}</dd>",
        nodes.len(),
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    )?;
    writeln!(o, "<dt>samples</dt><dd>{}</dd>", r.samples.len())?;
    o.push_str("</dl>\n</div>\n");
    if r.passed {
        o.push_str("<div class=\"verdict pass\">PASSED</div>\n");
    } else {
        o.push_str("<div class=\"verdict fail\">FAILED</div>\n");
    }
    o.push_str("</div>\n</header>\n<main>\n");

    summary(o, r, &nodes)?;
    violations(o, r)?;
    plots(o, r, &nodes)?;
    faults_and_changes(o, r)?;

    o.push_str("</main>\n</body>\n</html>\n");
    Ok(())
}

fn summary(o: &mut String, r: &Report, nodes: &[String]) -> fmt::Result {
    o.push_str("<section class=\"cols\">\n<div>\n<h2>Invariants</h2>\n");
    o.push_str("<table>\n<thead><tr><th>invariant</th><th>count</th></tr></thead>\n<tbody>\n");
    for (name, n) in [
        ("lost_acknowledged", r.lost_acknowledged),
        ("cloud_missing", r.cloud_missing),
        ("cloud_duplicates", r.cloud_duplicates),
        ("stale_term_accepted", r.stale_term_accepted),
        ("replicas_diverged", r.replicas_diverged),
    ] {
        let class = if n == 0 { "ok" } else { "bad" };
        writeln!(
            o,
            "<tr><td>{name}</td><td class=\"num {class}\">{n}</td></tr>"
        )?;
    }
    o.push_str("</tbody>\n</table>\n</div>\n");

    o.push_str("<div>\n<h2>Figures</h2>\n<table>\n<tbody>\n");
    let row = |o: &mut String, k: &str, v: String| {
        writeln!(o, "<tr><th>{k}</th><td class=\"num\">{v}</td></tr>")
    };
    row(o, "readings/s (corridor)", num(r.readings_per_s, 1))?;
    row(
        o,
        "acknowledged readings",
        r.acknowledged_readings.to_string(),
    )?;
    row(o, "sensor readings", r.sensor_readings.to_string())?;
    row(o, "windows produced", r.windows_produced.to_string())?;
    row(o, "windows in cloud", r.windows_in_cloud.to_string())?;
    row(o, "failovers", r.failovers_ms.len().to_string())?;
    let max = r
        .failovers_ms
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let ms = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{} ms", num(v, 0)));
    row(o, "failover max", ms(max))?;
    row(o, "failover median", ms(median(&r.failovers_ms)))?;
    o.push_str("</tbody>\n</table>\n</div>\n");

    o.push_str("<div>\n<h2>Memory per node (max, MiB)</h2>\n");
    if r.max_rss_mib.is_empty() {
        o.push_str("<p class=\"none\">none</p>\n");
    } else {
        o.push_str("<table>\n<thead><tr><th>node</th><th>RSS</th><th>PSS</th><th>private</th></tr></thead>\n<tbody>\n");
        let known: BTreeSet<&str> = nodes.iter().map(String::as_str).collect();
        let ordered = nodes
            .iter()
            .filter_map(|n| r.max_rss_mib.get_key_value(n))
            .chain(
                r.max_rss_mib
                    .iter()
                    .filter(|(n, _)| !known.contains(n.as_str())),
            );
        let other = |m: &std::collections::BTreeMap<String, f64>, n: &str| {
            m.get(n).map_or_else(|| "n/a".to_string(), |v| num(*v, 1))
        };
        for (n, v) in ordered {
            writeln!(
                o,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                esc(n),
                num(*v, 1),
                other(&r.max_pss_mib, n),
                other(&r.max_private_mib, n)
            )?;
        }
        o.push_str("</tbody>\n</table>\n");
    }
    o.push_str("</div>\n</section>\n");
    Ok(())
}

fn violations(o: &mut String, r: &Report) -> fmt::Result {
    writeln!(o, "<section>\n<h2>Violations ({})</h2>", r.violations.len())?;
    if r.violations.is_empty() {
        o.push_str("<p class=\"none\">none</p>\n</section>\n");
        return Ok(());
    }
    o.push_str("<table class=\"wide\">\n<thead><tr><th>invariant</th><th>stream</th><th>seq</th><th>at (s)</th><th>detail</th></tr></thead>\n<tbody>\n");
    for v in &r.violations {
        writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&v.invariant),
            esc(&v.stream),
            v.seq,
            v.at_s.map_or_else(|| "—".to_string(), |t| num(t, 1)),
            esc(&v.detail)
        )?;
    }
    o.push_str("</tbody>\n</table>\n</section>\n");
    Ok(())
}

fn faults_and_changes(o: &mut String, r: &Report) -> fmt::Result {
    writeln!(
        o,
        "<section class=\"cols\">\n<div>\n<h2>Faults ({})</h2>",
        r.faults.len()
    )?;
    if r.faults.is_empty() {
        o.push_str("<p class=\"none\">none</p>\n");
    } else {
        o.push_str("<table>\n<thead><tr><th>at (s)</th><th>fault</th></tr></thead>\n<tbody>\n");
        for f in &r.faults {
            writeln!(
                o,
                "<tr><td class=\"num\">{}</td><td>{}</td></tr>",
                num(f.at_s, 1),
                esc(&f.what)
            )?;
        }
        o.push_str("</tbody>\n</table>\n");
    }
    writeln!(
        o,
        "</div>\n<div>\n<h2>Gateway changes ({})</h2>",
        r.gateway_changes.len()
    )?;
    if r.gateway_changes.is_empty() {
        o.push_str("<p class=\"none\">none</p>\n");
    } else {
        o.push_str("<table>\n<thead><tr><th>at (s)</th><th>from</th><th>to</th><th>term</th><th>failover (ms)</th></tr></thead>\n<tbody>\n");
        for g in &r.gateway_changes {
            writeln!(
                o,
                "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                num(g.at_s, 1),
                g.from.as_deref().map_or_else(|| "—".to_string(), esc),
                esc(&g.to),
                g.term,
                num(g.failover_ms, 0)
            )?;
        }
        o.push_str("</tbody>\n</table>\n");
    }
    o.push_str("</div>\n</section>\n");
    Ok(())
}

/// One line on a plot.
struct Series {
    name: String,
    color: &'static str,
    dash: Option<&'static str>,
    css_dash: &'static str,
    /// (t_s, value); `None` breaks the line.
    points: Vec<(f64, Option<f64>)>,
}

/// One plot.
struct Plot<'a> {
    title: &'a str,
    y_title: &'a str,
    series: Vec<Series>,
    /// The y axis reaches at least this far (1 for shares).
    y_min_max: Option<f64>,
    /// Draw as a step line (the term).
    step: bool,
    /// Counts: y ticks at whole numbers.
    integer: bool,
    /// Mark the gateway changes.
    gateway_marks: bool,
}

/// What every plot shares: the x range, the samples in time order, the markers.
struct Frame<'a> {
    r: &'a Report,
    x0: f64,
    x1: f64,
    samples: Vec<&'a Sample>,
}

impl Frame<'_> {
    fn sx(&self, x: f64) -> f64 {
        ML + (x - self.x0) / (self.x1 - self.x0) * (W - ML - MR)
    }

    fn in_x(&self, x: f64) -> bool {
        x.is_finite() && x >= self.x0 && x <= self.x1
    }
}

fn plots(o: &mut String, r: &Report, nodes: &[String]) -> fmt::Result {
    let mut samples: Vec<&Sample> = r.samples.iter().filter(|s| usable(s.t_s)).collect();
    samples.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
    let (mut x0, mut x1) = match (samples.first(), samples.last()) {
        (Some(a), Some(b)) => (a.t_s, b.t_s),
        _ => (0.0, 0.0),
    };
    // The run's whole span, from 0, when the duration is sensible.
    if r.duration_s.is_finite() && r.duration_s > 0.0 && r.duration_s < 1e9 {
        x0 = x0.min(0.0);
        x1 = x1.max(r.duration_s);
    }
    if x1 - x0 <= 0.0 || !(x1 - x0).is_finite() {
        if samples.is_empty() {
            (x0, x1) = (0.0, 1.0);
        } else {
            (x0, x1) = (x0 - 1.0, x0 + 1.0);
        }
    }
    let f = Frame { r, x0, x1, samples };

    let per_node = |get: fn(&NodeSample) -> Option<f64>| -> Vec<Series> {
        nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let (color, dash, css_dash) = style(i);
                Series {
                    name: n.clone(),
                    color,
                    dash,
                    css_dash,
                    points: f
                        .samples
                        .iter()
                        .map(|s| (s.t_s, s.nodes.get(n).and_then(get)))
                        .collect(),
                }
            })
            .collect()
    };
    let single = |name: &str, color: &'static str, get: fn(&Sample) -> Option<f64>| {
        vec![Series {
            name: name.to_string(),
            color,
            dash: None,
            css_dash: "solid",
            points: f.samples.iter().map(|s| (s.t_s, get(s))).collect(),
        }]
    };

    let list = [
        Plot {
            title: "Readings per second, per node",
            y_title: "readings/s",
            integer: false,
            series: per_node(|n| n.readings_per_s),
            y_min_max: None,
            step: false,
            gateway_marks: false,
        },
        Plot {
            title: "Replication lag, per node",
            y_title: "lag (records)",
            integer: true,
            series: per_node(|n| n.lag.map(|v| v as f64)),
            y_min_max: None,
            step: false,
            gateway_marks: false,
        },
        Plot {
            title: "Inference p99, per node",
            y_title: "p99 (ms)",
            integer: false,
            series: per_node(|n| n.inference_p99_ms),
            y_min_max: None,
            step: false,
            gateway_marks: false,
        },
        Plot {
            title: "Offloaded share, per node",
            y_title: "share of rows",
            integer: false,
            series: per_node(|n| n.offloaded_share),
            y_min_max: Some(1.0),
            step: false,
            gateway_marks: false,
        },
        Plot {
            title: "Gateway term and gateway changes",
            y_title: "term",
            integer: true,
            // Term 0 means unknown: a gap, not a drop.
            series: single("term", "#333333", |s| (s.term > 0).then_some(s.term as f64)),
            y_min_max: None,
            step: true,
            gateway_marks: true,
        },
        Plot {
            title: "Cloud backlog (gateway outbox)",
            y_title: "windows",
            integer: true,
            series: single("cloud backlog", "#1f77b4", |s| {
                s.cloud_backlog.map(|v| v as f64)
            }),
            y_min_max: None,
            step: false,
            gateway_marks: false,
        },
    ];
    o.push_str("<section>\n<h2>Over time</h2>\n");
    for p in &list {
        plot(o, &f, p)?;
    }
    o.push_str("</section>\n");
    Ok(())
}

fn plot(o: &mut String, f: &Frame<'_>, p: &Plot<'_>) -> fmt::Result {
    let (pw, ph) = (W - ML - MR, H - MT - MB);
    let (left, right, top, bottom) = (ML, W - MR, MT, H - MB);

    // The y range: from 0 (or below, if anything is negative) to the largest value, rounded.
    let values = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().filter_map(|&(_, v)| v))
        .filter(|v| usable(*v));
    let (mut lo, mut hi, mut any) = (0.0f64, 0.0f64, false);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
        any = true;
    }
    if let Some(m) = p.y_min_max {
        hi = hi.max(m);
    }
    if hi - lo <= 0.0 {
        hi = lo + 1.0;
    }
    let mut ystep = nice_step(hi - lo, 5.0);
    if p.integer {
        ystep = ystep.max(1.0);
    }
    let (y0, y1) = {
        let a = (lo / ystep).floor() * ystep;
        let b = (hi / ystep).ceil() * ystep;
        if a.is_finite() && b.is_finite() && b > a {
            (a, b)
        } else {
            (lo, hi)
        }
    };
    let sy = |v: f64| bottom - (v - y0) / (y1 - y0) * ph;

    writeln!(o, "<figure>\n<h3>{}</h3>", p.title)?;
    writeln!(
        o,
        "<svg viewBox=\"0 0 {W} {H}\" xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"{}\">",
        p.title
    )?;
    writeln!(
        o,
        "<rect class=\"area\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/>",
        c(left),
        c(top),
        c(pw),
        c(ph)
    )?;

    // Y grid and ticks.
    o.push_str("<g class=\"grid\">");
    let mut i = 0;
    loop {
        let v = y0 + i as f64 * ystep;
        if v > y1 + ystep * 1e-9 || i > 40 {
            break;
        }
        let y = c(sy(v));
        write!(
            o,
            "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/><text class=\"ty\" x=\"{}\" y=\"{y}\">{}</text>",
            c(left),
            c(right),
            c(left - 6.0),
            tick_label(v, ystep)
        )?;
        i += 1;
    }
    // X grid and ticks.
    let xstep = nice_step(f.x1 - f.x0, 8.0);
    let first = (f.x0 / xstep).ceil();
    let mut i = 0;
    loop {
        let v = (first + i as f64) * xstep;
        if v > f.x1 + xstep * 1e-9 || i > 40 {
            break;
        }
        let x = c(f.sx(v));
        write!(
            o,
            "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\"/><text class=\"tx\" x=\"{x}\" y=\"{}\">{}</text>",
            c(top),
            c(bottom),
            c(bottom + 14.0),
            tick_label(v, xstep)
        )?;
        i += 1;
    }
    o.push_str("</g>\n");
    writeln!(
        o,
        "<text class=\"axt\" x=\"{}\" y=\"{}\">time (s)</text>",
        c(left + pw / 2.0),
        c(H - 6.0)
    )?;
    writeln!(
        o,
        "<text class=\"axt\" transform=\"translate(14 {}) rotate(-90)\">{}</text>",
        c(top + ph / 2.0),
        p.y_title
    )?;

    // The lines; a None (or NaN, inf) ends a segment, a lone point is a dot.
    for s in &p.series {
        let dash = s
            .dash
            .map(|d| format!(" stroke-dasharray=\"{d}\""))
            .unwrap_or_default();
        let mut body = String::new();
        let mut seg: Vec<(f64, f64)> = Vec::new();
        let flush = |body: &mut String, seg: &mut Vec<(f64, f64)>| -> fmt::Result {
            match seg.len() {
                0 => {}
                1 => write!(
                    body,
                    "<circle cx=\"{}\" cy=\"{}\" r=\"2.5\" fill=\"{}\"/>",
                    c(seg[0].0),
                    c(seg[0].1),
                    s.color
                )?,
                _ => {
                    body.push_str("<polyline points=\"");
                    for (k, (x, y)) in seg.iter().enumerate() {
                        if k > 0 {
                            body.push(' ');
                        }
                        write!(body, "{},{}", c(*x), c(*y))?;
                    }
                    write!(body, "\" stroke=\"{}\"{dash}/>", s.color)?;
                }
            }
            seg.clear();
            Ok(())
        };
        for &(t, v) in &s.points {
            match v.filter(|v| usable(*v)) {
                Some(v) => {
                    let (x, y) = (f.sx(t), sy(v));
                    // A step line goes along at the old value, then up or down; a flat run
                    // needs no point per sample, so its end just moves along.
                    let last = seg.last().map(|&(_, py)| py);
                    if p.step && last == Some(y) && seg.len() >= 2 && seg[seg.len() - 2].1 == y {
                        seg.pop();
                    } else if p.step
                        && let Some(py) = last
                        && py != y
                    {
                        seg.push((x, py));
                    }
                    seg.push((x, y));
                }
                None => flush(&mut body, &mut seg)?,
            }
        }
        flush(&mut body, &mut seg)?;
        if !body.is_empty() {
            writeln!(
                o,
                "<g class=\"s\"><title>{}</title>{body}</g>",
                esc(&s.name)
            )?;
        }
    }

    if f.samples.is_empty() {
        writeln!(
            o,
            "<text class=\"empty\" x=\"{}\" y=\"{}\">no samples</text>",
            c(left + pw / 2.0),
            c(top + ph / 2.0)
        )?;
    } else if !any {
        writeln!(
            o,
            "<text class=\"empty\" x=\"{}\" y=\"{}\">no data</text>",
            c(left + pw / 2.0),
            c(top + ph / 2.0)
        )?;
    }

    // Gateway changes: a solid marker with "→ b3 (412 ms)" at the top, staggered over three rows.
    if p.gateway_marks {
        for (k, g) in
            f.r.gateway_changes
                .iter()
                .filter(|g| f.in_x(g.at_s))
                .enumerate()
        {
            let x = c(f.sx(g.at_s));
            let label = if g.failover_ms.is_finite() {
                format!("→ {} ({} ms)", shorten(&g.to, 24), num(g.failover_ms, 0))
            } else {
                format!("→ {}", shorten(&g.to, 24))
            };
            writeln!(
                o,
                "<g class=\"gw\"><title>{} s: {} → {} (term {}, {} ms)</title><line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text></g>",
                num(g.at_s, 1),
                g.from.as_deref().map_or_else(|| "none".to_string(), esc),
                esc(&g.to),
                g.term,
                num(g.failover_ms, 0),
                c(top),
                c(bottom),
                c(f.sx(g.at_s) + 3.0),
                c(top + 11.0 + (k % 3) as f64 * 11.0),
                esc(&label)
            )?;
        }
    }

    // Faults, on every plot: a thin dashed line with a short label reading upwards from the
    // bottom.
    for fault in f.r.faults.iter().filter(|e| f.in_x(e.at_s)) {
        let x = f.sx(fault.at_s);
        writeln!(
            o,
            "<g class=\"fault\"><title>{} s: {}</title><line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/><text transform=\"translate({} {}) rotate(-90)\">{}</text></g>",
            num(fault.at_s, 1),
            esc(&fault.what),
            c(x),
            c(top),
            c(x),
            c(bottom),
            c(x - 3.0),
            c(bottom - 4.0),
            esc(&shorten(&fault.what, 32))
        )?;
    }
    o.push_str("</svg>\n");

    // The legend, as HTML so it wraps.
    o.push_str("<div class=\"legend\">");
    for s in &p.series {
        write!(
            o,
            "<span><i style=\"border-top:3px {} {}\"></i>{}</span>",
            s.css_dash,
            s.color,
            esc(&s.name)
        )?;
    }
    if !f.r.faults.is_empty() {
        o.push_str("<span><i class=\"lf\"></i>fault</span>");
    }
    if p.gateway_marks && !f.r.gateway_changes.is_empty() {
        o.push_str("<span><i class=\"lg\"></i>gateway change</span>");
    }
    o.push_str("</div>\n</figure>\n");
    Ok(())
}

const CSS: &str = r#"<style>
:root{--ok:#1a7f37;--bad:#cf222e;--fg:#1f2328;--mute:#656d76;--line:#d0d7de}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:#f6f8fa}
header{background:#fff;border-bottom:1px solid var(--line);padding:16px 24px}
main{padding:8px 24px 32px;max-width:1400px}
.head{display:flex;justify-content:space-between;align-items:center;gap:24px;flex-wrap:wrap}
h1{margin:0 0 4px;font-size:24px}
h2{font-size:17px;margin:20px 0 8px}
h3{font-size:14px;margin:0 0 4px}
.desc{margin:0 0 8px;color:var(--mute);max-width:900px}
.meta{display:grid;grid-template-columns:auto 1fr;gap:2px 12px;margin:0}
.meta dt{color:var(--mute)}
.meta dd{margin:0}
.verdict{font-size:40px;font-weight:800;letter-spacing:2px;padding:10px 28px;border-radius:8px;color:#fff}
.verdict.pass{background:var(--ok)}
.verdict.fail{background:var(--bad)}
.cols{display:flex;flex-wrap:wrap;gap:8px 40px;align-items:flex-start}
table{border-collapse:collapse;background:#fff;border:1px solid var(--line)}
th,td{padding:3px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
thead th{background:#eaeef2}
tbody th{font-weight:normal;color:var(--mute)}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.ok{color:var(--ok);background:#dafbe1;font-weight:700}
td.bad{color:var(--bad);background:#ffebe9;font-weight:700}
table.wide{width:100%}
.none{color:var(--mute);font-style:italic}
figure{margin:0 0 18px;background:#fff;border:1px solid var(--line);border-radius:6px;padding:10px 12px}
svg{width:100%;height:auto;display:block;font-size:11px}
svg .area{fill:#fff;stroke:#8c959f}
svg .grid line{stroke:#eaeef2}
svg .grid text{fill:var(--mute)}
svg .ty{text-anchor:end;dominant-baseline:middle}
svg .tx{text-anchor:middle}
svg .axt{text-anchor:middle;fill:var(--fg);font-size:12px}
svg .s polyline{fill:none;stroke-width:1.5;stroke-linejoin:round}
svg .empty{text-anchor:middle;fill:var(--mute);font-size:16px}
svg .fault line{stroke:#57606a;stroke-width:1;stroke-dasharray:4 3}
svg .fault text{fill:#57606a;font-size:9px;paint-order:stroke;stroke:#fff;stroke-width:3px}
svg .gw line{stroke:#8250df;stroke-width:1.5}
svg .gw text{fill:#8250df;font-size:10px;font-weight:600;paint-order:stroke;stroke:#fff;stroke-width:3px}
.legend{display:flex;flex-wrap:wrap;gap:2px 14px;margin-top:4px;font-size:12px}
.legend span{display:inline-flex;align-items:center;gap:5px;white-space:nowrap}
.legend i{display:inline-block;width:22px;height:0}
.legend i.lf{border-top:1px dashed #57606a}
.legend i.lg{border-top:2px solid #8250df}
</style>
"#;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::report::{FaultEvent, GatewayChange, Violation};

    fn count(h: &str, pat: &str) -> usize {
        h.matches(pat).count()
    }

    #[test]
    fn empty_report_renders() {
        let h = render(&Report::default());
        assert!(h.starts_with("<!DOCTYPE html>"));
        assert_eq!(count(&h, "<svg"), 6);
        assert_eq!(count(&h, "</svg>"), 6);
        assert!(h.contains("no samples"));
        assert!(h.contains("FAILED"));
    }

    fn small() -> Report {
        let nodes = vec!["a1".to_string(), "b2".to_string(), "n<&>'\"".to_string()];
        let mut samples = Vec::new();
        for i in 0..10u64 {
            let mut m = BTreeMap::new();
            for (k, n) in nodes.iter().enumerate() {
                let down = k == 1 && (4..6).contains(&i);
                m.insert(
                    n.clone(),
                    NodeSample {
                        up: !down,
                        readings_per_s: if down {
                            None
                        } else if i == 7 && k == 0 {
                            Some(f64::NAN)
                        } else {
                            Some(100.0 + (i * 3 + k as u64) as f64)
                        },
                        lag: (!down).then_some(i * k as u64),
                        inference_p99_ms: if k == 2 && i == 3 {
                            Some(f64::INFINITY)
                        } else {
                            Some(12.5)
                        },
                        offloaded_share: (!down).then_some(0.1 * k as f64),
                        rss_mib: Some(80.0),
                        pss_mib: Some(20.0),
                        private_mib: Some(10.0),
                    },
                );
            }
            samples.push(Sample {
                t_s: i as f64,
                gateway: Some(if i < 5 { "b2" } else { "a1" }.to_string()),
                term: if i < 5 { 1 } else { 2 },
                cloud_backlog: (i != 2).then_some(i * 10),
                nodes: m,
            });
        }
        Report {
            scenario: "kill <gateway>".to_string(),
            description: "Kill the gateway & watch".to_string(),
            seed: 42,
            duration_s: 10.0,
            nodes: nodes.clone(),
            passed: false,
            lost_acknowledged: 2,
            failovers_ms: vec![412.0, f64::NAN],
            max_rss_mib: nodes.iter().map(|n| (n.clone(), 81.5)).collect(),
            violations: vec![Violation {
                invariant: "lost_acknowledged".to_string(),
                stream: "a1/temp/s0".to_string(),
                seq: 17,
                at_s: Some(3.2),
                detail: "missing on <every> replica".to_string(),
            }],
            faults: vec![FaultEvent {
                at_s: 4.0,
                what: "kill b2 (gateway)".to_string(),
            }],
            gateway_changes: vec![GatewayChange {
                at_s: 4.4,
                from: Some("b2".to_string()),
                to: "a1".to_string(),
                term: 2,
                failover_ms: 412.0,
            }],
            samples,
            ..Report::default()
        }
    }

    #[test]
    fn small_report_has_plots_legends_markers_and_escapes() {
        let h = render(&small());
        assert_eq!(count(&h, "<svg"), 6);
        assert_eq!(count(&h, "</svg>"), 6);
        assert!(h.contains(">a1<"));
        assert!(h.contains(">b2<"));
        // Every plot marks the fault.
        assert_eq!(count(&h, "kill b2 (gateway)</text>"), 6);
        assert!(h.contains("→ a1 (412 ms)"));
        assert!(h.contains("n&lt;&amp;&gt;&#39;&quot;"));
        assert!(!h.contains("n<&>"));
        assert!(h.contains("kill &lt;gateway&gt;"));
        assert!(h.contains("missing on &lt;every&gt; replica"));
        assert!(!h.contains("NaN"));
        assert!(!h.contains("inf"));
        assert!(h.contains("FAILED"));
        // b2 is down at 4 and 5: its readings line is split in two.
        assert!(h.contains("<g class=\"s\"><title>b2</title><polyline"));
    }

    #[test]
    fn single_sample_and_all_none() {
        let mut r = small();
        r.samples.truncate(1);
        r.duration_s = 0.0;
        for s in &mut r.samples {
            for n in s.nodes.values_mut() {
                n.lag = None;
            }
        }
        let h = render(&r);
        assert_eq!(count(&h, "<svg"), 6);
        assert!(h.contains("<circle"));
        assert!(h.contains("no data"));
    }

    #[test]
    fn huge_values_do_not_break_the_axes() {
        let mut r = small();
        for s in &mut r.samples {
            for n in s.nodes.values_mut() {
                n.lag = Some(u64::MAX);
                n.readings_per_s = Some(f64::MAX);
            }
        }
        let h = render(&r);
        assert!(!h.contains("NaN"));
        assert!(!h.contains("inf"));
        assert!(h.contains("e19"));
    }

    #[test]
    fn big_report_stays_small() {
        let nodes: Vec<String> = (0..20).map(|i| format!("n{i:02}")).collect();
        let samples = (0..600u64)
            .map(|i| Sample {
                t_s: i as f64 * 1.003,
                gateway: Some("n00".to_string()),
                term: 1 + i / 100,
                cloud_backlog: Some(i % 37),
                nodes: nodes
                    .iter()
                    .enumerate()
                    .map(|(k, n)| {
                        (
                            n.clone(),
                            NodeSample {
                                up: true,
                                readings_per_s: Some(1234.5678 + (i * k as u64) as f64 / 7.0),
                                lag: Some(i % 13),
                                inference_p99_ms: Some(17.123 + k as f64),
                                offloaded_share: Some((i % 10) as f64 / 9.7),
                                rss_mib: Some(100.0),
                                pss_mib: Some(30.0),
                                private_mib: Some(12.0),
                            },
                        )
                    })
                    .collect(),
            })
            .collect();
        let r = Report {
            scenario: "big".to_string(),
            duration_s: 600.0,
            nodes,
            passed: true,
            faults: (0..10)
                .map(|i| FaultEvent {
                    at_s: 50.0 * i as f64,
                    what: format!("partition n{i:02}"),
                })
                .collect(),
            samples,
            ..Report::default()
        };
        let h = render(&r);
        eprintln!("20 nodes x 600 samples: {} bytes", h.len());
        assert!(h.len() < 2_000_000, "{} bytes", h.len());
        assert!(h.contains("PASSED"));
        assert!(h.contains(">n19<"));
    }
}
