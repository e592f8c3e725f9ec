//! SCRFD detection as insightface 2.1's `SCRFD.detect` does it: letterbox into the detection
//! size, blob, the network, anchor decoding per stride, score threshold, a stable sort by score
//! and greedy NMS with "+1" areas. Arithmetic is float32 where insightface's numpy is.

use image::RgbImage;

use crate::cv::resize_linear;

/// The image resized into the top-left corner of a black detection canvas.
pub struct Letterbox {
    pub canvas: RgbImage,
    /// Size of the resized image inside the canvas.
    pub width: u32,
    pub height: u32,
    /// `new_height / image_height`: boxes and keypoints are divided by it.
    pub det_scale: f64,
}

/// insightface's letterbox: keep the aspect ratio with `int()` truncation, `cv2.resize` into
/// the top-left of an `input_w × input_h` zero canvas. `None` if a side would round to 0.
pub fn letterbox(img: &RgbImage, input_w: u32, input_h: u32) -> Option<Letterbox> {
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 || input_w == 0 || input_h == 0 {
        return None;
    }
    let im_ratio = f64::from(h) / f64::from(w);
    let model_ratio = f64::from(input_h) / f64::from(input_w);
    let (new_w, new_h) = if im_ratio > model_ratio {
        ((f64::from(input_h) / im_ratio) as u32, input_h)
    } else {
        (input_w, (f64::from(input_w) * im_ratio) as u32)
    };
    if new_w == 0 || new_h == 0 {
        return None;
    }
    let resized = resize_linear(img, new_w, new_h);
    let mut canvas = RgbImage::new(input_w, input_h);
    let row = new_w as usize * 3;
    for (y, src) in resized.as_raw().chunks_exact(row).enumerate() {
        let start = y * input_w as usize * 3;
        canvas.as_mut()[start..start + row].copy_from_slice(src);
    }
    Some(Letterbox {
        canvas,
        width: new_w,
        height: new_h,
        det_scale: f64::from(new_h) / f64::from(h),
    })
}

/// `cv2.dnn.blobFromImage(bgr, 1/std, size, (mean,)*3, swapRB=True)` of an RGB image: NCHW
/// planes in RGB order, `(px − mean) / std` evaluated in double and stored as float.
pub fn blob(img: &RgbImage, mean: f64, std: f64) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let scale = 1.0 / std;
    let mut out = vec![0f32; 3 * w * h];
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * w * h + i] = ((f64::from(px[c]) - mean) * scale) as f32;
        }
    }
    out
}

/// How a detector's outputs are laid out, from their count (insightface's rule).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub strides: Vec<usize>,
    pub anchors: usize,
    pub keypoints: bool,
}

impl Layout {
    /// 6/9 outputs: strides 8/16/32 with 2 anchors, without/with keypoints; 10/15: strides
    /// 8…128 with 1 anchor. Other counts are not SCRFD.
    pub fn from_output_count(n: usize) -> Option<Layout> {
        let (strides, anchors) = match n {
            6 | 9 => (vec![8, 16, 32], 2),
            10 | 15 => (vec![8, 16, 32, 64, 128], 1),
            _ => return None,
        };
        Some(Layout {
            strides,
            anchors,
            keypoints: n == 9 || n == 15,
        })
    }
}

/// One output tensor: its shape and data.
pub struct Output<'a> {
    pub shape: Vec<usize>,
    pub data: &'a [f32],
}

/// A detection in detector-input pixels (before `det_scale`), or in image pixels after.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub bbox: [f32; 4],
    pub score: f32,
    pub kps: Option<[[f32; 2]; 5]>,
}

/// The rows of an output: rank 3 outputs are batched (`[0]` is taken), rank 2 are not.
fn rows<'a>(
    o: &Output<'a>,
    width: usize,
    expect_rows: usize,
    what: &str,
) -> Result<&'a [f32], String> {
    let (n, w) = match o.shape.as_slice() {
        [1, n, w] | [n, w] => (*n, *w),
        s => {
            return Err(format!(
                "{what} output has shape {s:?}, expected [N, {width}] or [1, N, {width}]"
            ))
        }
    };
    if w != width || n != expect_rows || o.data.len() < n * w {
        return Err(format!(
            "{what} output has shape {:?}, expected {expect_rows} rows of {width}",
            o.shape
        ));
    }
    Ok(&o.data[..n * w])
}

