//! The InstantID family's networks on SDXL, natively on tch with PyTorch parameter names, the
//! way the LTX models are built (serde configs mirroring `config.json`, strict loading through
//! [`crate::weights::Vb`], parity fixtures made by `tools/sdxl-fixtures/`). See
//! `../shared/specs/instantid.md` and `../shared/specs/sdxl-notes.md`.

pub mod clip;
pub mod clip_tokenizer;
pub mod folder;
pub mod ip_adapter;
pub mod ip_bind;
pub mod resampler;
pub mod schedulers;
pub mod single_file;
pub mod unet;
pub mod vae;
