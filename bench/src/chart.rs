//! The fan-out matrix against the baseline as an SVG chart, drawn from the JSON lines the
//! benchmark prints: notifications per second, and CPU seconds per million notifications (the
//! process alone, and the process with the broker and Postgres), service beside script, for each
//! shape. Written by hand: a chart library's text layout needs a font library or a font file,
//! and a few bars with labels need neither.

use std::fmt::Write;

/// One panel: a title, and for each shape the bars' values in the order of `series`.
struct Panel<'a> {
    title: &'a str,
    series: &'a [(&'a str, &'a str)],
    values: Vec<Vec<f64>>,
}

const WIDTH: f64 = 1000.0;
const PANEL_HEIGHT: f64 = 300.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 60.0;

/// The chart, or `None` when no report has the baseline's figures.
pub fn draw(reports: &[serde_json::Value]) -> Option<String> {
    let with: Vec<&serde_json::Value> = reports
        .iter()
        .filter(|r| r.get("baseline_per_s").is_some())
        .collect();
    if with.is_empty() {
        return None;
    }
    let shapes: Vec<String> = with
        .iter()
        .map(|r| r["shape"].as_str().unwrap_or("?").to_string())
        .collect();
    let height = TOP + 2.0 * (PANEL_HEIGHT + 90.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="28" font-size="16" text-anchor="middle">campaign-notifier against a plain Python pipeline, same broker, Postgres and workload</text>"#,
        WIDTH / 2.0
    );
    for (i, panel) in [rates(&with), cpu(&with)].iter().enumerate() {
        let top = TOP + i as f64 * (PANEL_HEIGHT + 90.0);
        draw_panel(&mut svg, panel, &shapes, top);
    }
    svg.push_str("</svg>\n");
    Some(svg)
}

/// The number at `path` in a report, 0 where there is none.
fn number(r: &serde_json::Value, path: &[&str]) -> f64 {
    path.iter()
        .try_fold(r, |v, k| v.get(k))
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0)
}

/// Notifications per second, service beside script.
fn rates(with: &[&serde_json::Value]) -> Panel<'static> {
    Panel {
        title: "notifications per second (higher is better)",
        series: &[("service", "#1f77b4"), ("plain Python pipeline", "#ff7f0e")],
        values: with
            .iter()
            .map(|r| {
                vec![
                    number(r, &["d_pipeline_per_s"]),
                    number(r, &["baseline_per_s"]),
                ]
            })
            .collect(),
    }
}

/// CPU seconds per million notifications: each process alone, and with the broker and Postgres.
fn cpu(with: &[&serde_json::Value]) -> Panel<'static> {
    Panel {
        title: "CPU seconds per million notifications (lower is better)",
        series: &[
            ("service", "#1f77b4"),
            ("plain Python pipeline", "#ff7f0e"),
            ("service + broker + Postgres", "#aec7e8"),
            ("Python + broker + Postgres", "#ffbb78"),
        ],
        values: with
            .iter()
            .map(|r| {
                vec![
                    number(r, &["service_cpu_seconds_per_million"]),
                    number(r, &["baseline_cpu_seconds_per_million", "script"]),
                    number(r, &["system_cpu_seconds_per_million", "service"]),
                    number(r, &["system_cpu_seconds_per_million", "baseline"]),
                ]
            })
            .collect(),
    }
}

/// Where a panel's plot sits, and the height of a value in it.
struct Frame {
    bottom: f64,
    scale_max: f64,
    plot_w: f64,
}

impl Frame {
    fn y(&self, v: f64) -> f64 {
        self.bottom - v / self.scale_max * (PANEL_HEIGHT - 30.0)
    }
}

/// One panel with its top at `top`: title, scale, a group of bars per shape, legend.
fn draw_panel(svg: &mut String, panel: &Panel<'_>, shapes: &[String], top: f64) {
    let max = panel
        .values
        .iter()
        .flatten()
        .fold(0.0_f64, |m, v| m.max(*v));
    let frame = Frame {
        bottom: top + PANEL_HEIGHT,
        scale_max: nice_ceiling(max),
        plot_w: WIDTH - LEFT - 20.0,
    };
    let _ = write!(
        svg,
        r#"<text x="{LEFT}" y="{}" font-size="14">{}</text>"#,
        top + 10.0,
        panel.title
    );
    draw_scale(svg, &frame);
    draw_bars(svg, panel, shapes, &frame);
    draw_legend(svg, panel, frame.bottom);
}

