//! The page's charts: inline SVG polylines, scaled to fit whatever the figures are (none
//! yet, all zero, or millions).

use super::html::Html;

pub const WIDTH: f64 = 520.0;
pub const HEIGHT: f64 = 120.0;
/// Room on the left for the scale's labels, below for the time labels.
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 18.0;
const TOP: f64 = 6.0;

/// One line of a chart: a value per time slot, `None` where there is no sample.
pub struct Line {
    pub label: &'static str,
    pub color: &'static str,
    pub values: Vec<Option<f64>>,
}

/// The top of the scale: the largest value, at least 1 (an empty or all-zero chart
/// still has a scale), finite.
pub fn top(lines: &[Line]) -> f64 {
    lines
        .iter()
        .flat_map(|l| l.values.iter().flatten())
        .copied()
        .filter(|v| v.is_finite())
        .fold(1.0_f64, f64::max)
}

/// Plot coordinates of `values` in a `width` x `height` box, `top` at the top edge:
/// slot `i` of `n` at `x = i / (n - 1) * width`, zero at the bottom. Always within the
/// box, always finite.
pub fn scale(values: &[Option<f64>], top: f64, width: f64, height: f64) -> Vec<Option<(f64, f64)>> {
    let n = values.len();
    let top = if top.is_finite() && top > 0.0 {
        top
    } else {
        1.0
    };
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let v = (*v)?;
            let x = if n > 1 {
                i as f64 / (n - 1) as f64 * width
            } else {
                width
            };
            let v = if v.is_finite() {
                v.clamp(0.0, top)
            } else {
                0.0
            };
            Some((x, height - v / top * height))
        })
        .collect()
}

/// Draws `lines` over the same time slots as one `<svg>`, with a legend and the time
/// span's labels (`from` at the left edge, "now" at the right).
pub fn chart(h: &mut Html, title: &'static str, from: &'static str, lines: &[Line]) {
    let top = top(lines);
    let (w, ht) = (WIDTH, HEIGHT);
    h.raw("<figure><figcaption>")
        .text(title)
        .raw("</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\"")
        .attr("aria-label", title)
        .raw(" width=\"")
        .num(LEFT + w + 8.0)
        .raw("\" height=\"")
        .num(TOP + ht + BOTTOM)
        .raw("\">");
    // Frame and scale.
    h.raw("<rect class=\"frame\" x=\"")
        .num(LEFT)
        .raw("\" y=\"")
        .num(TOP)
        .raw("\" width=\"")
        .num(w)
        .raw("\" height=\"")
        .num(ht)
        .raw("\"/>");
    h.raw("<text class=\"axis\" x=\"")
        .num(LEFT - 4.0)
        .raw("\" y=\"")
        .num(TOP + 10.0)
        .raw("\" text-anchor=\"end\">")
        .text(short_number(top))
        .raw("</text><text class=\"axis\" x=\"")
        .num(LEFT - 4.0)
        .raw("\" y=\"")
        .num(TOP + ht)
        .raw("\" text-anchor=\"end\">0</text>");
    h.raw("<text class=\"axis\" x=\"")
        .num(LEFT)
        .raw("\" y=\"")
        .num(TOP + ht + 14.0)
        .raw("\">")
        .text(from)
        .raw("</text><text class=\"axis\" x=\"")
        .num(LEFT + w)
        .raw("\" y=\"")
        .num(TOP + ht + 14.0)
        .raw("\" text-anchor=\"end\">now</text>");
    for line in lines {
        let points = scale(&line.values, top, w, ht);
        // Runs of consecutive samples: a gap (no sample) breaks the line.
        for run in points.split(|p| p.is_none()).filter(|r| !r.is_empty()) {
            if run.len() == 1 {
                let (x, y) = run[0].expect("a sample");
                h.raw("<circle r=\"3\" cx=\"")
                    .num(LEFT + x)
                    .raw("\" cy=\"")
                    .num(TOP + y)
                    .raw("\" fill=\"")
                    .raw(line.color)
                    .raw("\"/>");
                continue;
            }
            h.raw("<polyline fill=\"none\" stroke-width=\"1.5\" stroke=\"")
                .raw(line.color)
                .raw("\" points=\"");
            for (x, y) in run.iter().flatten() {
                h.num(LEFT + x).raw(",").num(TOP + y).raw(" ");
            }
            h.raw("\"/>");
        }
    }
    h.raw("</svg><div class=\"legend\">");
    for line in lines {
        h.raw("<span><i style=\"background:")
            .raw(line.color)
            .raw("\"></i>")
            .text(line.label)
            .raw("</span>");
    }
    h.raw("</div></figure>");
}

