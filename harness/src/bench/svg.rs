//! Inline SVG charts for the HTML report: line charts, a log-x latency
//! histogram, horizontal and stacked bars. No scripts.

use std::fmt::Write as _;

use super::metrics::Histogram;
use super::text::fmt_num;

/// rust-dest's colour in every chart.
pub const RUST_COLOR: &str = "#d9480f";
/// QEMU's colour in every chart.
pub const QEMU_COLOR: &str = "#1c7ed6";

/// Escape text for HTML/SVG.
pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// 1-2-5 tick step for a range.
fn nice_step(range: f64, target: usize) -> f64 {
    if range <= 0.0 || !range.is_finite() {
        return 1.0;
    }
    let raw = range / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn tick_label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e6 {
        format!("{:.0}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// One line of a line chart.
pub struct Series {
    pub label: String,
    pub color: &'static str,
    pub dashed: bool,
    pub pts: Vec<(f64, f64)>,
}

const W: f64 = 760.0;
const H: f64 = 300.0;
const ML: f64 = 64.0;
const MR: f64 = 16.0;
const MT: f64 = 30.0;
const MB: f64 = 44.0;

fn svg_open(id: &str, title: &str, h: f64) -> String {
    format!(
        "<svg id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\" font-family=\"sans-serif\" font-size=\"11\">\
<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/><text x=\"{}\" y=\"18\" font-size=\"13\" font-weight=\"bold\">{}</text>",
        ML,
        esc(title)
    )
}

/// A line chart; x and y from 0.
pub fn svg_lines(id: &str, title: &str, xlabel: &str, ylabel: &str, series: &[Series]) -> String {
    let mut s = svg_open(id, title, H);
    let xmax = series.iter().flat_map(|x| x.pts.iter().map(|p| p.0)).fold(0.0, f64::max).max(1e-9);
    let ymax = series.iter().flat_map(|x| x.pts.iter().map(|p| p.1)).fold(0.0, f64::max).max(1e-9);
    let (xs, ys) = (nice_step(xmax, 8), nice_step(ymax, 5));
    let (xmax, ymax) = ((xmax / xs).ceil() * xs, (ymax / ys).ceil() * ys);
    let (pw, ph) = (W - ML - MR, H - MT - MB);
    let px = |x: f64| ML + x / xmax * pw;
    let py = |y: f64| MT + ph - y / ymax * ph;
    axes(&mut s, xmax, xs, ymax, ys, &px, &py, pw, ph, xlabel, ylabel, false);
    for se in series {
        if se.pts.is_empty() {
            continue;
        }
        let pts: Vec<String> =
            se.pts.iter().map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y))).collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\"{} points=\"{}\"/>",
            se.color,
            if se.dashed { " stroke-dasharray=\"5,3\"" } else { "" },
            pts.join(" ")
        );
    }
    legend(&mut s, series.iter().map(|x| (x.label.as_str(), x.color, x.dashed)));
    s + "</svg>"
}

#[allow(clippy::too_many_arguments)]
fn axes(
    s: &mut String,
    xmax: f64,
    xs: f64,
    ymax: f64,
    ys: f64,
    px: &dyn Fn(f64) -> f64,
    py: &dyn Fn(f64) -> f64,
    pw: f64,
    ph: f64,
    xlabel: &str,
    ylabel: &str,
    xlog: bool,
) {
    let _ = write!(s, "<rect x=\"{ML}\" y=\"{MT}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>");
    let mut y = 0.0;
    while y <= ymax + ys * 0.01 {
        let yy = py(y);
        let _ = write!(
            s,
            "<line x1=\"{ML}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            ML + pw,
            ML - 4.0,
            yy + 4.0,
            tick_label(y)
        );
        y += ys;
    }
    if xlog {
        // decades (x values are log10)
        let mut d = 0.0;
        while d <= xmax + 1e-9 {
            let xx = px(d);
            let lab = match d as i32 {
                0 => "1µs".to_string(),
                1 => "10µs".into(),
                2 => "100µs".into(),
                3 => "1ms".into(),
                4 => "10ms".into(),
                5 => "100ms".into(),
                6 => "1s".into(),
                7 => "10s".into(),
                n => format!("1e{n}µs"),
            };
            let _ = write!(
                s,
                "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{MT}\" y2=\"{:.1}\" stroke=\"#eee\"/><text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{lab}</text>",
                MT + ph,
                MT + ph + 14.0
            );
            d += 1.0;
        }
    } else {
        let mut x = 0.0;
        while x <= xmax + xs * 0.01 {
            let xx = px(x);
            let _ = write!(
                s,
                "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{MT}\" y2=\"{:.1}\" stroke=\"#eee\"/><text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                MT + ph,
                MT + ph + 14.0,
                tick_label(x)
            );
            x += xs;
        }
    }
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text><text transform=\"translate(14,{:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        ML + pw / 2.0,
        MT + ph + 32.0,
        esc(xlabel),
        MT + ph / 2.0,
        esc(ylabel)
    );
}

fn legend<'a>(s: &mut String, items: impl Iterator<Item = (&'a str, &'a str, bool)>) {
    let mut seen: Vec<String> = Vec::new();
    let mut y = MT + 12.0;
    for (label, color, dashed) in items {
        if seen.iter().any(|x| x == label) {
            continue;
        }
        seen.push(label.to_string());
        let x = W - MR - 170.0;
        let _ = write!(
            s,
            "<line x1=\"{x}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"{color}\" stroke-width=\"2.5\"{}/><text x=\"{}\" y=\"{}\">{}</text>",
            x + 22.0,
            if dashed { " stroke-dasharray=\"5,3\"" } else { "" },
            x + 28.0,
            y + 4.0,
            esc(label)
        );
        y += 15.0;
    }
}

