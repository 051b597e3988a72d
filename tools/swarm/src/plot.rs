//! The latency plot of `swarm run`: one point per broadcast (x = seconds since the first
//! broadcast), with the time until the first, the average and the last client had it,
//! the run's p50 / p99 as horizontal lines, and a target line. SVG (plotters), small.

use plotters::prelude::*;

/// One broadcast round, times in ms after the publisher's timestamp.
pub struct RoundPoint {
    pub t_s: f64,
    pub first_ms: f64,
    pub mean_ms: f64,
    pub last_ms: f64,
}

/// Which value of a round a series draws.
type Pick = fn(&RoundPoint) -> f64;

pub struct PlotInput<'a> {
    pub title: &'a str,
    pub rounds: &'a [RoundPoint],
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// A dashed line at this value (the "last client within" target), if any.
    pub target_ms: Option<f64>,
}

pub fn write_svg(path: &str, p: &PlotInput) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("plot {path}: {e}");
    let x_max = p
        .rounds
        .iter()
        .map(|r| r.t_s)
        .fold(1.0_f64, f64::max)
        .ceil();
    let y_data = p.rounds.iter().map(|r| r.last_ms).fold(0.0_f64, f64::max);
    let y_max = (y_data
        .max(p.target_ms.unwrap_or(0.0))
        .max(p.p99_ms.unwrap_or(0.0))
        * 1.1)
        .max(10.0)
        .ceil();

    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(p.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first broadcast")
        .y_desc("ms after publish")
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| err(&e))?;

    let series: [(&str, RGBColor, Pick); 3] = [
        ("last client", RED, |r| r.last_ms),
        ("mean", BLUE, |r| r.mean_ms),
        ("first client", GREEN, |r| r.first_ms),
    ];
    for (name, color, f) in series {
        chart
            .draw_series(LineSeries::new(
                p.rounds.iter().map(|r| (r.t_s, f(r))),
                color.stroke_width(1),
            ))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        chart
            .draw_series(
                p.rounds
                    .iter()
                    .map(|r| Circle::new((r.t_s, f(r)), 2, color.filled())),
            )
            .map_err(|e| err(&e))?;
    }
    let hlines = [
        (
            "latency p50 (all messages)",
            p.p50_ms,
            RGBColor(120, 120, 120),
        ),
        ("latency p99 (all messages)", p.p99_ms, BLACK),
        ("target", p.target_ms, MAGENTA),
    ];
    for (name, value, color) in hlines {
        let Some(v) = value else { continue };
        let style = ShapeStyle::from(color.mix(0.7)).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new([(0.0, v), (x_max, v)], 6, 4, style))
            .map_err(|e| err(&e))?
            .label(format!("{name}: {v:.0} ms"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg() {
        let dir = std::env::temp_dir().join(format!("swarm-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("p.svg");
        let rounds: Vec<RoundPoint> = (0..5)
            .map(|i| RoundPoint {
                t_s: i as f64 * 5.0,
                first_ms: 1.0,
                mean_ms: 50.0 + i as f64,
                last_ms: 120.0 + 10.0 * i as f64,
            })
            .collect();
        write_svg(
            path.to_str().expect("utf-8 path"),
            &PlotInput {
                title: "test",
                rounds: &rounds,
                p50_ms: Some(40.0),
                p99_ms: Some(130.0),
                target_ms: Some(1000.0),
            },
        )
        .expect("plot");
        let svg = std::fs::read_to_string(&path).expect("read");
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("last client"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
