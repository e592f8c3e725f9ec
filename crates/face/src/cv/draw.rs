//! OpenCV 4.10's integer drawing, for InstantID's keypoint image: `ellipse2Poly`,
//! `fillConvexPoly` (8-connected outline, then scanlines, shift 0) and `circle` (filled,
//! 8-connected, no shift), on an interleaved RGB buffer. Pixels outside are clipped.

use std::sync::OnceLock;

const XY_SHIFT: i64 = 16;
const XY_ONE: i64 = 1 << XY_SHIFT;

/// A mutable view of an RGB8 image.
pub struct Canvas<'a> {
    pub width: i32,
    pub height: i32,
    pub data: &'a mut [u8],
}

impl Canvas<'_> {
    fn put(&mut self, x: i32, y: i32, color: [u8; 3]) {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        self.data[i..i + 3].copy_from_slice(&color);
    }

    /// `ICV_HLINE`: pixels `xl..=xr` of row `y` (callers clip).
    fn hline(&mut self, y: i32, xl: i32, xr: i32, color: [u8; 3]) {
        for x in xl..=xr {
            self.put(x, y, color);
        }
    }
}

/// OpenCV's `SinTable`: sin of each whole degree 0..=450, written to 7 decimals in float.
fn sin_table() -> &'static [f32; 451] {
    static TABLE: OnceLock<[f32; 451]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0f32; 451];
        for (i, v) in t.iter_mut().enumerate() {
            let s = format!("{:.7}", (i as f64).to_radians().sin());
            *v = s.parse().unwrap_or(0.0);
        }
        t
    })
}

/// `cvRound` of a double: round half to even.
fn round(v: f64) -> i32 {
    v.round_ties_even().clamp(i32::MIN as f64, i32::MAX as f64) as i32
}

/// `cv2.ellipse2Poly(center, axes, angle, arc_start, arc_end, delta)` (integer version).
/// `delta` must be in 1..=180 (OpenCV asserts it).
pub fn ellipse2poly(
    center: (i32, i32),
    axes: (i32, i32),
    mut angle: i32,
    mut arc_start: i32,
    mut arc_end: i32,
    delta: i32,
) -> Vec<(i32, i32)> {
    let tab = sin_table();
    while angle < 0 {
        angle += 360;
    }
    while angle > 360 {
        angle -= 360;
    }
    if arc_start > arc_end {
        std::mem::swap(&mut arc_start, &mut arc_end);
    }
    while arc_start < 0 {
        arc_start += 360;
        arc_end += 360;
    }
    while arc_end > 360 {
        arc_end -= 360;
        arc_start -= 360;
    }
    if arc_end - arc_start > 360 {
        arc_start = 0;
        arc_end = 360;
    }
    let (alpha, beta) = (
        f64::from(tab[450 - angle as usize]),
        f64::from(tab[angle as usize]),
    );
    let mut pts: Vec<(i32, i32)> = Vec::new();
    let mut i = arc_start;
    while i < arc_end + delta {
        let mut a = i.min(arc_end);
        if a < 0 {
            a += 360;
        }
        let x = f64::from(axes.0) * f64::from(tab[450 - a as usize]);
        let y = f64::from(axes.1) * f64::from(tab[a as usize]);
        let px = f64::from(center.0) + x * alpha - y * beta;
        let py = f64::from(center.1) + x * beta + y * alpha;
        let p = (round(px), round(py));
        if pts.last() != Some(&p) {
            pts.push(p);
        }
        i += delta;
    }
    if pts.len() == 1 {
        pts = vec![center, center];
    }
    pts
}

