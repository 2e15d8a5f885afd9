//! `loss.png`: train and eval loss against step, redrawn at each eval.
//!
//! Drawn with plotters' bitmap backend. Text goes through plotters' `ab_glyph` renderer with
//! DejaVu Sans from the `dejavu` crate (Bitstream Vera licence, free to redistribute), registered
//! once; so no system fonts, fontconfig or FreeType are needed, and the picture is the same on a
//! laptop, a CI box and a GPU node. The file is written under a temporary name and renamed.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use image::ImageEncoder as _;

use super::{MetricsError, atomic_write};

/// Picture size in pixels.
pub const SIZE: (u32, u32) = (960, 540);
/// Train curve colour.
pub const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
/// Eval curve colour.
pub const EVAL_COLOR: RGBColor = RGBColor(214, 39, 40);

fn register_font() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| "the embedded DejaVu Sans font could not be parsed".to_string())
    })
    .clone()
}

/// Draws `train` and `eval` (step, loss) series to a PNG at `path`. Non-finite points are left
/// out; empty series are fine (the axes are still drawn).
pub fn plot_loss(
    path: &Path,
    title: &str,
    train: &[(u64, f64)],
    eval: &[(u64, f64)],
) -> Result<(), MetricsError> {
    let plot_err = |message: String| MetricsError::Plot {
        path: path.to_path_buf(),
        message,
    };
    register_font().map_err(plot_err)?;
    let finite = |s: &[(u64, f64)]| -> Vec<(f64, f64)> {
        s.iter()
            .filter(|(_, l)| l.is_finite())
            .map(|(x, l)| (*x as f64, *l))
            .collect()
    };
    let (tr, ev) = (finite(train), finite(eval));
    let all = tr.iter().chain(ev.iter());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in all {
        x_max = x_max.max(*x);
        y_min = y_min.min(*y);
        y_max = y_max.max(*y);
    }
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let (y_lo, y_hi) = ((y_min - pad).max(0.0), y_max + pad);

    // Drawn into memory, encoded, then written atomically (a reader never sees half a picture).
    let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, y_lo..y_hi)
            .map_err(|e| plot_err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| plot_err(e.to_string()))?;
        if !tr.is_empty() {
            chart
                .draw_series(LineSeries::new(
                    tr.iter().copied(),
                    TRAIN_COLOR.stroke_width(2),
                ))
                .map_err(|e| plot_err(e.to_string()))?
                .label("train")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], TRAIN_COLOR.stroke_width(2))
                });
        }
        if !ev.is_empty() {
            chart
                .draw_series(LineSeries::new(
                    ev.iter().copied(),
                    EVAL_COLOR.stroke_width(2),
                ))
                .map_err(|e| plot_err(e.to_string()))?
                .label("eval")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], EVAL_COLOR.stroke_width(2))
                });
            chart
                .draw_series(ev.iter().map(|p| Circle::new(*p, 3, EVAL_COLOR.filled())))
                .map_err(|e| plot_err(e.to_string()))?;
        }
        if !tr.is_empty() || !ev.is_empty() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(|e| plot_err(e.to_string()))?;
        }
        root.present().map_err(|e| plot_err(e.to_string()))?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&rgb, SIZE.0, SIZE.1, image::ColorType::Rgb8)
        .map_err(|e| plot_err(e.to_string()))?;
    atomic_write(path, &png)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(img: &image::RgbImage, c: RGBColor) -> usize {
        img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count()
    }

    #[test]
    fn draws_both_curves_and_text_without_system_fonts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss.png");
        let train: Vec<(u64, f64)> = (1..=200)
            .map(|s| (s, 10.0 / (1.0 + s as f64 / 20.0) + 2.0))
            .collect();
        let eval: Vec<(u64, f64)> = (1..=4)
            .map(|k| (k * 50, 10.0 / (1.0 + (k * 50) as f64 / 20.0) + 2.2))
            .collect();
        plot_loss(&p, "run quick", &train, &eval).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), SIZE);
        assert!(count(&img, TRAIN_COLOR) > 300, "train curve missing");
        assert!(count(&img, EVAL_COLOR) > 50, "eval curve missing");
        // Text was rendered: dark anti-aliased pixels exist outside the curves (axis labels).
        let dark = img.pixels().filter(|p| p.0.iter().all(|c| *c < 90)).count();
        assert!(dark > 500, "no text drawn ({dark} dark pixels)");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("loss.png")],
            "no temporary left"
        );
    }

    #[test]
    fn empty_and_non_finite_series_still_draw() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss.png");
        plot_loss(&p, "empty", &[], &[]).unwrap();
        plot_loss(&p, "nan", &[(1, f64::NAN), (2, 3.0)], &[(2, f64::INFINITY)]).unwrap();
        assert!(image::open(&p).is_ok());
    }
}