/// Anchor decoding over every stride (outputs by position: scores, boxes, keypoints, each by
/// ascending stride), keeping `score >= threshold`, in stride then anchor order.
pub fn decode(
    outputs: &[Output],
    layout: &Layout,
    input_w: usize,
    input_h: usize,
    threshold: f32,
) -> Result<Vec<Candidate>, String> {
    let fmc = layout.strides.len();
    let need = fmc * if layout.keypoints { 3 } else { 2 };
    if outputs.len() != need {
        return Err(format!(
            "{} outputs, the layout needs {need}",
            outputs.len()
        ));
    }
    let mut out = Vec::new();
    for (idx, &stride) in layout.strides.iter().enumerate() {
        let (fh, fw) = (input_h / stride, input_w / stride);
        let n = fh * fw * layout.anchors;
        let scores = rows(&outputs[idx], 1, n, &format!("score (stride {stride})"))?;
        let boxes = rows(&outputs[idx + fmc], 4, n, &format!("box (stride {stride})"))?;
        let kps = match layout.keypoints {
            true => Some(rows(
                &outputs[idx + 2 * fmc],
                10,
                n,
                &format!("keypoint (stride {stride})"),
            )?),
            false => None,
        };
        let s = stride as f32;
        for (i, &score) in scores.iter().enumerate() {
            // NaN scores fail the comparison, as in numpy.
            if score.is_nan() || score < threshold {
                continue;
            }
            let cell = i / layout.anchors;
            let (cx, cy) = (((cell % fw) * stride) as f32, ((cell / fw) * stride) as f32);
            let d = &boxes[i * 4..i * 4 + 4];
            let bbox = [cx - d[0] * s, cy - d[1] * s, cx + d[2] * s, cy + d[3] * s];
            let kps = kps.map(|k| {
                let k = &k[i * 10..i * 10 + 10];
                std::array::from_fn(|p| [cx + k[2 * p] * s, cy + k[2 * p + 1] * s])
            });
            out.push(Candidate { bbox, score, kps });
        }
    }
    Ok(out)
}

/// `np.maximum`/`np.minimum`: NaN propagates.
fn np_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a >= b {
        a
    } else {
        b
    }
}

fn np_min(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a <= b {
        a
    } else {
        b
    }
}

/// Indices sorting by descending score, ties in input order (`argsort(-s, kind='stable')`).
pub fn stable_order(dets: &[Candidate]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..dets.len()).collect();
    order.sort_by(|&a, &b| {
        (-dets[a].score)
            .partial_cmp(&-dets[b].score)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    order
}

/// insightface's greedy NMS: boxes visited by descending score (stable), each kept box drops
/// the rest whose IoU (areas `(x2−x1+1)(y2−y1+1)`) exceeds `thresh`. Returns kept indices.
pub fn nms(dets: &[Candidate], thresh: f32) -> Vec<usize> {
    let area = |b: &[f32; 4]| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0);
    let mut order = stable_order(dets);
    let mut keep = Vec::new();
    while let Some((&i, rest)) = order.split_first() {
        keep.push(i);
        let bi = &dets[i].bbox;
        let ai = area(bi);
        order = rest
            .iter()
            .copied()
            .filter(|&j| {
                let bj = &dets[j].bbox;
                let w = np_max(0.0, np_min(bi[2], bj[2]) - np_max(bi[0], bj[0]) + 1.0);
                let h = np_max(0.0, np_min(bi[3], bj[3]) - np_max(bi[1], bj[1]) + 1.0);
                let inter = w * h;
                inter / (ai + area(bj) - inter) <= thresh
            })
            .collect();
    }
    keep
}