/// `clipLine(Size2l, pt1, pt2)`: clips the segment to the image; false if none of it is inside.
fn clip_line(w: i64, h: i64, p1: &mut (i64, i64), p2: &mut (i64, i64)) -> bool {
    let (right, bottom) = (w - 1, h - 1);
    if w <= 0 || h <= 0 {
        return false;
    }
    let code = |p: (i64, i64)| {
        i32::from(p.0 < 0)
            + i32::from(p.0 > right) * 2
            + i32::from(p.1 < 0) * 4
            + i32::from(p.1 > bottom) * 8
    };
    let (mut c1, mut c2) = (code(*p1), code(*p2));
    if (c1 & c2) == 0 && (c1 | c2) != 0 {
        if c1 & 12 != 0 {
            let a = if c1 < 8 { 0 } else { bottom };
            p1.0 += (a - p1.1) * (p2.0 - p1.0) / (p2.1 - p1.1);
            p1.1 = a;
            c1 = i32::from(p1.0 < 0) + i32::from(p1.0 > right) * 2;
        }
        if c2 & 12 != 0 {
            let a = if c2 < 8 { 0 } else { bottom };
            p2.0 += (a - p2.1) * (p2.0 - p1.0) / (p2.1 - p1.1);
            p2.1 = a;
            c2 = i32::from(p2.0 < 0) + i32::from(p2.0 > right) * 2;
        }
        if (c1 & c2) == 0 && (c1 | c2) != 0 {
            if c1 != 0 {
                let a = if c1 == 1 { 0 } else { right };
                p1.1 += (a - p1.0) * (p2.1 - p1.1) / (p2.0 - p1.0);
                p1.0 = a;
                c1 = 0;
            }
            if c2 != 0 {
                let a = if c2 == 1 { 0 } else { right };
                p2.1 += (a - p2.0) * (p2.1 - p1.1) / (p2.0 - p1.0);
                p2.0 = a;
                c2 = 0;
            }
        }
    }
    (c1 | c2) == 0
}

/// `Line(img, pt1, pt2, color, 8)`: OpenCV's 8-connected `LineIterator`, left to right.
fn line(canvas: &mut Canvas, pt1: (i32, i32), pt2: (i32, i32), color: [u8; 3]) {
    let (w, h) = (canvas.width, canvas.height);
    let (mut p1, mut p2) = (pt1, pt2);
    let outside = |p: (i32, i32)| p.0 as u32 >= w as u32 || p.1 as u32 >= h as u32;
    if outside(p1) || outside(p2) {
        let (mut a, mut b) = (
            (i64::from(p1.0), i64::from(p1.1)),
            (i64::from(p2.0), i64::from(p2.1)),
        );
        if !clip_line(i64::from(w), i64::from(h), &mut a, &mut b) {
            return;
        }
        p1 = (a.0 as i32, a.1 as i32);
        p2 = (b.0 as i32, b.1 as i32);
    }
    let (mut dx, mut dy) = (p2.0 - p1.0, p2.1 - p1.1);
    if dx < 0 {
        dx = -dx;
        dy = -dy;
        std::mem::swap(&mut p1, &mut p2);
    }
    let sy = if dy < 0 { -1 } else { 1 };
    dy = dy.abs();
    let vert = dy > dx;
    if vert {
        std::mem::swap(&mut dx, &mut dy);
    }
    let mut err = dx - 2 * dy;
    let (plus, minus) = (2 * dx, -2 * dy);
    let (mut x, mut y) = p1;
    for _ in 0..=dx {
        canvas.put(x, y, color);
        let step_minor = err < 0;
        err += minus + if step_minor { plus } else { 0 };
        if vert {
            y += sy;
            x += i32::from(step_minor);
        } else {
            x += 1;
            y += if step_minor { sy } else { 0 };
        }
    }
}