/// Five grid lines, from 0 to the top of the scale, each with its value.
fn draw_scale(svg: &mut String, frame: &Frame) {
    for k in 0..=4 {
        let v = frame.scale_max * f64::from(k) / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{right}" y1="{at:.1}" y2="{at:.1}" stroke="#ddd"/><text x="{label_x}" y="{label_y:.1}" text-anchor="end">{label}</text>"##,
            right = LEFT + frame.plot_w,
            at = frame.y(v),
            label_x = LEFT - 6.0,
            label_y = frame.y(v) + 4.0,
            label = short(v)
        );
    }
}

/// For each shape, a bar per series with its value above it, and the shape's name below.
fn draw_bars(svg: &mut String, panel: &Panel<'_>, shapes: &[String], frame: &Frame) {
    let group_w = frame.plot_w / shapes.len().max(1) as f64;
    let bar_w = (group_w * 0.8) / panel.series.len() as f64;
    for (s, (shape, values)) in shapes.iter().zip(&panel.values).enumerate() {
        let x0 = LEFT + s as f64 * group_w + group_w * 0.1;
        for (b, (value, (_, colour))) in values.iter().zip(panel.series).enumerate() {
            let x = x0 + b as f64 * bar_w;
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                frame.y(*value),
                bar_w - 2.0,
                frame.bottom - frame.y(*value),
                x + bar_w / 2.0 - 1.0,
                frame.y(*value) - 3.0,
                short(*value)
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{shape}</text>"#,
            x0 + group_w * 0.4,
            frame.bottom + 16.0
        );
    }
}

/// A coloured square and the name of each series, in a row below the panel.
fn draw_legend(svg: &mut String, panel: &Panel<'_>, bottom: f64) {
    let mut x = LEFT;
    for (name, colour) in panel.series {
        let _ = write!(
            svg,
            r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{colour}"/><text x="{:.1}" y="{:.1}">{name}</text>"#,
            bottom + 30.0,
            x + 16.0,
            bottom + 40.0
        );
        x += 30.0 + 7.0 * name.len() as f64;
    }
}

/// The smallest round number (1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten) at or
/// above `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let power = 10f64.powf(v.log10().floor());
    [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * power)
}

/// A value as a short label: 52 839 -> "52.8k", 5.92 -> "5.9".
fn short(v: f64) -> String {
    match v {
        v if v >= 10_000.0 => format!("{:.1}k", v / 1000.0),
        v if v >= 100.0 => format!("{v:.0}"),
        v => format!("{v:.1}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(52_839.0), 60_000.0);
        assert_eq!(nice_ceiling(38.5), 40.0);
        assert_eq!(nice_ceiling(2.3), 2.5);
        assert_eq!(nice_ceiling(0.0), 1.0);
    }

    #[test]
    fn a_chart_has_a_bar_per_figure_and_none_without_the_baseline() {
        let with = serde_json::json!({
            "shape": "fanout 1", "d_pipeline_per_s": 20000.0, "baseline_per_s": 11000.0,
            "service_cpu_seconds_per_million": 4.0,
            "baseline_cpu_seconds_per_million": {"script": 22.7},
            "system_cpu_seconds_per_million": {"service": 60.0, "baseline": 90.0},
        });
        let svg = draw(&[with.clone(), with]).expect("a chart");
        // Two shapes: 2 rate bars and 4 CPU bars each, plus 6 legend squares and the background.
        assert_eq!(svg.matches("<rect").count(), 2 * (2 + 4) + 6 + 1);
        assert!(svg.contains(">22.7<") && svg.contains(">20.0k<"), "{svg}");
        assert!(draw(&[serde_json::json!({"shape": "fanout 1"})]).is_none());
    }
}
