//! The completion-time CDF of every scenario, drawn as a PNG.

use plotters::prelude::*;
use std::path::Path;

use super::report::BenchReport;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a system font for labels (plotters draws text with ab_glyph).
fn register_font() -> anyhow::Result<()> {
    let path = FONT_PATHS
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| {
            anyhow::anyhow!("no DejaVuSans.ttf found (apt-get install fonts-dejavu-core)")
        })?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{path} is not a usable font"))?;
    Ok(())
}

pub fn cdf_png(report: &BenchReport, out: &Path) -> anyhow::Result<()> {
    register_font()?;
    let root = BitMapBackend::new(out, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_x = report.scenarios.iter().map(|s| s.max_s).fold(1.0, f64::max) * 1.05;
    let t_star = report.scenarios.first().map(|s| s.t_star_s).unwrap_or(0.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Completion time CDF: {} hosts, {} x {} MiB, {} Mbit/s links",
                report.hosts, report.layers, report.layer_mib, report.node_mbit
            ),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..max_x, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the host's pull started (its wave's start in d and e)")
        .y_desc("share of hosts done")
        .label_style(("sans-serif", 15))
        .draw()?;
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (i, s) in report.scenarios.iter().enumerate() {
        let mut times: Vec<f64> = s.hosts.iter().filter(|h| h.ok).map(|h| h.seconds).collect();
        times.sort_by(f64::total_cmp);
        let n = s.hosts.len().max(1) as f64;
        let mut points = vec![(0.0, 0.0)];
        for (k, t) in times.iter().enumerate() {
            points.push((*t, k as f64 / n));
            points.push((*t, (k + 1) as f64 / n));
        }
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(3)))?
            .label(format!("{}. {}", s.key, s.title))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    if t_star > 0.0 {
        chart
            .draw_series(LineSeries::new(
                vec![(t_star, 0.0), (t_star, 1.0)],
                BLACK.stroke_width(2),
            ))?
            .label("T* (physical limit)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// One line of a plot: label, points, colour, width.
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    width: u32,
}

/// Link rates over one scenario: what the origin sent, what the seed sent
/// and received, and what each node received; the origin's uplink is the
/// one every byte crosses once, so its gaps are time lost against T*.
pub fn links_png(
    report: &BenchReport,
    scenario: &super::report::ScenarioReport,
    out: &Path,
) -> anyhow::Result<()> {
    let Some(links) = &scenario.links else {
        anyhow::bail!("scenario {} has no link timeline", scenario.key);
    };
    register_font()?;
    let root = BitMapBackend::new(out, (1100, 650)).into_drawing_area();
    root.fill(&WHITE)?;
    let samples = links
        .hosts
        .iter()
        .map(|h| h.received_mbit.len())
        .max()
        .unwrap_or(0);
    let max_x = (samples as f64 * links.interval_s).max(1.0);
    let max_y = links
        .hosts
        .iter()
        .flat_map(|h| h.received_mbit.iter().chain(&h.sent_mbit))
        .fold(report.node_mbit as f64, |a, &b| a.max(b))
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Link rates, {}. {} ({} hosts, T* {:.1} s)",
                scenario.key, scenario.title, report.hosts, scenario.t_star_s
            ),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the scenario started")
        .y_desc("Mbit/s")
        .label_style(("sans-serif", 15))
        .draw()?;
    let series = |values: &[f64]| -> Vec<(f64, f64)> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| ((i as f64 + 0.5) * links.interval_s, *v))
            .collect()
    };
    let line = |label: &str, values: &[f64], color: RGBColor, width: u32| Line {
        label: label.to_string(),
        points: series(values),
        color,
        width,
    };
    let mut lines = Vec::new();
    if let Some(origin) = links.host("origin") {
        lines.push(line("origin sent", &origin.sent_mbit, BLACK, 3));
    }
    if let Some(seed) = links.host("seed") {
        lines.push(line("seed received", &seed.received_mbit, RED, 2));
        lines.push(line("seed sent", &seed.sent_mbit, MAGENTA, 2));
    }
    let node_colors = [
        BLUE,
        GREEN,
        CYAN,
        RGBColor(255, 140, 0),
        RGBColor(128, 0, 128),
    ];
    for (i, node) in links
        .hosts
        .iter()
        .filter(|h| h.host.starts_with('n'))
        .enumerate()
    {
        let color = node_colors[i % node_colors.len()];
        lines.push(line(
            &format!("{} received", node.host),
            &node.received_mbit,
            color,
            1,
        ));
    }
    for Line {
        label,
        points,
        color,
        width,
    } in lines
    {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(width)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
            });
    }
    // T* counted from the origin's first byte: before it the swarm starts.
    let start = links
        .host("origin")
        .and_then(|o| super::links::busy(&o.sent_mbit, links.interval_s, report.origin_mbit as f64))
        .map(|b| b.first_s)
        .unwrap_or(0.0);
    let t_star = start + scenario.t_star_s;
    chart.draw_series(LineSeries::new(
        vec![(t_star, 0.0), (t_star, max_y)],
        BLACK.stroke_width(1),
    ))?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}
