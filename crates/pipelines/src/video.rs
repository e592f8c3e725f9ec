//! Video output for generated frames: an H.264 MP4 (OpenH264 encoder, `mp4` muxer) or a folder
//! of PNGs.
//!
//! Frames come in as a `[F, H, W, 3]` float32 tensor in [0, 1] or uint8 (RGB, row-major, top row first),
//! which is what the LTX-Video pipeline produces after its VAE post-processing.
//!
//! * **uint8 conversion** ([`frames_to_u8`]): `(clamp(x, 0, 1) * 255)` computed in f32 and
//!   truncated, exactly like diffusers' `export_to_video` does for numpy frames
//!   (`(frame * 255).astype(np.uint8)` after the pipeline's `[0, 1]` clamp). NaN maps to 0.
//! * **Colour conversion** (MP4 only): RGB → Y′CbCr with the BT.601 matrix in limited ("TV")
//!   range (Y 16..=235, Cb/Cr 16..=240), rounded to nearest, chroma subsampled 4:2:0 by
//!   averaging each 2×2 block of RGB before the matrix. Same matrix and range as ffmpeg's
//!   default `rgb24 → yuv420p` conversion (so as diffusers' imageio/ffmpeg export), and the
//!   SPS's VUI states it (matrix SMPTE 170M = BT.601, limited range; BT.709 primaries and
//!   transfer, the sRGB-compatible values for generated content), so browsers and ffmpeg
//!   convert back with the right matrix instead of guessing.
//! * **Encoder** ([`write_mp4`]): OpenH264, Constrained Baseline profile (CAVLC, no B-frames:
//!   plays in every browser), level chosen by the encoder from size and rate (3.0 for
//!   768×512 at 24 fps), constant quantiser [`QP`] on every macroblock of every frame, no frame
//!   skipping, an IDR keyframe every [`KEYFRAME_INTERVAL_S`] seconds (for seeking), one slice,
//!   one thread (byte-for-byte deterministic output).
//! * **Container**: ISO BMFF (`isom`/`avc1`), one `avc1` video track whose `avcC` carries the
//!   encoder's SPS/PPS; samples are the frames' NAL units in 4-byte length-prefixed (AVCC)
//!   form, IDR frames marked as sync samples. The frame rate is stored as an exact rational
//!   (24 → timescale 24000, 1000 per frame; 23.976 → 24000 and 1001), so every sample has the
//!   same duration and the track lasts exactly `F / fps` seconds. The `moov` box follows the
//!   media data (the `mp4` crate writes it last); browsers handle that with range requests.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use openh264::encoder::{
    BitRate, ColorPrimaries, Complexity, Encoder, EncoderConfig, FrameRate, IntraFramePeriod,
    MatrixCoefficients, Profile, QpRange, RateControlMode, TransferCharacteristics, VuiConfig,
};
use openh264::formats::YUVBuffer;
use openh264::OpenH264API;
use tch::{Device, Kind, Tensor};

/// Constant H.264 quantiser (0 best … 51 worst). Measured on ffmpeg's `testsrc2` at 768×512,
/// 24 fps: 43 dB RGB PSNR at 2 Mbit/s, where libx264 CRF 25 (diffusers' default export, High
/// profile with CABAC and B-frames, hence fewer bits) gives 40 dB at 1 Mbit/s. Detailed
/// content costs more (a Mandelbrot zoom: 4.3 Mbit/s).
pub const QP: u8 = 22;

/// Target distance between IDR keyframes, in seconds (seek granularity in a browser).
pub const KEYFRAME_INTERVAL_S: f64 = 2.0;

/// Accepted frame rates, in frames per second.
pub const FPS_RANGE: std::ops::RangeInclusive<f64> = 0.01..=1000.0;

/// Largest denominator tried when storing `fps` as a rational (1001 makes NTSC rates exact).
const MAX_FPS_DENOMINATOR: u64 = 1001;

