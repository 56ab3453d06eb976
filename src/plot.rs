//! Line charts as standalone SVG files: axes with round-number ticks, optional log-scale y,
//! a legend, thin and thick and dashed lines. Enough for loss curves and per-layer profiles,
//! and opens in any browser. Written here rather than with plotters: its PNG backend needs a
//! system font stack (font-kit, fontconfig, freetype) to draw any text.

use std::fmt::Write;

const WIDTH: f64 = 980.0;
const HEIGHT: f64 = 500.0;
const LEFT: f64 = 75.0;
const RIGHT: f64 = 330.0;
const TOP: f64 = 45.0;
const BOTTOM: f64 = 60.0;

/// Distinct colours for groups (Tableau 10).
pub const PALETTE: [&str; 10] =
    ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

#[derive(Debug, Clone)]
pub struct Series {
    /// Shown in the legend when set.
    pub label: Option<String>,
    pub color: String,
    pub points: Vec<(f64, f64)>,
    pub width: f64,
    pub dashed: bool,
    pub opacity: f64,
}

impl Series {
    pub fn new(label: Option<String>, color: &str, points: Vec<(f64, f64)>) -> Self {
        Self { label, color: color.to_string(), points, width: 2.0, dashed: false, opacity: 1.0 }
    }
    pub fn thin(mut self) -> Self {
        self.width = 0.8;
        self.opacity = 0.45;
        self
    }
    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }
}

#[derive(Debug, Clone, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_y: bool,
    pub series: Vec<Series>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// About `count` round-number ticks covering [lo, hi].
fn ticks(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / count as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| span / s <= count as f64)
        .unwrap_or(magnitude * 10.0);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

fn format_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e4 || v.abs() < 1e-3 {
        format!("{v:.0e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The data ranges a chart maps onto its plot area (y in log10 units for a log scale).
struct Frame {
    x: (f64, f64),
    y: (f64, f64),
    log_y: bool,
}

const PLOT_W: f64 = WIDTH - LEFT - RIGHT;
const PLOT_H: f64 = HEIGHT - TOP - BOTTOM;

impl Frame {
    /// The ranges of `points` (widened when flat; y padded by 5 %).
    fn around(points: &[(f64, f64)], log_y: bool) -> Self {
        let fy = |y: f64| if log_y { y.log10() } else { y };
        let (mut x0, mut x1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (mut y0, mut y1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(fy(p.1)), b.max(fy(p.1))));
        if x1 - x0 < 1e-12 {
            x0 -= 0.5;
            x1 += 0.5;
        }
        if y1 - y0 < 1e-12 {
            y0 -= 0.5;
            y1 += 0.5;
        }
        let pad = (y1 - y0) * 0.05;
        Self { x: (x0, x1), y: (y0 - pad, y1 + pad), log_y }
    }
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x.0) / (self.x.1 - self.x.0) * PLOT_W
    }
    fn py(&self, y: f64) -> f64 {
        let y = if self.log_y { y.log10() } else { y };
        TOP + PLOT_H - (y - self.y.0) / (self.y.1 - self.y.0) * PLOT_H
    }
    fn y_ticks(&self) -> Vec<f64> {
        let (y0, y1) = self.y;
        if !self.log_y {
            return ticks(y0, y1, 7);
        }
        let (lo, hi) = (y0.floor() as i32, y1.ceil() as i32);
        let mults: &[f64] = if hi - lo <= 2 { &[1.0, 2.0, 5.0] } else { &[1.0] };
        (lo..=hi)
            .flat_map(|e| mults.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| v.log10() >= y0 && v.log10() <= y1)
            .collect()
    }
}

impl Chart {
    fn finite(&self, &(x, y): &(f64, f64)) -> bool {
        x.is_finite() && y.is_finite() && (!self.log_y || y > 0.0)
    }

    pub fn to_svg(&self) -> String {
        let all: Vec<(f64, f64)> =
            self.series.iter().flat_map(|s| s.points.iter().copied().filter(|p| self.finite(p))).collect();
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="25" text-anchor="middle" font-size="15">{}</text>"#,
            LEFT + PLOT_W / 2.0,
            escape(&self.title)
        );
        if all.is_empty() {
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="middle">no data</text></svg>"#,
                WIDTH / 2.0,
                HEIGHT / 2.0
            );
            return svg;
        }
        let frame = Frame::around(&all, self.log_y);
        self.axes(&frame, &mut svg);
        self.lines(&frame, &mut svg);
        self.legend(&mut svg);
        svg.push_str("</svg>\n");
        svg
    }

    /// Grid, ticks, the plot box and the axis labels.
    fn axes(&self, frame: &Frame, svg: &mut String) {
        for t in ticks(frame.x.0, frame.x.1, 8) {
            let x = frame.px(t);
            let _ =
                writeln!(svg, r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/>"##, TOP + PLOT_H);
            let _ = writeln!(
                svg,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                TOP + PLOT_H + 16.0,
                format_tick(t)
            );
        }
        for t in frame.y_ticks() {
            let y = frame.py(t);
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/>"##,
                LEFT + PLOT_W
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                y + 4.0,
                format_tick(t)
            );
        }
        let (pw, ph) = (PLOT_W, PLOT_H);
        let _ = writeln!(svg, r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##);
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + PLOT_W / 2.0,
            HEIGHT - 18.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            svg,
            r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
            TOP + PLOT_H / 2.0,
            TOP + PLOT_H / 2.0,
            escape(&format!("{}{}", self.y_label, if self.log_y { " (log)" } else { "" }))
        );
    }

    /// The series (thin ones first, so the means sit on top); a lone point is a dot.
    fn lines(&self, frame: &Frame, svg: &mut String) {
        let mut order: Vec<&Series> = self.series.iter().collect();
        order.sort_by(|a, b| a.width.total_cmp(&b.width));
        for s in order {
            let coords: Vec<(f64, f64)> =
                s.points.iter().filter(|p| self.finite(p)).map(|&(x, y)| (frame.px(x), frame.py(y))).collect();
            let points: Vec<String> = coords.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            if points.is_empty() {
                continue;
            }
            let dash = if s.dashed { r#" stroke-dasharray="6 4""# } else { "" };
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-width="{}" stroke-opacity="{}"{dash} points="{}"/>"#,
                s.color,
                s.width,
                s.opacity,
                points.join(" ")
            );
            if let [(x, y)] = coords[..] {
                let _ = writeln!(svg, r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{}"/>"#, s.color);
            }
        }
    }

    /// One line and label per labelled series, right of the plot.
    fn legend(&self, svg: &mut String) {
        let mut y = TOP + 10.0;
        for s in self.series.iter().filter(|s| s.label.is_some()) {
            let x = LEFT + PLOT_W + 15.0;
            let dash = if s.dashed { r#" stroke-dasharray="6 4""# } else { "" };
            let _ = writeln!(
                svg,
                r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="{}"{dash}/>"#,
                x + 24.0,
                s.color,
                s.width.max(2.0)
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                x + 30.0,
                y + 4.0,
                escape(s.label.as_deref().unwrap_or_default())
            );
            y += 18.0;
        }
    }

    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        crate::fsutil::write_atomic(path, self.to_svg().as_bytes())
    }
}