/// 1234 → "1234", 12345 → "12k", 3.2e6 → "3.2M".
fn short_number(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(points: &[Option<(f64, f64)>]) -> bool {
        points.iter().flatten().all(|(x, y)| {
            x.is_finite()
                && y.is_finite()
                && (0.0..=WIDTH).contains(x)
                && (0.0..=HEIGHT).contains(y)
        })
    }

    fn line(values: Vec<Option<f64>>) -> Line {
        Line {
            label: "x",
            color: "#000",
            values,
        }
    }

    #[test]
    fn an_empty_series_draws_nothing_but_the_frame() {
        assert!(scale(&[], 1.0, WIDTH, HEIGHT).is_empty());
        let none = vec![None; 60];
        assert_eq!(top(&[line(none.clone())]), 1.0);
        assert!(scale(&none, 1.0, WIDTH, HEIGHT).iter().all(Option::is_none));
        let mut h = Html::new();
        chart(&mut h, "t", "-1h", &[line(none)]);
        let svg = h.into_string();
        assert!(svg.contains("<rect class=\"frame\""), "{svg}");
        assert!(
            !svg.contains("<polyline") && !svg.contains("<circle"),
            "{svg}"
        );
    }

    #[test]
    fn a_flat_series_lies_on_the_bottom_or_the_top() {
        let zeros = vec![Some(0.0); 5];
        let t = top(&[line(zeros.clone())]);
        assert_eq!(t, 1.0, "all zero still has a scale");
        let p = scale(&zeros, t, WIDTH, HEIGHT);
        assert!(within(&p));
        assert!(p.iter().flatten().all(|(_, y)| *y == HEIGHT));
        assert_eq!(p[0].unwrap().0, 0.0);
        assert_eq!(p[4].unwrap().0, WIDTH);
        let sevens = vec![Some(7.0); 5];
        let p = scale(&sevens, top(&[line(sevens.clone())]), WIDTH, HEIGHT);
        assert!(p.iter().flatten().all(|(_, y)| *y == 0.0));
        // One sample: at the right edge ("now").
        assert_eq!(
            scale(&[Some(3.0)], 3.0, WIDTH, HEIGHT),
            [Some((WIDTH, 0.0))]
        );
        // A lone sample between gaps is a dot, not an invisible one-point line.
        let mut h = Html::new();
        chart(&mut h, "t", "-1h", &[line(vec![None, Some(3.0), None])]);
        let svg = h.into_string();
        assert!(
            svg.contains("<circle") && !svg.contains("<polyline"),
            "{svg}"
        );
    }

    #[test]
    fn huge_and_odd_values_stay_inside_the_box() {
        let values = vec![
            Some(u64::MAX as f64),
            Some(1.0),
            None,
            Some(-5.0),
            Some(f64::NAN),
            Some(f64::INFINITY),
            Some(1e300),
        ];
        let t = top(&[line(values.clone())]);
        assert!(t.is_finite() && t >= 1e300);
        let p = scale(&values, t, WIDTH, HEIGHT);
        assert!(within(&p), "{p:?}");
        assert_eq!(p[2], None);
        assert_eq!(p[6].unwrap().1, 0.0, "the largest at the top");
        let mut h = Html::new();
        chart(&mut h, "t", "-1h", &[line(values)]);
        let svg = h.into_string();
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    #[test]
    fn scale_labels_are_short() {
        assert_eq!(short_number(1.0), "1");
        assert_eq!(short_number(12_345.0), "12k");
        assert_eq!(short_number(3_200_000.0), "3.2M");
    }
}