/// Everything that can go wrong when writing video. Each variant names the offending value.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("frames must be a [F, H, W, 3] tensor with H, W > 0, got shape {shape:?}")]
    Shape { shape: Vec<i64> },
    #[error("frames must be float32 in [0, 1] or uint8, got {kind}")]
    Dtype { kind: String },
    #[error("yuv420 H.264 needs an even width and height, got {width}x{height} (width x height)")]
    OddSize { width: i64, height: i64 },
    #[error(
        "the H.264 encoder supports 16x16 up to 3840x2160 or 2160x3840, got {width}x{height} \
         (width x height)"
    )]
    UnsupportedSize { width: i64, height: i64 },
    #[error("an MP4 needs at least one frame, got shape {shape:?}")]
    NoFrames { shape: Vec<i64> },
    #[error(
        "fps must be finite and within {}..={}, got {fps}",
        FPS_RANGE.start(),
        FPS_RANGE.end()
    )]
    Fps { fps: f64 },
    #[error("H.264 encoder: {0}")]
    Encoder(String),
    /// Reading a video given as input (see `video_in`).
    #[error("reading a video: {0}")]
    Read(String),
    #[error("MP4 muxer, writing {}: {source}", path.display())]
    Mux {
        path: PathBuf,
        #[source]
        source: mp4::Error,
    },
    #[error("PNG encoder, writing {}: {source}", path.display())]
    Png {
        path: PathBuf,
        #[source]
        source: ::image::ImageError,
    },
    #[error("reading frames from the tensor: {0}")]
    Tensor(#[from] tch::TchError),
}

/// What [`write_mp4`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Mp4Info {
    /// Number of frames (= MP4 samples).
    pub frames: usize,
    pub width: u32,
    pub height: u32,
    /// The frame rate as stored in the file (`timescale / sample duration`); equals the
    /// requested fps up to the rational approximation (exact for integer and x/1001 rates).
    pub fps: f64,
    /// File size in bytes.
    pub bytes: u64,
}

/// Frame count, height and width of a validated `[F, H, W, 3]` float32 (values in [0, 1]) or
/// uint8 tensor.
#[derive(Debug, Clone, Copy)]
struct Dims {
    frames: usize,
    height: usize,
    width: usize,
}

fn validate(frames: &Tensor) -> Result<Dims, VideoError> {
    if !frames.defined() {
        return Err(VideoError::Shape { shape: Vec::new() });
    }
    let shape = frames.size();
    let &[f, h, w, c] = shape.as_slice() else {
        return Err(VideoError::Shape { shape });
    };
    if f < 0 || h <= 0 || w <= 0 || c != 3 {
        return Err(VideoError::Shape { shape });
    }
    match frames.f_kind() {
        Ok(Kind::Float | Kind::Uint8) => {}
        Ok(kind) => {
            return Err(VideoError::Dtype {
                kind: format!("{kind:?}"),
            })
        }
        Err(e) => {
            return Err(VideoError::Dtype {
                kind: e.to_string(),
            })
        }
    }
    Ok(Dims {
        frames: f as usize,
        height: h as usize,
        width: w as usize,
    })
}

/// diffusers' float → uint8: clamp to [0, 1], scale by 255 in f32, truncate toward zero.
/// (`as u8` maps NaN to 0.)
fn to_u8(x: f32) -> u8 {
    (x.clamp(0.0, 1.0) * 255.0) as u8
}

/// Frame `i` of a validated tensor as `H·W·3` RGB bytes. One frame at a time, so a long
/// clip never needs a second full-size float copy in memory.
fn frame_u8(frames: &Tensor, dims: Dims, i: usize) -> Result<Vec<u8>, VideoError> {
    let n = dims.height * dims.width * 3;
    let frame = frames
        .f_get(i as i64)?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?;
    if frame.kind() == Kind::Uint8 {
        // Already bytes (the pipeline's uint8 output).
        let mut bytes = vec![0u8; n];
        frame.f_copy_data(&mut bytes, n)?;
        return Ok(bytes);
    }
    let mut buf = vec![0f32; n];
    frame.f_copy_data(&mut buf, n)?;
    Ok(buf.into_iter().map(to_u8).collect())
}

/// Converts `[F, H, W, 3]` float32 frames to uint8 exactly like diffusers' `export_to_video`
/// for numpy frames: each value is clamped to [0, 1], multiplied by 255 (in f32) and truncated,
/// not rounded (0.999 → 254, 1.0 → 255; NaN → 0).
///
/// Returns one buffer per frame, each `H·W·3` bytes of interleaved RGB, rows top to bottom.
/// The tensor may live on any device; it is copied to the CPU one frame at a time.
pub fn frames_to_u8(frames: &Tensor) -> Result<Vec<Vec<u8>>, VideoError> {
    let dims = validate(frames)?;
    (0..dims.frames)
        .map(|i| frame_u8(frames, dims, i))
        .collect()
}

