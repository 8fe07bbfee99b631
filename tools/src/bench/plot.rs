//! One SVG per run: records delivered per second over time, and the
//! lateness distribution (cumulative share of records by lateness).

use std::path::Path;

use plotters::prelude::*;

use super::shapes::Timeline;
use super::RunResult;

/// Writes the plot of `result` to `path`.
pub fn write(path: &Path, result: &RunResult, timeline: &Timeline) -> anyhow::Result<()> {
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

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}
