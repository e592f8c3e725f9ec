//! The OpenCV calls insightface and InstantID make, re-implemented to give the same pixels:
//! plain loops over 8-bit RGB, checked against OpenCV 4.10 by the crate's fixtures.

pub mod draw;
pub mod resize;
pub mod warp;

pub use resize::resize_linear;
pub use warp::warp_affine;
