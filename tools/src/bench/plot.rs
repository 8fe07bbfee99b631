//! One SVG per run: records delivered per second over time, and the
//! lateness distribution (cumulative share of records by lateness). The
//! sustained shape draws lateness by second of due time instead, beside the
//! due rate of that second ([`write_sustained`]): the knee in one plot.

use std::path::Path;

use plotters::prelude::*;

use super::shapes::Timeline;
use super::RunResult;

/// Writes the plot of `result` to `path`.
pub fn write(path: &Path, result: &RunResult, timeline: &Timeline) -> anyhow::Result<()> {
    if !result.lateness_over_time.is_empty() {
        return write_sustained(path, result);
    }
    let root = SVGBackend::new(path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let title = format!(
        "{} × {} records, {} instance(s): {:.0} records/s, lateness p99 {} ms",
        result.shape, result.records, result.instances, result.rate.median, result.lateness_p99_ms
    );
    let root = root.titled(&title, ("sans-serif", 18)).map_err(err)?;
    let (left, right) = root.split_horizontally(550);

    // Arrivals per second, in 100 ms buckets.
    let start = timeline.arrivals_ms.first().copied().unwrap_or(0);
    let mut buckets: Vec<u32> = Vec::new();
    for &t in &timeline.arrivals_ms {
        let i = ((t - start) / 100).max(0) as usize;
        if buckets.len() <= i {
            buckets.resize(i + 1, 0);
        }
        buckets[i] += 1;
    }
    let seconds = buckets.len() as f64 / 10.0;
    let peak = buckets.iter().copied().max().unwrap_or(1) as f64 * 10.0;
    let mut chart = ChartBuilder::on(&left)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .caption("delivered records per second", ("sans-serif", 14))
        .build_cartesian_2d(0.0..seconds.max(0.1), 0.0..peak * 1.1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first arrival")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            buckets
                .iter()
                .enumerate()
                .map(|(i, &c)| (i as f64 / 10.0, c as f64 * 10.0)),
            &BLUE,
        ))
        .map_err(err)?;

    // Cumulative share of records by lateness.
    let lat = &timeline.lateness_ms;
    let max = lat.last().copied().unwrap_or(1).max(1) as f64;
    let mut chart = ChartBuilder::on(&right)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .caption("lateness (cumulative share of records)", ("sans-serif", 14))
        .build_cartesian_2d(0.0..max * 1.05, 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("ms after the due time")
        .draw()
        .map_err(err)?;
    let n = lat.len().max(1) as f64;
    let step = (lat.len() / 2_000).max(1);
    chart
        .draw_series(LineSeries::new(
            lat.iter()
                .enumerate()
                .step_by(step)
                .map(|(i, &l)| (l.max(0) as f64, (i + 1) as f64 / n)),
            &RED,
        ))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// The sustained shape: lateness p50 and p99 (ms, left axis, log scale)
/// and records due (per second, right axis), by second of due time.
fn write_sustained(path: &Path, result: &RunResult) -> anyhow::Result<()> {
    let seconds = &result.lateness_over_time;
    let root = SVGBackend::new(path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let title = format!(
        "sustained, peak {:.0} due/s: lateness by second of due time (p50 blue, p99 red), records due (grey)",
        seconds.iter().map(|s| s.records).max().unwrap_or(0)
    );
    let root = root.titled(&title, ("sans-serif", 16)).map_err(err)?;
    let last = seconds.last().map_or(1, |s| s.second + 1) as f64;
    let worst = seconds.iter().map(|s| s.p99_ms).max().unwrap_or(1).max(10) as f64;
    let peak = seconds.iter().map(|s| s.records).max().unwrap_or(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0.0..last, (1.0..worst * 1.5).log_scale())
        .map_err(err)?
        .set_secondary_coord(0.0..last, 0.0..peak * 1.1);
    chart
        .configure_mesh()
        .x_desc("second of due time")
        .y_desc("lateness, ms")
        .draw()
        .map_err(err)?;
    chart
        .configure_secondary_axes()
        .y_desc("records due in that second")
        .draw()
        .map_err(err)?;
    let at = |s: &crate::bench::SecondLateness| s.second as f64 + 0.5;
    chart
        .draw_secondary_series(LineSeries::new(
            seconds.iter().map(|s| (at(s), s.records as f64)),
            &RGBColor(150, 150, 150),
        ))
        .map_err(err)?;
    for (color, pick) in [
        (
            BLUE,
            (|s: &crate::bench::SecondLateness| s.p50_ms) as fn(&_) -> i64,
        ),
        (RED, |s| s.p99_ms),
    ] {
        chart
            .draw_series(LineSeries::new(
                seconds.iter().map(|s| (at(s), pick(s).max(1) as f64)),
                &color,
            ))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}