/// Writes `frame_00000.png`, `frame_00001.png`, … (8-bit RGB, the [`frames_to_u8`] bytes) into
/// `dir`, creating it (and its parents) if missing. Returns the paths in frame order.
/// Any size is accepted (no even-size constraint, unlike [`write_mp4`]).
pub fn write_pngs(frames: &Tensor, dir: &Path) -> Result<Vec<PathBuf>, VideoError> {
    let dims = validate(frames)?;
    let too_large = |_| VideoError::Shape {
        shape: frames.size(),
    };
    let width = u32::try_from(dims.width).map_err(too_large)?;
    let height = u32::try_from(dims.height).map_err(too_large)?;
    fs::create_dir_all(dir).map_err(|source| VideoError::Io {
        action: "creating directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths = Vec::with_capacity(dims.frames);
    for i in 0..dims.frames {
        let rgb = frame_u8(frames, dims, i)?;
        let path = dir.join(format!("frame_{i:05}.png"));
        ::image::save_buffer_with_format(
            &path,
            &rgb,
            width,
            height,
            ::image::ExtendedColorType::Rgb8,
            ::image::ImageFormat::Png,
        )
        .map_err(|source| VideoError::Png {
            path: path.clone(),
            source,
        })?;
        paths.push(path);
    }
    Ok(paths)
}

/// Writes the frames as an H.264 MP4 (yuv420p, Constrained Baseline, see the module docs for
/// the exact settings) at `fps` frames per second. Width and height must be even; `fps` must be
/// finite and within [`FPS_RANGE`]; there must be at least one frame. The file is created or
/// truncated; on a failure after that, the partial file is removed.
pub fn write_mp4(frames: &Tensor, fps: f64, path: &Path) -> Result<Mp4Info, VideoError> {
    let dims = validate(frames)?;
    if dims.frames == 0 {
        return Err(VideoError::NoFrames {
            shape: frames.size(),
        });
    }
    if dims.width % 2 != 0 || dims.height % 2 != 0 {
        return Err(VideoError::OddSize {
            width: dims.width as i64,
            height: dims.height as i64,
        });
    }
    let rate = FrameRateRational::new(fps)?;
    // OpenH264 rejects frames under 16 pixels on a side and over 3840x2160 (either
    // orientation); checked here so the error names the size rather than a native code.
    let (long, short) = (dims.width.max(dims.height), dims.width.min(dims.height));
    if short < 16 || long > 3840 || short > 2160 {
        return Err(VideoError::UnsupportedSize {
            width: dims.width as i64,
            height: dims.height as i64,
        });
    }

    let file = File::create(path).map_err(|source| VideoError::Io {
        action: "creating",
        path: path.to_path_buf(),
        source,
    })?;
    let result = encode_and_mux(frames, dims, rate, BufWriter::new(file), path);
    match result {
        Ok(()) => {
            let bytes = fs::metadata(path)
                .map_err(|source| VideoError::Io {
                    action: "reading the size of",
                    path: path.to_path_buf(),
                    source,
                })?
                .len();
            Ok(Mp4Info {
                frames: dims.frames,
                width: dims.width as u32,
                height: dims.height as u32,
                fps: rate.fps(),
                bytes,
            })
        }
        Err(e) => {
            // Best effort: a half-written MP4 (no moov box) is useless and misleading.
            let _ = fs::remove_file(path);
            Err(e)
        }
    }
}

/// `fps` as `num / den` with `den <= MAX_FPS_DENOMINATOR`, plus the MP4 timing derived from it:
/// `timescale = num · scale` ticks per second and `sample_duration = den · scale` ticks per
/// frame, with `scale` chosen so the timescale is ~1000× the frame rate (24 fps → 24000 and
/// 1000, 23.976 → 24000 and 1001), which keeps every duration an exact integer.
#[derive(Debug, Clone, Copy)]
struct FrameRateRational {
    num: u32,
    den: u32,
    timescale: u32,
    sample_duration: u32,
}

impl FrameRateRational {
    fn new(fps: f64) -> Result<Self, VideoError> {
        if !fps.is_finite() || !FPS_RANGE.contains(&fps) {
            return Err(VideoError::Fps { fps });
        }
        let (num, den) = best_rational(fps, MAX_FPS_DENOMINATOR);
        // Within FPS_RANGE, num <= 1000 · 1001 and num · scale <= ~1e6, and the approximation
        // is within 1/(2·1001) frame per second; checked anyway rather than trusted.
        let scale = (1000 / den).max(1);
        let timescale = num.checked_mul(scale).and_then(|t| u32::try_from(t).ok());
        let sample_duration = u32::try_from(den * scale).ok();
        match (timescale, sample_duration) {
            (Some(timescale), Some(sample_duration))
                if num > 0 && ((num as f64 / den as f64) / fps - 1.0).abs() < 1e-3 =>
            {
                Ok(Self {
                    num: num as u32,
                    den: den as u32,
                    timescale,
                    sample_duration,
                })
            }
            _ => Err(VideoError::Fps { fps }),
        }
    }

    fn fps(&self) -> f64 {
        f64::from(self.num) / f64::from(self.den)
    }
}

/// The fraction `p / q` with `q <= max_den` closest to `x`, smallest `q` on ties (so it is
/// in lowest terms): rates such as 24, 12.5, 23.976 or 24000/1001 come out exactly. A plain
/// search; `max_den` is about a thousand.
fn best_rational(x: f64, max_den: u64) -> (u64, u64) {
    let mut best = (0, 1);
    let mut best_err = f64::INFINITY;
    for q in 1..=max_den {
        let p = (x * q as f64).round();
        let err = (p / q as f64 - x).abs();
        // "Better" must beat float noise, or 24000/1000 could win over 24/1.
        if err < best_err - 1e-12 * x {
            best = (p as u64, q);
            best_err = err;
        }
    }
    best
}

/// RGB (interleaved, `width·height·3` bytes) → planar I420 (Y, then Cb, then Cr), BT.601
/// limited range, rounded. Coefficients are the exact BT.601 ones scaled by 2^16
/// (e.g. 0.299 · 219/255 · 65536 = 16829); the Cb/Cr rows sum to zero so grey stays at 128.
/// Chroma comes from the sum of each 2×2 block of RGB (box filter, centred between samples).
fn rgb_to_i420(rgb: &[u8], width: usize, height: usize) -> Vec<u8> {
    const Y: [i32; 3] = [16829, 33039, 6416];
    const CB: [i32; 3] = [-9714, -19070, 28784];
    const CR: [i32; 3] = [28784, -24103, -4681];
    let (cw, ch) = (width / 2, height / 2);
    let mut out = vec![0u8; width * height + 2 * cw * ch];
    let (y_plane, chroma) = out.split_at_mut(width * height);
    let (cb_plane, cr_plane) = chroma.split_at_mut(cw * ch);

    for (y_row, rgb_row) in y_plane
        .chunks_exact_mut(width)
        .zip(rgb.chunks_exact(width * 3))
    {
        for (y, px) in y_row.iter_mut().zip(rgb_row.chunks_exact(3)) {
            let (r, g, b) = (i32::from(px[0]), i32::from(px[1]), i32::from(px[2]));
            // Max is 16 + 219 = 235: fits a u8 without clamping.
            *y = (16 + ((Y[0] * r + Y[1] * g + Y[2] * b + (1 << 15)) >> 16)) as u8;
        }
    }

    let row_bytes = width * 3;
    for cy in 0..ch {
        let top = &rgb[2 * cy * row_bytes..][..row_bytes];
        let bottom = &rgb[(2 * cy + 1) * row_bytes..][..row_bytes];
        for cx in 0..cw {
            // Sums of the 2×2 block, per channel (0..=1020): the 1/4 goes into the shift.
            let mut s = [0i32; 3];
            for row in [top, bottom] {
                for px in row[6 * cx..][..6].chunks_exact(3) {
                    for (acc, &v) in s.iter_mut().zip(px) {
                        *acc += i32::from(v);
                    }
                }
            }
            let chroma = |m: [i32; 3]| {
                // Arithmetic shift floors, so adding half the divisor rounds to nearest.
                let v = (m[0] * s[0] + m[1] * s[1] + m[2] * s[2] + (1 << 17)) >> 18;
                (128 + v).clamp(16, 240) as u8
            };
            cb_plane[cy * cw + cx] = chroma(CB);
            cr_plane[cy * cw + cx] = chroma(CR);
        }
    }
    out
}

/// Splits an Annex-B byte stream (`00 00 01` / `00 00 00 01` start codes) into NAL unit
/// payloads without start codes. Trailing zero bytes are dropped: a NAL unit ends with the RBSP
/// stop bit, so its last byte is never zero, and the zeros belong to the next start code.
fn split_annex_b(stream: &[u8]) -> Vec<&[u8]> {
    let mut nals = Vec::new();
    let mut start = None;
    let mut i = 0;
    while i + 2 < stream.len() {
        if stream[i] == 0 && stream[i + 1] == 0 && stream[i + 2] == 1 {
            if let Some(s) = start {
                nals.push(&stream[s..i]);
            }
            i += 3;
            start = Some(i);
        } else {
            i += 1;
        }
    }
    if let Some(s) = start {
        nals.push(&stream[s..]);
    }
    nals.into_iter()
        .map(|nal| {
            let end = nal.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
            &nal[..end]
        })
        .filter(|nal| !nal.is_empty())
        .collect()
}

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;

fn nal_type(nal: &[u8]) -> u8 {
    nal[0] & 0x1f
}

/// One encoded frame, ready for the MP4: AVCC sample bytes and whether it is an IDR.
struct EncodedFrame {
    sample: Vec<u8>,
    is_idr: bool,
}

/// The OpenH264 encoder plus the parameter sets it has emitted so far.
struct H264Stream {
    encoder: Encoder,
    params: ParameterSets,
}

impl H264Stream {
    fn new(config: EncoderConfig) -> Result<Self, VideoError> {
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| VideoError::Encoder(e.to_string()))?;
        Ok(Self {
            encoder,
            params: ParameterSets::default(),
        })
    }

    /// Encodes frame `index` of the tensor into an AVCC sample.
    fn encode(
        &mut self,
        frames: &Tensor,
        dims: Dims,
        index: usize,
    ) -> Result<EncodedFrame, VideoError> {
        let rgb = frame_u8(frames, dims, index)?;
        let yuv = YUVBuffer::from_vec(
            rgb_to_i420(&rgb, dims.width, dims.height),
            dims.width,
            dims.height,
        );
        let annex_b = self
            .encoder
            .encode(&yuv)
            .map_err(|e| VideoError::Encoder(format!("frame {index}: {e}")))?
            .to_vec();
        to_avcc_sample(&annex_b, index, &mut self.params)
    }
}

/// Parameter sets of the stream (from the first IDR), for the `avcC` box.
#[derive(Default)]
struct ParameterSets {
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
}

/// Turns one frame's Annex-B output into an AVCC sample (4-byte big-endian lengths). SPS/PPS
/// are taken out (they live in `avcC`, as an `avc1` track requires); a repeated identical copy
/// before a later IDR is fine, a different one would need a second sample entry, so it is an
/// error (it cannot happen at a fixed size with a constant-ID encoder, but is checked).
fn to_avcc_sample(
    annex_b: &[u8],
    index: usize,
    params: &mut ParameterSets,
) -> Result<EncodedFrame, VideoError> {
    let mut sample = Vec::with_capacity(annex_b.len() + 16);
    let mut is_idr = false;
    let mut has_slice = false;
    for nal in split_annex_b(annex_b) {
        let t = nal_type(nal);
        let slot = match t {
            NAL_SPS => Some(&mut params.sps),
            NAL_PPS => Some(&mut params.pps),
            _ => None,
        };
        if let Some(slot) = slot {
            match slot {
                None => *slot = Some(nal.to_vec()),
                Some(prev) if prev.as_slice() == nal => {}
                Some(_) => {
                    return Err(VideoError::Encoder(format!(
                        "parameter set (NAL type {t}) changed at frame {index}"
                    )))
                }
            }
            continue;
        }
        // Coded slices are NAL types 1 (non-IDR) to 5 (IDR).
        has_slice |= (1..=NAL_IDR).contains(&t);
        is_idr |= t == NAL_IDR;
        let len = u32::try_from(nal.len()).map_err(|_| {
            VideoError::Encoder(format!("NAL unit of {} bytes at frame {index}", nal.len()))
        })?;
        sample.extend_from_slice(&len.to_be_bytes());
        sample.extend_from_slice(nal);
    }
    if !has_slice {
        // Rate-control frame skipping is disabled; if the encoder still returned nothing the
        // MP4 would silently lose a frame, so refuse.
        return Err(VideoError::Encoder(format!(
            "encoder produced no picture for frame {index}"
        )));
    }
    Ok(EncodedFrame { sample, is_idr })
}

/// The condition image through a one-frame H.264 video and back, as the diffusers docs do for
/// LTX-Video 0.9.7+ (trained on compressed video): scaled up to multiples of 16 like imageio's
/// writer (macroblocks), encoded as one IDR with our encoder at [`QP`], decoded with
/// OpenH264. The pixels are close to, not equal to, the replaced service's libx264 crf-25
/// round trip.
pub fn h264_round_trip(
    image: &crate::image::RgbImage,
) -> Result<crate::image::RgbImage, VideoError> {
    use openh264::decoder::{Decoder, DecoderConfig};
    let (w, h) = (
        image.width.div_ceil(16) * 16,
        image.height.div_ceil(16) * 16,
    );
    if w == 0 || h == 0 {
        return Err(VideoError::Encoder("an empty image".into()));
    }
    let img = image.resize_lanczos(w, h);
    let mut stream = H264Stream::new(encoder_config(1.0, w, h))?;
    let yuv = YUVBuffer::from_vec(rgb_to_i420(&img.data, w, h), w, h);
    let bits = stream
        .encoder
        .encode(&yuv)
        .map_err(|e| VideoError::Encoder(e.to_string()))?
        .to_vec();
    let err = |e: openh264::Error| VideoError::Encoder(format!("decoding the round trip: {e}"));
    let mut dec =
        Decoder::with_api_config(OpenH264API::from_source(), DecoderConfig::new()).map_err(err)?;
    let mut rgb = vec![0u8; w * h * 3];
    match dec.decode(&bits).map_err(err)? {
        Some(pic) => pic.write_rgb8(&mut rgb),
        None => match dec.flush_remaining().map_err(err)?.first() {
            Some(pic) => pic.write_rgb8(&mut rgb),
            None => {
                return Err(VideoError::Encoder(
                    "the round trip decoded no picture".into(),
                ))
            }
        },
    }
    Ok(crate::image::RgbImage {
        width: w,
        height: h,
        data: rgb,
    })
}

fn encoder_config(fps: f64, width: usize, height: usize) -> EncoderConfig {
    let gop = (fps * KEYFRAME_INTERVAL_S).round().clamp(1.0, 1e6) as u32;
    // OpenH264 clamps its frame rate to 1..=60 anyway; it only informs the level and rate
    // bookkeeping. The real timing is in the MP4.
    let fps = fps.clamp(1.0, 60.0);
    // OpenH264 wants a bitrate in every rate-control mode except "off"; with the QP pinned
    // it only feeds the level the SPS declares. 0.25 bit per pixel is about what QP 22
    // spends on ordinary content (testsrc2: 0.21), so the level is not understated.
    let bps = (0.25 * (width * height) as f64 * fps).clamp(64_000.0, 240_000_000.0) as u32;
    EncoderConfig::new()
        .profile(Profile::Baseline)
        // Constant QP. OpenH264's "rate control off" mode is fixed at QP 26 (the wrapper
        // cannot change it); its buffer-based mode clamps every frame's QP into the QP range,
        // so pinning the range to QP gives QP everywhere. That mode never skips frames (it has
        // no skip logic, and skipping is disabled as well), and unlike the quality/bitrate
        // modes it does not log a warning when skipping is off.
        .rate_control_mode(RateControlMode::Bufferbased)
        .bitrate(BitRate::from_bps(bps))
        .skip_frames(false)
        .qp(QpRange::new(QP, QP))
        // Per-macroblock QP offsets would undo the constant QP.
        .adaptive_quantization(false)
        .background_detection(false)
        // Scene-change detection would raise the QP on cuts and insert extra I-frames.
        .scene_change_detect(false)
        .complexity(Complexity::High)
        .max_frame_rate(FrameRate::from_hz(fps as f32))
        .intra_frame_period(IntraFramePeriod::from_num_frames(gop))
        .num_threads(1)
        .vui(
            VuiConfig::bt601()
                .color_primaries(ColorPrimaries::Bt709)
                .transfer_characteristics(TransferCharacteristics::Bt709)
                .matrix_coefficients(MatrixCoefficients::Smpte170M)
                .full_range(false),
        )
}

fn encode_and_mux(
    frames: &Tensor,
    dims: Dims,
    rate: FrameRateRational,
    out: BufWriter<File>,
    path: &Path,
) -> Result<(), VideoError> {
    let mut stream = H264Stream::new(encoder_config(rate.fps(), dims.width, dims.height))?;
    // The track's avcC needs the SPS/PPS, which exist only once the first frame is encoded,
    // so the muxer starts after it.
    let first = stream.encode(frames, dims, 0)?;
    let (Some(sps), Some(pps)) = (stream.params.sps.clone(), stream.params.pps.clone()) else {
        return Err(VideoError::Encoder(
            "the first frame carries no SPS/PPS".to_string(),
        ));
    };
    // avcC copies profile, compatibility and level from SPS bytes 1..=3 (and indexes them).
    if sps.len() < 4 || !first.is_idr {
        return Err(VideoError::Encoder(format!(
            "the first frame is not a usable IDR (SPS of {} bytes, IDR: {})",
            sps.len(),
            first.is_idr
        )));
    }
    let mux = |source| VideoError::Mux {
        path: path.to_path_buf(),
        source,
    };
    let config = mp4::Mp4Config {
        major_brand: (*b"isom").into(),
        minor_version: 512,
        compatible_brands: vec![
            (*b"isom").into(),
            (*b"iso2").into(),
            (*b"avc1").into(),
            (*b"mp41").into(),
        ],
        // Same timescale for movie and track: the mp4 crate converts each sample duration to
        // movie units with an integer division, which is then exact.
        timescale: rate.timescale,
    };
    let mut writer = mp4::Mp4Writer::write_start(out, &config).map_err(mux)?;
    writer
        .add_track(&mp4::TrackConfig {
            track_type: mp4::TrackType::Video,
            timescale: rate.timescale,
            language: "und".to_string(),
            media_conf: mp4::MediaConfig::AvcConfig(mp4::AvcConfig {
                // write_mp4 checked the size against 3840x2160, so these fit in u16.
                width: dims.width as u16,
                height: dims.height as u16,
                seq_param_set: sps,
                pic_param_set: pps,
            }),
        })
        .map_err(mux)?;

    let mut frame = first;
    for i in 0..dims.frames {
        if i > 0 {
            frame = stream.encode(frames, dims, i)?;
        }
        let sample = mp4::Mp4Sample {
            start_time: i as u64 * u64::from(rate.sample_duration),
            duration: rate.sample_duration,
            rendering_offset: 0,
            is_sync: frame.is_idr,
            bytes: mp4::Bytes::from(std::mem::take(&mut frame.sample)),
        };
        // Track IDs start at 1.
        writer.write_sample(1, &sample).map_err(mux)?;
    }
    writer.write_end().map_err(mux)?;
    writer
        .into_writer()
        .flush()
        .map_err(|source| VideoError::Io {
            action: "writing",
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annex_b_splits_on_3_and_4_byte_start_codes() {
        let stream = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 0, 0, 3, 9,
        ];
        assert_eq!(
            split_annex_b(&stream),
            [&[0x67, 1, 2][..], &[0x68, 3], &[0x65, 0, 0, 3, 9]]
        );
        assert!(split_annex_b(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn i420_is_bt601_limited_range() {
        // 2x2 of one colour: Y, then Cb, then Cr.
        let px = |r: u8, g: u8, b: u8| rgb_to_i420(&[r, g, b].repeat(4), 2, 2);
        assert_eq!(px(0, 0, 0), [16, 16, 16, 16, 128, 128]);
        assert_eq!(px(255, 255, 255), [235, 235, 235, 235, 128, 128]);
        assert_eq!(px(128, 128, 128)[4..], [128, 128]);
        // Pure red: Y = 16 + 0.299·219 = 81.48, Cb = 128 − 0.1482·255 = 90.2,
        // Cr = 128 + 112 = 240.
        assert_eq!(px(255, 0, 0), [81, 81, 81, 81, 90, 240]);
    }

    #[test]
    fn frame_rates_become_exact_rationals() {
        let r = FrameRateRational::new(24.0).unwrap();
        assert_eq!(
            (r.num, r.den, r.timescale, r.sample_duration),
            (24, 1, 24000, 1000)
        );
        let r = FrameRateRational::new(30000.0 / 1001.0).unwrap();
        assert_eq!(
            (r.num, r.den, r.timescale, r.sample_duration),
            (30000, 1001, 30000, 1001)
        );
        let r = FrameRateRational::new(12.5).unwrap();
        assert_eq!((r.timescale, r.sample_duration), (12500, 1000));
        assert!(FrameRateRational::new(f64::NAN).is_err());
    }
}
