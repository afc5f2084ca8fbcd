//! Line charts of training runs: reads each run's `metrics.jsonl` and draws one line per
//! (run, metric) against a chosen x field, written as both PNG and SVG.
//!
//! Text is drawn with DejaVu Sans compiled into the binary (`assets/DejaVuSans.ttf`, licence in
//! `assets/DejaVuSans-LICENSE.txt`), so charts render on a bare machine with no system fonts,
//! fontconfig or freetype.

use crate::error::{Error, Result};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// What to draw: every metric of every run against one x field.
#[derive(Debug, Clone)]
pub struct PlotRequest {
    /// Run folders (`runs/NAME/`, holding `metrics.jsonl`) or `metrics.jsonl` files themselves.
    pub runs: Vec<PathBuf>,
    /// y fields, e.g. `["loss"]` or `["eval/maj@1", "eval/pass@16"]`.
    pub metrics: Vec<String>,
    /// x field: `step`, `samples_seen`, `tokens_seen` or any other numeric field.
    pub x: String,
    /// Output path without extension: `OUT.png` and `OUT.svg` are written.
    pub out: PathBuf,
    /// Chart title; defaults to "METRICS vs X".
    pub title: Option<String>,
    /// Logarithmic y axis (points with y <= 0 are left out).
    pub log_y: bool,
}

/// PNG size in pixels (the SVG has the same size in user units).
pub const SIZE: (u32, u32) = (900, 560);

const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Line colours (matplotlib's "tab10").
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Registers the embedded font under the family names plotters asks for (once per process).
fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for family in ["sans-serif", "serif", "monospace"] {
            // The bytes are a valid TrueType font compiled in; failure here is a build defect.
            if plotters::style::register_font(family, FontStyle::Normal, FONT_BYTES).is_err() {
                panic!("embedded font assets/DejaVuSans.ttf is not a valid font");
            }
        }
    });
}

/// Reads a `metrics.jsonl` into rows of (field -> value). Numeric fields only: null, strings,
/// booleans, arrays and objects are skipped; blank lines are ignored.
pub fn read_metrics(path: &Path) -> Result<Vec<BTreeMap<String, f64>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| Error::line(path, i + 1, format!("malformed JSON: {e}")))?;
        let serde_json::Value::Object(obj) = value else {
            return Err(Error::line(path, i + 1, "expected a JSON object"));
        };
        let row: BTreeMap<String, f64> =
            obj.into_iter().filter_map(|(k, v)| v.as_f64().filter(|x| x.is_finite()).map(|x| (k, x))).collect();
        rows.push(row);
    }
    Ok(rows)
}

/// A run's display name and its metrics file.
fn run_files(run: &Path) -> (String, PathBuf) {
    let (dir, file) = if run.is_file() {
        (run.parent().unwrap_or(Path::new(".")), run.to_path_buf())
    } else {
        (run, run.join("metrics.jsonl"))
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .or_else(|| dir.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())))
        .unwrap_or_else(|| dir.display().to_string());
    (name, file)
}

/// One line of the chart.
struct Series {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
    /// (x, lo, hi): the 95% interval, where the run logs `METRIC_lo` and `METRIC_hi`.
    band: Vec<(f64, f64, f64)>,
}

/// Everything the renderer needs, backend-independent.
struct Chart {
    title: String,
    x_desc: String,
    y_desc: String,
    series: Vec<Series>,
    x_range: (f64, f64),
    y_range: (f64, f64),
    log_y: bool,
}

