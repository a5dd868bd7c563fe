//! Draws the benchmark report's chart: req/s of every load row over HTTP/1.1 and HTTP/2, and
//! the proxies' resident memory, from the rows `load.sh` appends to `RESULTS_TSV`.
//!
//!     bench-chart RESULTS.tsv OUT.png [FONT.ttf]
//!
//! Each TSV line is `loadgen row req/s latency latency rss_mb errors` (`-` where a row has no
//! value). The font defaults to Debian's DejaVu Sans (package fonts-dejavu-core).

use std::path::Path;

use anyhow::{Context, Result, bail};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const DIRECT: RGBColor = RGBColor(140, 140, 140);
const SLUICE: RGBColor = RGBColor(31, 119, 180);
const ENVOY: RGBColor = RGBColor(230, 126, 34);

/// One measured row of one load generator.
struct Measured {
    loadgen: String,
    row: String,
    rps: Option<f64>,
    rss_mb: Option<f64>,
}

/// One panel: a bar per row, in the order the rows ran.
struct Panel {
    title: String,
    unit: &'static str,
    bars: Vec<(String, f64)>,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (tsv, out) = match args.as_slice() {
        [tsv, out] | [tsv, out, _] => (tsv, out),
        _ => bail!("usage: bench-chart RESULTS.tsv OUT.png [FONT.ttf]"),
    };
    let font = args.get(2).map_or(DEFAULT_FONT, String::as_str);
    let text = std::fs::read_to_string(tsv).with_context(|| format!("reading {tsv}"))?;
    let measured = parse(&text).with_context(|| tsv.clone())?;
    let panels = panels(&measured);
    if panels.is_empty() {
        bail!("{tsv}: no row has a req/s value");
    }
    register_font(font)?;
    draw(Path::new(out), &panels).with_context(|| format!("drawing {out}"))
}

fn parse(text: &str) -> Result<Vec<Measured>> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            let fields: Vec<&str> = line.split('\t').collect();
            let [loadgen, row, rps, _, _, rss, _] = fields.as_slice() else {
                bail!(
                    "line {}: expected 7 tab-separated fields, got {}",
                    index + 1,
                    fields.len()
                );
            };
            Ok(Measured {
                loadgen: (*loadgen).to_owned(),
                row: (*row).to_owned(),
                rps: rps.parse().ok(),
                rss_mb: rss.parse().ok(),
            })
        })
        .collect()
}

fn panels(measured: &[Measured]) -> Vec<Panel> {
    let mut panels = Vec::new();
    for (loadgen, title) in [
        ("wrk", "HTTP/1.1 (wrk): req/s, higher is better"),
        ("h2load", "HTTP/2 (h2load): req/s, higher is better"),
    ] {
        let bars: Vec<(String, f64)> = measured
            .iter()
            .filter(|m| m.loadgen == loadgen)
            .filter_map(|m| Some((m.row.clone(), m.rps?)))
            .collect();
        if !bars.is_empty() {
            panels.push(Panel {
                title: title.to_owned(),
                unit: "req/s",
                bars,
            });
        }
    }
    // Memory is the proxy's own, so the first load generator's rows say it (direct has none).
    let first = measured.first().map(|m| m.loadgen.clone());
    let bars: Vec<(String, f64)> = measured
        .iter()
        .filter(|m| Some(&m.loadgen) == first.as_ref())
        .filter_map(|m| Some((m.row.clone(), m.rss_mb?)))
        .collect();
    if !bars.is_empty() {
        panels.push(Panel {
            title: "Resident memory after the run: MB, lower is better".to_owned(),
            unit: "MB",
            bars,
        });
    }
    panels
}

fn register_font(path: &str) -> Result<()> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading the chart font {path} (Debian: fonts-dejavu-core)"))?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Vec::leak(bytes);
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{path} is not a font plotters can read"))
}

fn color_of(row: &str) -> RGBColor {
    if row.starts_with("sluice") {
        SLUICE
    } else if row.starts_with("envoy") {
        ENVOY
    } else {
        DIRECT
    }
}

fn draw(out: &Path, panels: &[Panel]) -> Result<()> {
    let width = 720 * u32::try_from(panels.len())?;
    let root = BitMapBackend::new(out, (width, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((1, panels.len()));
    for (area, panel) in areas.iter().zip(panels) {
        draw_panel(area, panel)?;
    }
    root.present()?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<()> {
    let count = panel.bars.len();
    let top = panel.bars.iter().map(|(_, v)| *v).fold(0.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        // A segmented range has a segment for its end value too: 0..count-1 gives count bars.
        .build_cartesian_2d(
            (0..count.saturating_sub(1)).into_segmented(),
            0.0..top.max(1.0),
        )?;
    let names: Vec<&str> = panel.bars.iter().map(|(name, _)| name.as_str()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(count)
        .x_label_style(("sans-serif", 12).into_font())
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(index) => names
                .get(*index)
                .map_or_else(String::new, |n| (*n).to_owned()),
            _ => String::new(),
        })
        .y_desc(panel.unit)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    chart.draw_series(panel.bars.iter().enumerate().map(|(index, (row, value))| {
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(index), 0.0),
                (SegmentValue::Exact(index + 1), *value),
            ],
            color_of(row).filled(),
        );
        bar.set_margin(0, 0, 6, 6);
        bar
    }))?;
    let label =
        TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series(panel.bars.iter().enumerate().map(|(index, (_, value))| {
        let text = if *value >= 100.0 {
            format!("{value:.0}")
        } else {
            format!("{value:.1}")
        };
        Text::new(text, (SegmentValue::CenterOf(index), *value), label.clone())
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TSV: &str = "wrk\tdirect\t70000\t0.6\t0.9\t-\t0\n\
                       wrk\tsluice\t58000\t0.8\t1.1\t13.2\t0\n\
                       h2load\tsluice\t61000\t1.6\t6.5\t17.1\t0\n\
                       h2load\tenvoy\t-\t-\t-\t-\t0\n";

    #[test]
    fn rows_become_panels_per_load_generator_and_memory() {
        let panels = panels(&parse(TSV).unwrap());
        let summary: Vec<(&str, Vec<&str>)> = panels
            .iter()
            .map(|p| (p.unit, p.bars.iter().map(|(row, _)| row.as_str()).collect()))
            .collect();
        assert_eq!(
            summary,
            [
                ("req/s", vec!["direct", "sluice"]),
                ("req/s", vec!["sluice"]),
                ("MB", vec!["sluice"]),
            ]
        );
    }

    #[test]
    fn a_short_line_is_an_error_naming_it() {
        let error = parse("wrk\tdirect\t1\n").err().unwrap();
        assert!(error.to_string().contains("line 1"), "{error}");
    }

    #[test]
    fn the_chart_is_a_png() {
        // .ci/run installs the font (fonts-dejavu-core) when it is missing.
        register_font(DEFAULT_FONT).unwrap();
        let out = std::env::temp_dir().join(format!("bench-chart-{}.png", std::process::id()));
        draw(&out, &panels(&parse(TSV).unwrap())).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    }
}
