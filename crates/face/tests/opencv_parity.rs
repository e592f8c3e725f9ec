//! The crate's OpenCV re-implementations against OpenCV 4.10 itself, on the small random cases
//! of `tools/face-fixtures/make_opencv_cases.py`: every output pixel must be equal.

use base64::Engine;
use image::RgbImage;
use ltx_face::cv::{draw, resize_linear, warp_affine};
use serde_json::Value;

fn cases() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/face/opencv_cases.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("valid JSON")
}

fn bytes(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("base64 string"))
        .expect("base64")
}

fn int(v: &Value) -> i32 {
    v.as_i64().expect("integer") as i32
}

fn rgb(w: &Value, h: &Value, data: &Value) -> RgbImage {
    RgbImage::from_raw(int(w) as u32, int(h) as u32, bytes(data)).expect("sized buffer")
}

/// Positions (x, y, channel) and values where two same-sized images differ.
fn diff(ours: &[u8], theirs: &[u8], w: usize) -> Vec<(usize, usize, usize, u8, u8)> {
    ours.iter()
        .zip(theirs)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| ((i / 3) % w, i / 3 / w, i % 3, *a, *b))
        .collect()
}

fn mask(v: &Value, w: i32, h: i32) -> Vec<bool> {
    let b = bytes(v);
    (0..(w * h) as usize)
        .map(|i| b[i / 8] >> (7 - i % 8) & 1 == 1)
        .collect()
}

#[test]
fn resize_matches_opencv_bit_for_bit() {
    let all = cases();
    for (k, c) in all["resize"].as_array().expect("cases").iter().enumerate() {
        let src = rgb(&c["src_w"], &c["src_h"], &c["src"]);
        let ours = resize_linear(&src, int(&c["dst_w"]) as u32, int(&c["dst_h"]) as u32);
        let d = diff(ours.as_raw(), &bytes(&c["dst"]), ours.width() as usize);
        assert!(
            d.is_empty(),
            "resize case {k} ({}x{} -> {}x{}): {} values differ, first {:?}",
            c["src_w"],
            c["src_h"],
            c["dst_w"],
            c["dst_h"],
            d.len(),
            &d[..d.len().min(5)]
        );
    }
}

#[test]
fn warp_affine_matches_opencv_bit_for_bit() {
    let all = cases();
    for (k, c) in all["warp_affine"]
        .as_array()
        .expect("cases")
        .iter()
        .enumerate()
    {
        let src = rgb(&c["src_w"], &c["src_h"], &c["src"]);
        let m: Vec<f64> = c["m"]
            .as_array()
            .expect("m")
            .iter()
            .map(|v| v.as_f64().expect("f64"))
            .collect();
        let m: [f64; 6] = m.try_into().expect("2x3");
        let ours = warp_affine(&src, &m, int(&c["dst_w"]) as u32, int(&c["dst_h"]) as u32);
        let d = diff(ours.as_raw(), &bytes(&c["dst"]), ours.width() as usize);
        assert!(
            d.is_empty(),
            "warp case {k}: {} values differ, first {:?}",
            d.len(),
            &d[..d.len().min(5)]
        );
    }
}

#[test]
fn ellipse2poly_matches_opencv() {
    let all = cases();
    for (k, c) in all["ellipse2poly"]
        .as_array()
        .expect("cases")
        .iter()
        .enumerate()
    {
        let pair = |v: &Value| (int(&v[0]), int(&v[1]));
        let ours = draw::ellipse2poly(
            pair(&c["center"]),
            pair(&c["axes"]),
            int(&c["angle"]),
            0,
            360,
            1,
        );
        let theirs: Vec<(i32, i32)> = c["points"]
            .as_array()
            .expect("points")
            .iter()
            .map(pair)
            .collect();
        assert_eq!(ours, theirs, "ellipse2poly case {k}");
    }
}

#[test]
fn fill_convex_poly_matches_opencv() {
    let all = cases();
    let polys = all["ellipse2poly"].as_array().expect("cases");
    for (k, c) in all["fill_convex_poly"]
        .as_array()
        .expect("cases")
        .iter()
        .enumerate()
    {
        let (w, h) = (int(&c["w"]), int(&c["h"]));
        let pts: Vec<(i32, i32)> = polys[k]["points"]
            .as_array()
            .expect("points")
            .iter()
            .map(|p| (int(&p[0]), int(&p[1])))
            .collect();
        let mut data = vec![0u8; (w * h * 3) as usize];
        draw::fill_convex_poly(
            &mut draw::Canvas {
                width: w,
                height: h,
                data: &mut data,
            },
            &pts,
            [255, 0, 255],
        );
        let ours: Vec<bool> = data.chunks(3).map(|p| p[0] == 255).collect();
        let theirs = mask(&c["mask"], w, h);
        let bad: Vec<usize> = (0..ours.len()).filter(|&i| ours[i] != theirs[i]).collect();
        assert!(
            bad.is_empty(),
            "fillConvexPoly case {k}: {} pixels differ, first at {:?}",
            bad.len(),
            bad.first().map(|&i| (i as i32 % w, i as i32 / w))
        );
    }
}

#[test]
fn filled_circle_matches_opencv() {
    let all = cases();
    for (k, c) in all["circle"].as_array().expect("cases").iter().enumerate() {
        let (w, h) = (int(&c["w"]), int(&c["h"]));
        let mut data = vec![0u8; (w * h * 3) as usize];
        let centre = (int(&c["center"][0]), int(&c["center"][1]));
        draw::fill_circle(
            &mut draw::Canvas {
                width: w,
                height: h,
                data: &mut data,
            },
            centre,
            int(&c["radius"]),
            [255, 0, 255],
        );
        let ours: Vec<bool> = data.chunks(3).map(|p| p[0] == 255).collect();
        assert_eq!(ours, mask(&c["mask"], w, h), "circle case {k}");
    }
}

#[test]
fn draw_kps_matches_instantid() {
    let all = cases();
    for (k, c) in all["draw_kps"]
        .as_array()
        .expect("cases")
        .iter()
        .enumerate()
    {
        let kps: Vec<[f32; 2]> = c["kps"]
            .as_array()
            .expect("kps")
            .iter()
            .map(|p| {
                [
                    p[0].as_f64().expect("x") as f32,
                    p[1].as_f64().expect("y") as f32,
                ]
            })
            .collect();
        let kps: [[f32; 2]; 5] = kps.try_into().expect("5 points");
        let ours = ltx_face::draw_kps(int(&c["w"]) as u32, int(&c["h"]) as u32, &kps);
        let d = diff(ours.as_raw(), &bytes(&c["dst"]), ours.width() as usize);
        assert!(
            d.is_empty(),
            "draw_kps case {k}: {} values differ, first {:?}",
            d.len(),
            &d[..d.len().min(5)]
        );
    }
}