/// `OUT` + `.ext`, keeping any dots already in the file name.
fn with_suffix(out: &Path, ext: &str) -> PathBuf {
    let mut s: OsString = out.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// Draws the chart described by `req` and writes `OUT.png` and `OUT.svg` atomically.
/// Returns the written paths (PNG first).
pub fn plot(req: &PlotRequest) -> Result<Vec<PathBuf>> {
    let chart = build_chart(req)?;
    register_fonts();

    let png = with_suffix(&req.out, "png");
    let svg = with_suffix(&req.out, "svg");
    // PNG: plotters saves the file itself (format from the extension), so it renders into a
    // temp `.png` beside the target, which is then renamed into place.
    crate::fsutil::write_atomic_via_path(&png, |tmp| {
        let root = BitMapBackend::new(tmp, SIZE).into_drawing_area();
        render(&root, &chart).map_err(|e| Error::file(&png, format!("rendering PNG: {e}")))?;
        root.present().map_err(|e| Error::file(&png, format!("writing PNG: {e}")))
    })?;

    // SVG: render into a string, then write it the same way.
    let mut svg_text = String::new();
    {
        let root = SVGBackend::with_string(&mut svg_text, SIZE).into_drawing_area();
        render(&root, &chart).map_err(|e| Error::file(&svg, format!("rendering SVG: {e}")))?;
        root.present().map_err(|e| Error::file(&svg, format!("rendering SVG: {e}")))?;
    }
    crate::fsutil::write_atomic(&svg, |w| w.write_all(svg_text.as_bytes()))?;

    Ok(vec![png, svg])
}

/// Reads the runs and collects the series, checking that every requested metric has points.
fn build_chart(req: &PlotRequest) -> Result<Chart> {
    if req.runs.is_empty() {
        return Err(Error::Invalid("plot: no runs given".into()));
    }
    if req.metrics.is_empty() {
        return Err(Error::Invalid("plot: no metrics given".into()));
    }
    let runs: Vec<(String, Vec<BTreeMap<String, f64>>)> = req
        .runs
        .iter()
        .map(|run| {
            let (name, file) = run_files(run);
            read_metrics(&file).map(|rows| (name, rows))
        })
        .collect::<Result<_>>()?;
    let run_names = || runs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");

    let mut series = Vec::new();
    for metric in &req.metrics {
        let before = series.len();
        for (name, rows) in &runs {
            let mut points: Vec<(f64, f64)> = rows
                .iter()
                .filter_map(|row| Some((*row.get(&req.x)?, *row.get(metric)?)))
                .filter(|&(_, y)| !req.log_y || y > 0.0)
                .collect();
            if points.is_empty() {
                continue;
            }
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (lo, hi) = (format!("{metric}_lo"), format!("{metric}_hi"));
            let mut band: Vec<(f64, f64, f64)> = rows
                .iter()
                .filter_map(|row| Some((*row.get(&req.x)?, *row.get(&lo)?, *row.get(&hi)?)))
                .filter(|&(_, lo, _)| !req.log_y || lo > 0.0)
                .collect();
            band.sort_by(|a, b| a.0.total_cmp(&b.0));
            let color = COLORS[series.len() % COLORS.len()];
            series.push(Series { label: format!("{name} {metric}"), color, points, band });
        }
        if series.len() == before {
            let why = if req.log_y { " (positive values, for the log y axis)" } else { "" };
            return Err(Error::Invalid(format!(
                "plot: no points for metric `{metric}` against x `{}`{why} in any run: {}",
                req.x,
                run_names()
            )));
        }
    }

    let band_ends = series.iter().flat_map(|s| s.band.iter().flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)]));
    let all = || series.iter().flat_map(|s| s.points.iter().copied()).chain(band_ends.clone());
    let (mut x0, mut x1) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if x1 <= x0 {
        let pad = if x0 == 0.0 { 1.0 } else { x0.abs() * 0.05 };
        (x0, x1) = (x0 - pad, x1 + pad);
    }
    if req.log_y {
        if y1 <= y0 {
            (y0, y1) = (y0 / 2.0, y1 * 2.0);
        } else {
            let f = (y1 / y0).powf(0.05);
            (y0, y1) = (y0 / f, y1 * f);
        }
    } else if y1 <= y0 {
        let pad = if y0 == 0.0 { 1.0 } else { y0.abs() * 0.05 };
        (y0, y1) = (y0 - pad, y1 + pad);
    } else {
        let pad = (y1 - y0) * 0.05;
        (y0, y1) = (y0 - pad, y1 + pad);
    }

    let y_desc = req.metrics.join(", ");
    Ok(Chart {
        title: req.title.clone().unwrap_or_else(|| format!("{y_desc} vs {}", req.x)),
        x_desc: req.x.clone(),
        y_desc: if req.log_y { format!("{y_desc} (log scale)") } else { y_desc },
        series,
        x_range: (x0, x1),
        y_range: (y0, y1),
        log_y: req.log_y,
    })
}

