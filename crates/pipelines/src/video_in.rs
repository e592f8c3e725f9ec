//! Reading videos that users give as conditions: an H.264 MP4 (demuxed with the `mp4` crate,
//! decoded with OpenH264) or a folder of image frames (sorted by name).

use std::path::Path;

use openh264::decoder::{DecodedYUV, Decoder, DecoderConfig};
use openh264::formats::YUVSource;
use openh264::OpenH264API;

use crate::image::RgbImage;
use crate::video::VideoError;

/// At most this many frames are read from one video (LTX-Video makes at most 257).
pub const MAX_FRAMES: usize = 1024;

/// The frames of `path`: an `.mp4` file (its first H.264 track) or a folder of PNG, JPEG or
/// WebP frames in name order. At most [`MAX_FRAMES`].
pub fn read_video(path: &Path) -> Result<Vec<RgbImage>, VideoError> {
    if path.is_dir() {
        read_frame_folder(path)
    } else {
        read_mp4(path)
    }
}

fn bad(path: &Path, why: impl std::fmt::Display) -> VideoError {
    VideoError::Read(format!("{}: {why}", path.display()))
}

fn read_frame_folder(dir: &Path) -> Result<Vec<RgbImage>, VideoError> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| bad(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                ["png", "jpg", "jpeg", "webp"].contains(&e.to_ascii_lowercase().as_str())
            })
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(bad(dir, "no PNG, JPEG or WebP frames in the folder"));
    }
    if files.len() > MAX_FRAMES {
        return Err(bad(
            dir,
            format!("{} frames, at most {MAX_FRAMES}", files.len()),
        ));
    }
    files
        .iter()
        .map(|f| {
            let img = image::ImageReader::open(f)
                .and_then(|r| r.with_guessed_format())
                .map_err(|e| bad(f, e))?
                .decode()
                .map_err(|e| bad(f, e))?
                .to_rgb8();
            Ok(RgbImage::from(img))
        })
        .collect()
}

fn to_rgb(pic: &DecodedYUV<'_>) -> RgbImage {
    let (width, height) = pic.dimensions();
    let mut data = vec![0u8; width * height * 3];
    pic.write_rgb8(&mut data);
    RgbImage {
        width,
        height,
        data,
    }
}