/// `cv2.fillConvexPoly(img, pts, color)` with the default line type 8 and shift 0.
pub fn fill_convex_poly(canvas: &mut Canvas, v: &[(i32, i32)], color: [u8; 3]) {
    let npts = v.len();
    if npts == 0 {
        return;
    }
    let (w, h) = (canvas.width, canvas.height);
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (v[0].0, v[0].0, v[0].1, v[0].1);
    let mut imin = 0;
    let mut p0 = v[npts - 1];
    for (i, &p) in v.iter().enumerate() {
        if p.1 < ymin {
            ymin = p.1;
            imin = i;
        }
        ymax = ymax.max(p.1);
        xmax = xmax.max(p.0);
        xmin = xmin.min(p.0);
        line(canvas, p0, p, color);
        p0 = p;
    }
    if npts < 3 || xmax < 0 || ymax < 0 || xmin >= w || ymin >= h {
        return;
    }
    let ymax = ymax.min(h - 1);
    #[derive(Clone, Copy)]
    struct Edge {
        idx: usize,
        di: usize,
        x: i64,
        dx: i64,
        ye: i32,
    }
    let mut edge = [Edge {
        idx: imin,
        di: 1,
        x: -XY_ONE,
        dx: 0,
        ye: ymin,
    }; 2];
    edge[1].di = npts - 1;
    let mut edges = npts as i64;
    let mut y = ymin;
    loop {
        for e in edge.iter_mut() {
            if y >= e.ye {
                let mut idx0 = e.idx;
                let mut idx = (idx0 + e.di) % npts;
                loop {
                    let more = edges > 0;
                    edges -= 1;
                    if !more {
                        break;
                    }
                    let ty = v[idx].1;
                    if ty > y {
                        let xs = i64::from(v[idx0].0) << XY_SHIFT;
                        let xe = i64::from(v[idx].0) << XY_SHIFT;
                        let span = i64::from(ty - y);
                        e.ye = ty;
                        e.dx = ((xe - xs) * 2 + span) / (2 * span);
                        e.x = xs;
                        e.idx = idx;
                        break;
                    }
                    idx0 = idx;
                    idx = (idx + e.di) % npts;
                }
            }
        }
        if edges < 0 {
            break;
        }
        if y >= 0 {
            let (l, r) = if edge[0].x > edge[1].x {
                (1, 0)
            } else {
                (0, 1)
            };
            let mut x1 = ((edge[l].x + (XY_ONE >> 1)) >> XY_SHIFT) as i32;
            let mut x2 = ((edge[r].x + (XY_ONE >> 1)) >> XY_SHIFT) as i32;
            if x2 >= 0 && x1 < w {
                x1 = x1.max(0);
                x2 = x2.min(w - 1);
                canvas.hline(y, x1, x2, color);
            }
        }
        edge[0].x += edge[0].dx;
        edge[1].x += edge[1].dx;
        y += 1;
        if y > ymax {
            break;
        }
    }
}

/// `cv2.circle(img, center, radius, color, -1)`: OpenCV's filled `Circle`.
pub fn fill_circle(canvas: &mut Canvas, center: (i32, i32), radius: i32, color: [u8; 3]) {
    let (w, h) = (canvas.width, canvas.height);
    let (cx, cy) = center;
    let (mut err, mut dx, mut dy, mut plus, mut minus) =
        (0i32, radius, 0i32, 1i32, (radius << 1) - 1);
    let inside = cx >= radius && cx < w - radius && cy >= radius && cy < h - radius;
    while dx >= dy {
        let (y11, y12, y21, y22) = (cy - dy, cy + dy, cy - dx, cy + dx);
        let (mut x11, mut x12, mut x21, mut x22) = (cx - dx, cx + dx, cx - dy, cx + dy);
        if inside {
            canvas.hline(y11, x11, x12, color);
            canvas.hline(y12, x11, x12, color);
            canvas.hline(y21, x21, x22, color);
            canvas.hline(y22, x21, x22, color);
        } else if x11 < w && x12 >= 0 && y21 < h && y22 >= 0 {
            x11 = x11.max(0);
            x12 = x12.min(w - 1);
            if (y11 as u32) < h as u32 {
                canvas.hline(y11, x11, x12, color);
            }
            if (y12 as u32) < h as u32 {
                canvas.hline(y12, x11, x12, color);
            }
            if x21 < w && x22 >= 0 {
                x21 = x21.max(0);
                x22 = x22.min(w - 1);
                if (y21 as u32) < h as u32 {
                    canvas.hline(y21, x21, x22, color);
                }
                if (y22 as u32) < h as u32 {
                    canvas.hline(y22, x21, x22, color);
                }
            }
        }
        dy += 1;
        err += plus;
        plus += 2;
        let mask = i32::from(err <= 0) - 1;
        err -= minus & mask;
        dx += mask;
        minus -= mask & 2;
    }
}