/// Tick labels for an axis whose values reach `max_abs`: one k/M/G/T suffix for the whole axis
/// (k from 10 000, M from 1 000 000, ...), otherwise plain numbers to 4 significant digits.
fn tick_format(max_abs: f64) -> impl Fn(&f64) -> String {
    let (scale, suffix) = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
        .into_iter()
        .find(|&(s, _)| max_abs >= if s == 1e3 { 1e4 } else { s })
        .unwrap_or((1.0, ""));
    move |&v: &f64| {
        if v == 0.0 {
            "0".into()
        } else if suffix.is_empty() && v.abs() < 1e-3 {
            format!("{v:.1e}")
        } else {
            format!("{}{suffix}", trim_num(v / scale))
        }
    }
}

/// A number to 4 significant digits without trailing zeros.
fn trim_num(v: f64) -> String {
    let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 8) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Where the legend goes: away from where the lines end.
fn legend_position(chart: &Chart) -> SeriesLabelPosition {
    let (y0, y1) = chart.y_range;
    let norm = |y: f64| if chart.log_y { (y / y0).ln() / (y1 / y0).ln() } else { (y - y0) / (y1 - y0) };
    let ends: Vec<f64> = chart.series.iter().filter_map(|s| s.points.last()).map(|p| norm(p.1)).collect();
    let mean = ends.iter().sum::<f64>() / ends.len().max(1) as f64;
    if mean > 0.5 {
        SeriesLabelPosition::LowerRight
    } else {
        SeriesLabelPosition::UpperRight
    }
}

/// Ticks for a log axis over `lo..hi` (both > 0): 1-2-5 per decade, thinned or filled in so that
/// there are a handful.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let ticks = |mantissas: &[f64]| {
        let mut out = Vec::new();
        for k in lo.log10().floor() as i32..=hi.log10().ceil() as i32 {
            for m in mantissas {
                let v = m * 10f64.powi(k);
                if v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9) {
                    out.push(v);
                }
            }
        }
        out
    };
    let mut best = ticks(&[1.0, 2.0, 5.0]);
    if best.len() > 12 {
        best = ticks(&[1.0]);
    } else if best.len() < 4 {
        best = ticks(&[1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    }
    best
}

type DrawResult<DB> = std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn render<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, chart: &Chart) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let (x0, x1) = chart.x_range;
    let (y0, y1) = chart.y_range;
    if chart.log_y {
        render_with(root, chart, x0..x1, (y0..y1).log_scale().with_key_points(log_ticks(y0, y1)))
    } else {
        render_with(root, chart, x0..x1, y0..y1)
    }
}