/// The first H.264 track of an MP4, every sample decoded in order.
pub fn read_mp4(path: &Path) -> Result<Vec<RgbImage>, VideoError> {
    let file = std::fs::File::open(path).map_err(|e| bad(path, e))?;
    let size = file.metadata().map_err(|e| bad(path, e))?.len();
    let mut mp4 = mp4::Mp4Reader::read_header(std::io::BufReader::new(file), size)
        .map_err(|e| bad(path, format!("not a readable MP4: {e}")))?;
    let mut ids: Vec<u32> = mp4
        .tracks()
        .values()
        .filter(|t| matches!(t.media_type(), Ok(mp4::MediaType::H264)))
        .map(|t| t.track_id())
        .collect();
    ids.sort();
    let Some(&id) = ids.first() else {
        return Err(bad(path, "no H.264 video track (only H.264 MP4s are read)"));
    };
    let track = &mp4.tracks()[&id];
    let avc1 = track
        .trak
        .mdia
        .minf
        .stbl
        .stsd
        .avc1
        .as_ref()
        .ok_or_else(|| bad(path, "no avc1 sample description"))?;
    let length_size = usize::from(avc1.avcc.length_size_minus_one & 3) + 1;
    let start = [0u8, 0, 0, 1];
    let mut header = Vec::new();
    for nal in avc1
        .avcc
        .sequence_parameter_sets
        .iter()
        .chain(&avc1.avcc.picture_parameter_sets)
    {
        header.extend_from_slice(&start);
        header.extend_from_slice(&nal.bytes);
    }
    let count = mp4.sample_count(id).map_err(|e| bad(path, e))?;
    if count as usize > MAX_FRAMES {
        return Err(bad(path, format!("{count} frames, at most {MAX_FRAMES}")));
    }
    let err = |e: openh264::Error| bad(path, format!("H.264 decoding: {e}"));
    let mut dec =
        Decoder::with_api_config(OpenH264API::from_source(), DecoderConfig::new()).map_err(err)?;
    let mut frames = Vec::with_capacity(count as usize);
    for i in 1..=count {
        let Some(sample) = mp4.read_sample(id, i).map_err(|e| bad(path, e))? else {
            continue;
        };
        // Length-prefixed NAL units → Annex B, the parameter sets before the first.
        let mut packet = if i == 1 { header.clone() } else { Vec::new() };
        let mut rest: &[u8] = &sample.bytes;
        while !rest.is_empty() {
            if rest.len() < length_size {
                return Err(bad(path, format!("sample {i}: a truncated NAL length")));
            }
            let len = rest[..length_size]
                .iter()
                .fold(0usize, |n, &b| (n << 8) | usize::from(b));
            let body = rest.get(length_size..length_size + len).ok_or_else(|| {
                bad(
                    path,
                    format!("sample {i}: a NAL unit past the sample's end"),
                )
            })?;
            packet.extend_from_slice(&start);
            packet.extend_from_slice(body);
            rest = &rest[length_size + len..];
        }
        if let Some(pic) = dec.decode(&packet).map_err(err)? {
            frames.push(to_rgb(&pic));
        }
    }
    for pic in dec.flush_remaining().map_err(err)? {
        frames.push(to_rgb(&pic));
    }
    if frames.is_empty() {
        return Err(bad(path, "the video decoded to no frames"));
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn an_mp4_we_write_reads_back_close_to_its_frames() {
        let (n, h, w) = (9i64, 48i64, 64i64);
        // Smooth gradients (no wrap-around edges) that move per frame.
        let mut data = Vec::with_capacity((n * h * w * 3) as usize);
        for f in 0..n {
            for y in 0..h {
                for x in 0..w {
                    data.push((x * 3 + f * 4) as u8);
                    data.push((y * 5) as u8);
                    data.push((x + y + f * 7) as u8);
                }
            }
        }
        let frames = Tensor::from_slice(&data).reshape([n, h, w, 3]);
        let dir = std::env::temp_dir().join(format!("ltx-read-mp4-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.mp4");
        crate::video::write_mp4(&frames, 24.0, &path).unwrap();
        let back = read_mp4(&path).unwrap();
        assert_eq!(back.len(), n as usize);
        let mse = |img: &RgbImage, j: i64| {
            let want = frames.get(j).to_kind(Kind::Float);
            let got = Tensor::from_slice(&img.data)
                .reshape([h, w, 3])
                .to_kind(Kind::Float);
            (got - want).square().mean(Kind::Float).double_value(&[])
        };
        for (i, img) in back.iter().enumerate() {
            assert_eq!((img.width, img.height), (w as usize, h as usize));
            let psnr = 10.0 * (255.0f64 * 255.0 / mse(img, i as i64).max(1e-9)).log10();
            // QP 22 and yuv420p on smooth gradients: about 40 dB; a wrong colour matrix or a
            // channel swap falls far below, and each frame must match its own source best.
            assert!(psnr > 35.0, "frame {i}: PSNR {psnr:.1} dB");
            let best = (0..n)
                .min_by(|&a, &b| mse(img, a).total_cmp(&mse(img, b)))
                .unwrap();
            assert_eq!(best, i as i64, "frame {i} decoded out of order");
        }
        // Not a video: a clear error naming the file.
        std::fs::write(dir.join("x.mp4"), b"not an mp4").unwrap();
        let e = read_mp4(&dir.join("x.mp4")).unwrap_err().to_string();
        assert!(
            e.contains("x.mp4") && e.contains("not a readable MP4"),
            "{e}"
        );
        // A folder of frames, in name order.
        let frames_dir = dir.join("frames");
        crate::video::write_pngs(&frames.narrow(0, 0, 3), &frames_dir).unwrap();
        let pngs = read_video(&frames_dir).unwrap();
        assert_eq!(pngs.len(), 3);
        assert_eq!(
            pngs[2].data,
            Vec::<u8>::try_from(frames.get(2).flatten(0, -1)).unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
