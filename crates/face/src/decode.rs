//! Decoding a user's photo as InstantID's `load_image` does (PIL `exif_transpose`, then RGB):
//! EXIF orientation applied, alpha dropped (not blended), grey expanded; the pixel count is
//! checked from the header before any pixel is decoded.

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::error::{FaceError, Result};

/// Decodes PNG, JPEG or WebP `bytes` of at most `max_pixels` pixels into upright RGB.
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(FaceError::Image("the file is empty".into()));
    }
    let unreadable = |e: image::ImageError| {
        FaceError::Image(format!("not a readable PNG, JPEG or WebP image: {e}"))
    };
    let mut decoder = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| FaceError::Image(format!("unreadable: {e}")))?
        .into_decoder()
        .map_err(unreadable)?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(FaceError::Image(format!(
            "{w}x{h} = {pixels} pixels exceeds the limit of {max_pixels} pixels"
        )));
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(16));
    decoder.set_limits(limits).map_err(unreadable)?;
    let orientation = decoder.orientation().map_err(unreadable)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(unreadable)?;
    img.apply_orientation(orientation);
    Ok(img.to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgba, RgbaImage};

    fn png(img: &RgbaImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(
                img.as_raw(),
                img.width(),
                img.height(),
                image::ExtendedColorType::Rgba8,
            )
            .expect("encode");
        out
    }

    #[test]
    fn alpha_is_dropped_not_blended() {
        let img = RgbaImage::from_pixel(3, 2, Rgba([200, 100, 50, 0]));
        let rgb = decode_image(&png(&img), 100).expect("decodes");
        assert_eq!(rgb.get_pixel(1, 1).0, [200, 100, 50]);
    }

    #[test]
    fn pixel_limit_is_checked_before_decoding() {
        let img = RgbaImage::new(20, 10);
        let e = decode_image(&png(&img), 199).expect_err("over the limit");
        assert!(
            e.to_string()
                .contains("20x10 = 200 pixels exceeds the limit of 199"),
            "{e}"
        );
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A 2x1 JPEG-free case: PNG with an eXIf chunk saying "rotate 90° clockwise" (6).
        let img = RgbaImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                Rgba([255, 0, 0, 255])
            } else {
                Rgba([0, 0, 255, 255])
            }
        });
        let plain = png(&img);
        let exif: &[u8] = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00";
        let mut chunk = (exif.len() as u32).to_be_bytes().to_vec();
        chunk.extend_from_slice(b"eXIf");
        chunk.extend_from_slice(exif);
        let crc = crc32(&chunk[4..]);
        chunk.extend_from_slice(&crc.to_be_bytes());
        // Insert right after IHDR (8-byte signature + 25-byte IHDR chunk).
        let mut with = plain[..33].to_vec();
        with.extend_from_slice(&chunk);
        with.extend_from_slice(&plain[33..]);
        let rgb = decode_image(&with, 100).expect("decodes");
        assert_eq!((rgb.width(), rgb.height()), (1, 2));
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 0, 0]);
        assert_eq!(rgb.get_pixel(0, 1).0, [0, 0, 255]);
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let e = decode_image(b"not an image at all", 100).expect_err("garbage");
        assert!(e.to_string().starts_with("image: "), "{e}");
        assert!(decode_image(&[], 100).is_err());
    }
}