fn render_with<DB, YR>(root: &DrawingArea<DB, Shift>, chart: &Chart, x: std::ops::Range<f64>, y: YR) -> DrawResult<DB>
where
    DB: DrawingBackend,
    YR: AsRangedCoord<Value = f64>,
    YR::CoordDescType: ValueFormatter<f64>,
{
    let mut ctx = ChartBuilder::on(root)
        .caption(&chart.title, (FONT, 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x, y)?;

    let x_fmt = tick_format(chart.x_range.0.abs().max(chart.x_range.1.abs()));
    let y_fmt = tick_format(chart.y_range.0.abs().max(chart.y_range.1.abs()));
    ctx.configure_mesh()
        .x_desc(&chart.x_desc)
        .y_desc(&chart.y_desc)
        .axis_desc_style((FONT, 16))
        .label_style((FONT, 13))
        .x_labels(10)
        .y_labels(10)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(210, 210, 210))
        .draw()?;

    // 95% bands first, beneath every line, so a wiggle inside its band reads as noise.
    for s in chart.series.iter().filter(|s| s.band.len() > 1) {
        let outline: Vec<(f64, f64)> =
            s.band.iter().map(|&(x, _, hi)| (x, hi)).chain(s.band.iter().rev().map(|&(x, lo, _)| (x, lo))).collect();
        ctx.draw_series(std::iter::once(Polygon::new(outline, s.color.mix(0.15).filled())))?;
    }
    for s in chart.series.iter().filter(|s| s.band.len() == 1) {
        let (x, lo, hi) = s.band[0];
        ctx.draw_series(std::iter::once(PathElement::new(vec![(x, lo), (x, hi)], s.color.stroke_width(2))))?;
    }
    for s in &chart.series {
        let color = s.color;
        ctx.draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))?
            .label(&s.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        // Sparse series (evals) get markers so single points are visible.
        if s.points.len() <= 60 {
            ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
    }

    ctx.configure_series_labels()
        .position(legend_position(chart))
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .margin(10)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_run(root: &Path, name: &str, body: &str) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("metrics.jsonl"), body).unwrap();
        dir
    }

    fn sample(offset: f64) -> String {
        let mut s = String::new();
        for step in 0..40u32 {
            let loss = 2.5 * (-(step as f64) / 15.0).exp() + 0.3 + offset;
            s.push_str(&format!(
                "{{\"step\":{step},\"samples_seen\":{},\"tokens_seen\":{},\"loss\":{loss},\"lr\":0.0001,\"grad_norm\":null,\"phase\":\"train\"}}\n",
                step * 64,
                step * 64 * 512
            ));
            if step % 10 == 9 {
                let acc = 0.2 + step as f64 / 100.0 - offset;
                s.push_str(&format!(
                    "{{\"step\":{step},\"samples_seen\":{},\"eval/maj@1\":{acc},\"eval/pass@16\":{}}}\n",
                    step * 64,
                    acc + 0.25
                ));
            }
        }
        s
    }

    fn check_outputs(paths: &[PathBuf], legend: &str) {
        assert_eq!(paths.len(), 2);
        let png = std::fs::read(&paths[0]).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        assert!(png.len() > 5_000, "PNG suspiciously small: {} bytes", png.len());
        let svg = std::fs::read_to_string(&paths[1]).unwrap();
        assert!(svg.starts_with("<svg"), "not an SVG");
        assert!(svg.contains(legend), "SVG lacks legend {legend:?}");
        // No temp files left behind.
        let dir = paths[0].parent().unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    }

    #[test]
    fn reads_numeric_fields_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir =
            write_run(tmp.path(), "r", "{\"step\":1,\"loss\":0.5,\"x\":null,\"s\":\"a\",\"b\":true}\n\n{\"step\":2}\n");
        let rows = read_metrics(&dir.join("metrics.jsonl")).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].len(), 2);
        assert_eq!(rows[0]["loss"], 0.5);
        assert_eq!(rows[1]["step"], 2.0);
    }

    #[test]
    fn plots_loss_and_evals() {
        let tmp = tempfile::tempdir().unwrap();
        let a = write_run(tmp.path(), "sft_a", &sample(0.0));
        let b = write_run(tmp.path(), "ppo_b", &sample(0.1));
        let out_dir = tmp.path().join("plots");

        let req = PlotRequest {
            runs: vec![a.clone(), b.clone()],
            metrics: vec!["loss".into()],
            x: "step".into(),
            out: out_dir.join("loss"),
            title: Some("Training loss".into()),
            log_y: false,
        };
        let paths = plot(&req).unwrap();
        assert_eq!(paths, vec![out_dir.join("loss.png"), out_dir.join("loss.svg")]);
        check_outputs(&paths, "sft_a loss");
        check_outputs(&paths, "ppo_b loss");

        let req = PlotRequest {
            runs: vec![a.clone(), b.clone()],
            metrics: vec!["eval/maj@1".into(), "eval/pass@16".into()],
            x: "samples_seen".into(),
            out: out_dir.join("eval.v1"),
            title: None,
            log_y: false,
        };
        let paths = plot(&req).unwrap();
        assert_eq!(paths[0], out_dir.join("eval.v1.png"));
        check_outputs(&paths, "sft_a eval/maj@1");
        check_outputs(&paths, "ppo_b eval/pass@16");

        // Log y, and a run given as its metrics file; overwriting an existing chart works.
        let req = PlotRequest {
            runs: vec![a.join("metrics.jsonl"), b],
            metrics: vec!["loss".into()],
            x: "tokens_seen".into(),
            out: out_dir.join("loss"),
            title: None,
            log_y: true,
        };
        let paths = plot(&req).unwrap();
        check_outputs(&paths, "sft_a loss");
    }

    #[test]
    fn intervals_draw_a_band_that_the_axis_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let lines = [(0, 0.30, 0.25, 0.35), (100, 0.32, 0.20, 0.45), (200, 0.31, 0.27, 0.36)]
            .map(|(x, v, lo, hi)| format!("{{\"samples_seen\":{x},\"m\":{v},\"m_lo\":{lo},\"m_hi\":{hi}}}\n"));
        let run = write_run(tmp.path(), "r", &lines.concat());
        let plain = write_run(tmp.path(), "p", "{\"samples_seen\":0,\"m\":0.3}\n");
        let req = PlotRequest {
            runs: vec![run, plain],
            metrics: vec!["m".into()],
            x: "samples_seen".into(),
            out: tmp.path().join("m"),
            title: None,
            log_y: false,
        };
        let chart = build_chart(&req).unwrap();
        assert_eq!(chart.series[0].band, vec![(0.0, 0.25, 0.35), (100.0, 0.20, 0.45), (200.0, 0.27, 0.36)]);
        assert!(chart.series[1].band.is_empty(), "no interval logged, no band");
        let (y0, y1) = chart.y_range;
        assert!(y0 < 0.20 && y1 > 0.45, "the axis must hold the band, not only the line: {y0}..{y1}");
        check_outputs(&plot(&req).unwrap(), "r m");
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = write_run(tmp.path(), "bad", "{\"step\":0,\"loss\":1.0}\n{\"step\":1,\"loss\":\n");
        let file = dir.join("metrics.jsonl");
        let err = read_metrics(&file).unwrap_err();
        assert!(matches!(err, Error::Line { line: 2, .. }), "{err:?}");
        assert!(err.to_string().starts_with(&format!("{}:2:", file.display())), "{err}");

        let req = PlotRequest {
            runs: vec![dir],
            metrics: vec!["loss".into()],
            x: "step".into(),
            out: tmp.path().join("out"),
            title: None,
            log_y: false,
        };
        let err = plot(&req).unwrap_err();
        assert!(err.to_string().contains("metrics.jsonl:2:"), "{err}");
        assert!(!tmp.path().join("out.png").exists());
    }

    #[test]
    fn missing_file_and_unknown_metric() {
        let tmp = tempfile::tempdir().unwrap();
        let err = read_metrics(&tmp.path().join("nope/metrics.jsonl")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("nope/metrics.jsonl"), "{err}");

        let a = write_run(tmp.path(), "run_a", &sample(0.0));
        let b = write_run(tmp.path(), "run_b", &sample(0.0));
        let req = PlotRequest {
            runs: vec![a, b],
            metrics: vec!["loss".into(), "eval/nonexistent".into()],
            x: "step".into(),
            out: tmp.path().join("out"),
            title: None,
            log_y: false,
        };
        let err = plot(&req).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("eval/nonexistent") && msg.contains("run_a") && msg.contains("run_b"), "{msg}");
        assert!(!tmp.path().join("out.png").exists());
    }

    #[test]
    fn tick_labels() {
        let small = tick_format(300.0);
        assert_eq!(small(&0.0), "0");
        assert_eq!(small(&250.0), "250");
        assert_eq!(small(&0.125), "0.125");
        assert_eq!(small(&1.23456), "1.235");
        assert_eq!(small(&0.0002), "2.0e-4");
        let k = tick_format(19_000.0);
        assert_eq!(k(&2000.0), "2k");
        assert_eq!(k(&12_500.0), "12.5k");
        assert_eq!(log_ticks(0.2, 3.0), vec![0.2, 0.5, 1.0, 2.0]);
        assert_eq!(log_ticks(1e-3, 1e6).len(), 10);
        let m = tick_format(9.8e6);
        assert_eq!(m(&1_500_000.0), "1.5M");
    }
}