/// A histogram with log-x bins, y = % of faults, with percentile markers.
pub fn svg_histogram(id: &str, title: &str, h: &Histogram, color: &str) -> String {
    let mut s = svg_open(id, title, H);
    let total = h.total.max(1) as f64;
    let pct: Vec<f64> = h.counts.iter().map(|c| *c as f64 * 100.0 / total).collect();
    let ymax0 = pct.iter().copied().fold(0.0, f64::max).max(1.0);
    let ys = nice_step(ymax0, 5);
    let ymax = (ymax0 / ys).ceil() * ys;
    let xmax = 7.0; // 1 µs .. 10 s in log10(µs)
    let (pw, ph) = (W - ML - MR, H - MT - MB);
    let px = |x: f64| ML + x / xmax * pw;
    let py = |y: f64| MT + ph - y / ymax * ph;
    axes(
        &mut s,
        xmax,
        1.0,
        ymax,
        ys,
        &px,
        &py,
        pw,
        ph,
        "fault latency (log scale)",
        "% of faults",
        true,
    );
    for (i, p) in pct.iter().enumerate() {
        if *p <= 0.0 {
            continue;
        }
        let (a, b) = (h.edges_us[i].log10(), h.edges_us[i + 1].log10());
        let (x0, x1) = (px(a), px(b));
        let _ = write!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\" fill-opacity=\"0.75\"><title>{}–{} µs: {} faults ({:.1}%)</title></rect>",
            x0 + 0.5,
            py(*p),
            (x1 - x0 - 1.0).max(0.5),
            MT + ph - py(*p),
            tick_label(h.edges_us[i].round()),
            tick_label(h.edges_us[i + 1].round()),
            h.counts[i],
            p
        );
    }
    if h.total > 0 {
        let pc = &h.percentiles;
        for (lab, v) in [("p50", pc.p50), ("p99", pc.p99), ("max", pc.max)] {
            let x = px((v.max(1) as f64).log10().min(xmax));
            let _ = write!(
                s,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{MT}\" y2=\"{:.1}\" stroke=\"#222\" stroke-dasharray=\"3,3\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{lab} {v} µs</text>",
                MT + ph,
                x + 3.0,
                MT + 12.0 + if lab == "p99" { 12.0 } else if lab == "max" { 24.0 } else { 0.0 }
            );
        }
    } else {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">no per-fault data</text>",
            ML + pw / 2.0,
            MT + ph / 2.0
        );
    }
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"18\" text-anchor=\"end\">{} faults</text>",
        W - MR,
        h.total
    );
    s + "</svg>"
}

/// Horizontal bars.
pub fn svg_hbars(id: &str, title: &str, unit: &str, bars: &[(String, f64, &str)]) -> String {
    let row = 26.0;
    let h = MT + bars.len() as f64 * row + 40.0;
    let mut s = svg_open(id, title, h);
    let lw = 250.0;
    let pw = W - lw - MR - 60.0;
    let vmax = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-9);
    for (i, (label, v, color)) in bars.iter().enumerate() {
        let y = MT + i as f64 * row;
        let w = v / vmax * pw;
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><rect x=\"{lw}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\">{} {}</text>",
            lw - 6.0,
            y + row * 0.6,
            esc(label),
            y + 3.0,
            row - 8.0,
            lw + w + 4.0,
            y + row * 0.6,
            fmt_num(*v),
            esc(unit)
        );
    }
    s + "</svg>"
}

/// Stacked horizontal bars (phases), one row per run.
pub fn svg_stacked(
    id: &str,
    title: &str,
    rows: &[(String, Vec<f64>)],
    phases: &[(&str, &str)],
) -> String {
    let row = 22.0;
    let h = MT + rows.len() as f64 * row + 60.0;
    let mut s = svg_open(id, title, h);
    let lw = 190.0;
    let pw = W - lw - MR - 60.0;
    let vmax = rows.iter().map(|r| r.1.iter().sum::<f64>()).fold(0.0, f64::max).max(1e-9);
    for (i, (label, vals)) in rows.iter().enumerate() {
        let y = MT + i as f64 * row;
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            lw - 6.0,
            y + row * 0.6,
            esc(label)
        );
        let mut x = lw;
        for (j, v) in vals.iter().enumerate() {
            let w = v / vmax * pw;
            let _ = write!(
                s,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {} ms</title></rect>",
                y + 3.0,
                row - 6.0,
                phases[j].1,
                esc(phases[j].0),
                fmt_num(*v)
            );
            x += w;
        }
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\">{} ms</text>",
            x + 4.0,
            y + row * 0.6,
            fmt_num(vals.iter().sum())
        );
    }
    let mut x = ML;
    let y = MT + rows.len() as f64 * row + 24.0;
    for (name, color) in phases {
        let _ = write!(s, "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{y:.1}\">{}</text>", y - 9.0, x + 14.0, esc(name));
        x += 14.0 + name.chars().count() as f64 * 6.2 + 14.0;
    }
    s + "</svg>"
}

#[cfg(test)]
mod tests {
    use super::super::metrics::histogram;
    use super::*;

    #[test]
    fn svg_is_well_formed_enough() {
        let s = svg_lines(
            "x",
            "t<",
            "x",
            "y",
            &[Series {
                label: "a".into(),
                color: RUST_COLOR,
                dashed: false,
                pts: vec![(0.0, 0.0), (1.0, 5.0)],
            }],
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>") && s.contains("t&lt;"));
        let h = svg_histogram("h", "t", &histogram(&[10, 20, 3000]), QEMU_COLOR);
        assert!(h.contains("<rect") && h.contains("p99"));
    }
}
