//! Line charts as PNG files for docs/benchmarks.md, without a plotting library: a canvas of RGB
//! pixels, straight lines, a 5×7 bitmap font for the axes and the legend, and a PNG writer over
//! flate2's zlib (already in the tree for image layers). Enough for "this series over time";
//! nothing more is wanted.

use std::path::Path;

use anyhow::Result;

/// One line of a chart: points in data coordinates, x ascending.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Vertical lines at these x values with a label (phases of a run).
    pub marks: Vec<(f64, String)>,
}

const WIDTH: usize = 1000;
const HEIGHT: usize = 480;
const LEFT: usize = 90;
const RIGHT: usize = 20;
const TOP: usize = 44;
const BOTTOM: usize = 60;
/// Each font pixel is drawn as SCALE×SCALE.
const SCALE: usize = 2;
const ADVANCE: usize = 6 * SCALE;

const WHITE: [u8; 3] = [255, 255, 255];
const BLACK: [u8; 3] = [0, 0, 0];
const GRID: [u8; 3] = [225, 225, 225];
const MARK: [u8; 3] = [150, 150, 150];
pub const PALETTE: [[u8; 3]; 6] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [140, 86, 75],
];

impl Chart {
    /// Draws the chart and writes it to `path` as a PNG.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        std::fs::write(path, encode_png(&self.render(), WIDTH, HEIGHT))?;
        Ok(())
    }

    fn render(&self) -> Canvas {
        let mut c = Canvas::new();
        let points = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
        for &(x, y) in points {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
        if x0 > x1 {
            (x0, x1) = (0.0, 1.0);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let (y_step, y_top) = nice_axis(y1);
        let (x_step, _) = nice_axis(x1 - x0);
        let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
        let px = |x: f64| LEFT as f64 + (x - x0) / (x1 - x0) * pw as f64;
        let py = |y: f64| (TOP + ph) as f64 - y / y_top * ph as f64;
        // Grid and tick labels.
        let mut y = 0.0;
        while y <= y_top + y_step / 2.0 {
            let row = py(y).round() as usize;
            c.hline(LEFT, LEFT + pw, row, GRID);
            let label = tick(y, y_step);
            c.text(
                (LEFT - 8).saturating_sub(label.len() * ADVANCE),
                row - 7,
                &label,
                BLACK,
            );
            y += y_step;
        }
        let mut x = (x0 / x_step).ceil() * x_step;
        while x <= x1 + x_step / 1000.0 {
            let col = px(x).round() as usize;
            c.vline(col, TOP, TOP + ph, GRID);
            let label = tick(x, x_step);
            c.text(
                col.saturating_sub(label.len() * ADVANCE / 2),
                TOP + ph + 8,
                &label,
                BLACK,
            );
            x += x_step;
        }
        for (x, label) in &self.marks {
            let col = px(*x).round() as usize;
            for row in (TOP..TOP + ph).step_by(8) {
                c.vline(col, row, (row + 4).min(TOP + ph), MARK);
            }
            // Right of the line, or left of it near the plot's right edge.
            let w = label.len() * ADVANCE;
            let x = if col + 4 + w < WIDTH - RIGHT {
                col + 4
            } else {
                col.saturating_sub(4 + w)
            };
            c.text(x, TOP + ph - 18, label, MARK);
        }
        // Axes.
        c.hline(LEFT, LEFT + pw, TOP + ph, BLACK);
        c.vline(LEFT, TOP, TOP + ph, BLACK);
        // Series.
        for (i, s) in self.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            for w in s.points.windows(2) {
                c.line((px(w[0].0), py(w[0].1)), (px(w[1].0), py(w[1].1)), color);
            }
            if let [only] = s.points[..] {
                c.line((px(only.0), py(only.1)), (px(only.0), py(only.1)), color);
            }
            // Legend, top left inside the plot.
            let (lx, ly) = (LEFT + 16, TOP + 12 + i * 20);
            c.fill(lx, ly + 2, 24, 8, color);
            c.text(lx + 32, ly, &s.name, BLACK);
        }
        c.text(LEFT, 10, &self.title, BLACK);
        c.text(
            LEFT + pw / 2 - self.x_label.len() * ADVANCE / 2,
            HEIGHT - 24,
            &self.x_label,
            BLACK,
        );
        c.text(8, TOP - 24, &self.y_label, BLACK);
        c
    }
}

/// A step of 1, 2 or 5 × 10^k giving about five intervals up to `max`, and the axis top.
fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    (step, (max / step).ceil() * step)
}

fn tick(v: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{v:.0}")
    } else {
        let decimals = (-step.log10().floor()) as usize;
        format!("{v:.decimals$}")
    }
}

struct Canvas {
    pixels: Vec<[u8; 3]>,
}

impl Canvas {
    fn new() -> Canvas {
        Canvas {
            pixels: vec![WHITE; WIDTH * HEIGHT],
        }
    }

    fn set(&mut self, x: usize, y: usize, color: [u8; 3]) {
        if x < WIDTH && y < HEIGHT {
            self.pixels[y * WIDTH + x] = color;
        }
    }

    fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, color: [u8; 3]) {
        for row in y..y + h {
            for col in x..x + w {
                self.set(col, row, color);
            }
        }
    }

    fn hline(&mut self, x0: usize, x1: usize, y: usize, color: [u8; 3]) {
        self.fill(x0, y, x1 - x0 + 1, 1, color);
    }

    fn vline(&mut self, x: usize, y0: usize, y1: usize, color: [u8; 3]) {
        self.fill(x, y0, 1, y1 - y0 + 1, color);
    }

    /// A line two pixels wide, by stepping along its longer axis.
    fn line(&mut self, (xa, ya): (f64, f64), (xb, yb): (f64, f64), color: [u8; 3]) {
        let steps = (xb - xa).abs().max((yb - ya).abs()).ceil().max(1.0) as usize;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let (x, y) = (xa + (xb - xa) * t, ya + (yb - ya) * t);
            if x < 0.0 || y < 0.0 {
                continue;
            }
            let (x, y) = (x.round() as usize, y.round() as usize);
            self.fill(x, y.saturating_sub(1), 2, 2, color);
        }
    }

    fn text(&mut self, x: usize, y: usize, s: &str, color: [u8; 3]) {
        for (i, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for b in 0..5 {
                    if bits & (0x10 >> b) != 0 {
                        self.fill(
                            x + i * ADVANCE + b * SCALE,
                            y + r * SCALE,
                            SCALE,
                            SCALE,
                            color,
                        );
                    }
                }
            }
        }
    }
}

/// A 5×7 glyph, one byte per row (bit 4 is the leftmost pixel). Letters are drawn in capitals.
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        ' ' => [0; 7],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04],
    }
}

/// An 8-bit RGB PNG: the signature, IHDR, one zlib IDAT of unfiltered rows, IEND.
fn encode_png(canvas: &Canvas, width: usize, height: usize) -> Vec<u8> {
    use std::io::Write;
    let mut raw = Vec::with_capacity(height * (1 + width * 3));
    for row in canvas.pixels.chunks(width) {
        raw.push(0);
        for px in row {
            raw.extend_from_slice(px);
        }
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&raw).expect("writing to memory");
    let idat = z.finish().expect("writing to memory");
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&(width as u32).to_be_bytes());
    ihdr.extend_from_slice(&(height as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(b"IHDR", &ihdr), (b"IDAT", &idat), (b"IEND", &Vec::new())] {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = png.len();
        png.extend_from_slice(kind);
        png.extend_from_slice(data);
        let mut crc = flate2::Crc::new();
        crc.update(&png[start..]);
        png.extend_from_slice(&crc.sum().to_be_bytes());
    }
    png
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Decodes what [`encode_png`] writes: checks each chunk's CRC, returns the pixels.
    fn decode(png: &[u8]) -> (usize, usize, Vec<[u8; 3]>) {
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let (mut at, mut dims, mut idat) = (8, (0, 0), Vec::new());
        while at < png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let body = &png[at + 4..at + 8 + len];
            let mut crc = flate2::Crc::new();
            crc.update(body);
            let want = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
            assert_eq!(crc.sum(), want, "chunk CRC");
            match &body[..4] {
                b"IHDR" => {
                    let u = |i: usize| u32::from_be_bytes(body[i..i + 4].try_into().unwrap());
                    dims = (u(4) as usize, u(8) as usize);
                    assert_eq!(&body[12..17], &[8, 2, 0, 0, 0]);
                }
                b"IDAT" => idat.extend_from_slice(&body[4..]),
                _ => {}
            }
            at += 12 + len;
        }
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&idat[..])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(raw.len(), dims.1 * (1 + dims.0 * 3));
        let pixels = raw
            .chunks(1 + dims.0 * 3)
            .flat_map(|row| row[1..].chunks(3).map(|p| [p[0], p[1], p[2]]))
            .collect();
        (dims.0, dims.1, pixels)
    }

    #[test]
    fn a_series_is_drawn_where_its_points_are() {
        let chart = Chart {
            title: "memory".into(),
            x_label: "seconds".into(),
            y_label: "MiB".into(),
            series: vec![Series {
                name: "api".into(),
                // A flat line at 50 of an axis whose top is 100: the plot's middle row.
                points: vec![(0.0, 50.0), (10.0, 50.0), (20.0, 100.0)],
            }],
            marks: vec![(10.0, "churn".into())],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        chart.write_png(&path).unwrap();
        let (w, h, px) = decode(&std::fs::read(&path).unwrap());
        assert_eq!((w, h), (WIDTH, HEIGHT));
        let at = |x: usize, y: usize| px[y * w + x];
        let mid = TOP + (HEIGHT - TOP - BOTTOM) / 2;
        let quarter = LEFT + (WIDTH - LEFT - RIGHT) / 4;
        let column: Vec<usize> = (TOP..HEIGHT - BOTTOM)
            .filter(|&y| at(quarter, y) == PALETTE[0])
            .collect();
        assert!(
            column.iter().all(|y| y.abs_diff(mid) <= 1) && !column.is_empty(),
            "{column:?} vs {mid}"
        );
        // The rising half ends at the top of the plot.
        assert_eq!(at(WIDTH - RIGHT - 1, TOP), PALETTE[0]);
        // The axes and the legend are there.
        assert_eq!(at(LEFT, HEIGHT - BOTTOM), BLACK);
        assert_eq!(at(LEFT + 20, TOP + 16), PALETTE[0]);
    }

    #[test]
    fn axes_get_round_steps() {
        assert_eq!(nice_axis(831.0), (200.0, 1000.0));
        assert_eq!(nice_axis(4.2), (1.0, 5.0));
        assert_eq!(nice_axis(0.0), (0.2, 1.0));
        assert_eq!(tick(0.4, 0.2), "0.4");
        assert_eq!(tick(1500.0, 500.0), "1500");
    }
}