/// From decoded candidates to insightface's detections: sorted by score (stable), scaled back
/// to image pixels (`/ det_scale` in float32), NMS, in the order kept.
pub fn postprocess(mut cands: Vec<Candidate>, det_scale: f64, nms_thresh: f32) -> Vec<Candidate> {
    let s = det_scale as f32;
    for c in &mut cands {
        c.bbox = c.bbox.map(|v| v / s);
        if let Some(k) = &mut c.kps {
            *k = k.map(|p| [p[0] / s, p[1] / s]);
        }
    }
    let order = stable_order(&cands);
    let sorted: Vec<Candidate> = order.iter().map(|&i| cands[i].clone()).collect();
    nms(&sorted, nms_thresh)
        .into_iter()
        .map(|i| sorted[i].clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(bbox: [f32; 4], score: f32) -> Candidate {
        Candidate {
            bbox,
            score,
            kps: None,
        }
    }

    #[test]
    fn letterbox_keeps_aspect_truncates_and_pastes_top_left() {
        let img = RgbImage::from_pixel(300, 199, image::Rgb([9, 99, 200]));
        let lb = letterbox(&img, 640, 640).expect("fits");
        // 640 · 199/300 = 424.53… → 424 (int() truncation), det_scale = 424/199.
        assert_eq!((lb.width, lb.height), (640, 424));
        assert_eq!(lb.det_scale, 424.0 / 199.0);
        assert_eq!(lb.canvas.get_pixel(639, 423).0, [9, 99, 200]);
        assert_eq!(lb.canvas.get_pixel(0, 424).0, [0, 0, 0]);
        let tall = letterbox(&RgbImage::new(199, 300), 640, 640).expect("fits");
        assert_eq!((tall.width, tall.height), (424, 640));
        assert_eq!(tall.det_scale, 640.0 / 300.0);
        let wide = letterbox(&RgbImage::new(10, 5), 640, 320).expect("fits");
        assert_eq!((wide.width, wide.height), (640, 320));
        assert!(
            letterbox(&RgbImage::new(5000, 1), 640, 640).is_none(),
            "a side of 0 px"
        );
    }

    #[test]
    fn blob_is_planar_rgb_normalised() {
        let img = RgbImage::from_raw(2, 1, vec![0, 128, 255, 10, 20, 30]).expect("2x1");
        let b = blob(&img, 127.5, 128.0);
        assert_eq!(
            b,
            vec![
                -127.5 / 128.0,
                10.0 / 128.0 - 127.5 / 128.0,
                0.5 / 128.0,
                -107.5 / 128.0,
                127.5 / 128.0,
                -97.5 / 128.0
            ]
        );
    }

    /// Outputs for a `w × h` input with every score 0 except `hot` (output, row) = 0.9, boxes
    /// (1, 2, 3, 4) and keypoints 0.1·k everywhere.
    fn outputs(
        layout: &Layout,
        w: usize,
        h: usize,
        hot: &[(usize, usize)],
        batched: bool,
    ) -> Vec<(Vec<usize>, Vec<f32>)> {
        let mut outs = Vec::new();
        for (part, width) in [(0, 1), (1, 4), (2, 10)] {
            if part == 2 && !layout.keypoints {
                break;
            }
            for (si, s) in layout.strides.iter().enumerate() {
                let n = (w / s) * (h / s) * layout.anchors;
                let data: Vec<f32> = (0..n * width)
                    .map(|k| match part {
                        0 => f32::from(u8::from(hot.contains(&(si, k)))) * 0.9,
                        1 => [1.0, 2.0, 3.0, 4.0][k % 4],
                        _ => 0.1 * (k % 10) as f32,
                    })
                    .collect();
                let shape = if batched {
                    vec![1, n, width]
                } else {
                    vec![n, width]
                };
                outs.push((shape, data));
            }
        }
        outs
    }

    fn run_decode(
        layout: &Layout,
        w: usize,
        h: usize,
        hot: &[(usize, usize)],
        batched: bool,
    ) -> Vec<Candidate> {
        let outs = outputs(layout, w, h, hot, batched);
        let views: Vec<Output> = outs
            .iter()
            .map(|(s, d)| Output {
                shape: s.clone(),
                data: d,
            })
            .collect();
        decode(&views, layout, w, h, 0.5).expect("decodes")
    }

    #[test]
    fn anchors_are_row_major_with_consecutive_anchors() {
        // 3 strides, 2 anchors, keypoints; 64x32 input: stride 8 is 8 cells wide.
        let layout = Layout::from_output_count(9).expect("9");
        // Row 21 of stride 8 = cell 10 (x = 2, y = 1), anchor 1.
        let c = run_decode(&layout, 64, 32, &[(0, 21)], false);
        assert_eq!(c.len(), 1);
        let (cx, cy) = (16.0, 8.0);
        assert_eq!(c[0].bbox, [cx - 8.0, cy - 16.0, cx + 24.0, cy + 32.0]);
        let k = c[0].kps.expect("keypoints");
        assert_eq!(k[0], [cx, cy + 0.1 * 8.0]);
        assert_eq!(k[4], [cx + 0.8 * 8.0, cy + 0.90000004 * 8.0]);
        // Rank-3 (batched) outputs decode the same; stride 32 row 1 = cell 0, anchor 1.
        let b = run_decode(&layout, 64, 32, &[(0, 21), (2, 1)], true);
        assert_eq!(b[0], c[0]);
        assert_eq!(b[1].bbox, [-32.0, -64.0, 96.0, 128.0]);
    }

    #[test]
    fn five_strides_one_anchor_without_keypoints() {
        let layout = Layout::from_output_count(10).expect("10");
        assert_eq!(layout.strides, [8, 16, 32, 64, 128]);
        assert!(!layout.keypoints);
        // 256x128: stride 128 has 2x1 cells; row 1 = x 128.
        let c = run_decode(&layout, 256, 128, &[(4, 1), (1, 0)], false);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].bbox, [-16.0, -32.0, 48.0, 64.0]);
        assert_eq!(c[1].bbox, [128.0 - 128.0, -256.0, 128.0 + 384.0, 512.0]);
        assert!(c.iter().all(|c| c.kps.is_none()));
        assert!(Layout::from_output_count(15).expect("15").keypoints);
        assert!(Layout::from_output_count(7).is_none());
    }

    #[test]
    fn wrong_output_shapes_are_errors() {
        let layout = Layout::from_output_count(6).expect("6");
        let mut outs = outputs(&layout, 64, 64, &[], false);
        outs[1].0 = vec![3, 1];
        let views: Vec<Output> = outs
            .iter()
            .map(|(s, d)| Output {
                shape: s.clone(),
                data: d,
            })
            .collect();
        let e = decode(&views, &layout, 64, 64, 0.5).expect_err("bad shape");
        assert!(e.contains("stride 16"), "{e}");
        assert!(decode(&views[..5], &layout, 64, 64, 0.5).is_err());
    }

    #[test]
    fn threshold_is_inclusive() {
        let layout = Layout::from_output_count(6).expect("6");
        let mut outs = outputs(&layout, 32, 32, &[], false);
        outs[0].1[3] = 0.5;
        outs[0].1[4] = 0.49999997;
        let views: Vec<Output> = outs
            .iter()
            .map(|(s, d)| Output {
                shape: s.clone(),
                data: d,
            })
            .collect();
        assert_eq!(
            decode(&views, &layout, 32, 32, 0.5).expect("decodes").len(),
            1
        );
    }

    #[test]
    fn nms_keeps_equal_scores_in_input_order_and_uses_plus_one_areas() {
        // Two identical boxes with equal scores: the first survives (stable order).
        let d = [
            cand([0.0, 0.0, 9.0, 9.0], 0.8),
            cand([0.0, 0.0, 9.0, 9.0], 0.8),
            cand([50.0, 50.0, 60.0, 60.0], 0.9),
        ];
        assert_eq!(nms(&d, 0.4), vec![2, 0]);
        // "+1" areas: [0,9]² has area 100; shifted by 5 the overlap is 5x10 = 50, IoU 1/3.
        let d = [
            cand([0.0, 0.0, 9.0, 9.0], 0.9),
            cand([5.0, 0.0, 14.0, 9.0], 0.8),
        ];
        assert_eq!(nms(&d, 0.4), vec![0, 1]);
        assert_eq!(nms(&d, 0.3), vec![0]);
        // IoU exactly at the threshold is kept (ovr <= thresh).
        let d = [
            cand([0.0, 0.0, 0.0, 9.0], 0.9),
            cand([0.0, 0.0, 0.0, 4.0], 0.8),
        ];
        assert_eq!(nms(&d, 0.5), vec![0, 1]);
    }

    #[test]
    fn postprocess_scales_sorts_and_suppresses() {
        let cands = vec![
            cand([0.0, 0.0, 20.0, 20.0], 0.6),
            cand([1.0, 1.0, 21.0, 21.0], 0.9),
            cand([100.0, 0.0, 120.0, 20.0], 0.7),
        ];
        let out = postprocess(cands, 2.0, 0.4);
        assert_eq!(out.iter().map(|c| c.score).collect::<Vec<_>>(), [0.9, 0.7]);
        assert_eq!(out[0].bbox, [0.5, 0.5, 10.5, 10.5]);
    }
}
