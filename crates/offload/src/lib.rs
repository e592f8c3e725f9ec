//! The memory system. A model component's weights live once in host memory (pinned when a GPU
//! is used), packed into a few large chunks and grouped into units (transformer blocks, T5
//! layers) plus a small remainder; the modules' parameter tensors are re-pointed (`set_data`)
//! at whichever copy should be used:
//!
//! - `none`: loaded straight onto the device; nothing here is involved.
//! - `model`: [`OffloadedWeights::onload`] copies a whole component to the device chunk by
//!   chunk and [`OffloadedWeights::offload`] points it back at the host copy (nothing is copied
//!   back; weights never change).
//! - `sequential`: [`Streamer`] keeps the remainder on the device and streams units through a
//!   ring of k+1 device slots: a copy stream prefetches units i+1…i+k while unit i computes,
//!   ordered by events only (no host synchronisation in the loop).
//!
//! The ring's decisions ([`ring::Ring`]) are separate from the device ([`ring::RingBackend`]),
//! so the same schedule runs on CUDA, on a plain CPU "device" (a second host buffer, for the
//! streamed == resident tests) and on a simulated two-stream device that executes copies as
//! early as their dependencies allow and checks every use ([`sim`]).

pub mod arena;
pub mod budget;
mod error;
pub mod mode;
pub mod naive;
pub mod ring;
pub mod sim;
pub mod streamer;
pub mod weights;

pub use error::OffloadError;
pub use mode::OffloadMode;
pub use streamer::Streamer;
pub use weights::{OffloadedWeights, UnitOf};

pub type Result<T> = std::result::Result<T, OffloadError>;
