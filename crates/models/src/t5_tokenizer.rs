//! The T5 tokenizer as transformers 5 builds it from a model folder, so prompts give the same
//! ids as in diffusers: `tokenizer.json` when the folder has one, otherwise built from
//! `spiece.model` the way transformers converts it (SentencePiece's precompiled normaliser,
//! whitespace split + `▁` metaspace, a unigram model with the pieces and 100 `<extra_id_N>`
//! tokens, `</s>` appended). Output is padded/truncated to a fixed length like the pipeline.

use std::path::Path;

use tch::Tensor;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::Precompiled;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

use crate::{ModelError, Result};

/// Token ids and attention mask `[B, max_length]` (int64), 1 for real tokens and `</s>`.
pub struct Tokens {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
}

pub struct T5Tokenizer {
    inner: Tokenizer,
    max_length: usize,
}

fn bad(path: &Path, what: impl std::fmt::Display) -> ModelError {
    ModelError::UnsupportedConfig(format!("tokenizer {}: {what}", path.display()))
}

impl T5Tokenizer {
    /// Loads the tokenizer folder (`tokenizer/` of a diffusers LTX model).
    pub fn from_dir(dir: &Path, max_length: usize) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let inner = if json.is_file() {
            Tokenizer::from_file(&json).map_err(|e| bad(&json, e))?
        } else {
            let spiece = dir.join("spiece.model");
            let bytes = std::fs::read(&spiece).map_err(|source| ModelError::Io {
                path: spiece.clone(),
                source,
            })?;
            from_sentencepiece(&bytes, extra_ids(dir)?).map_err(|e| bad(&spiece, e))?
        };
        Self::with_limits(inner, max_length, dir)
    }

    /// From the bytes of a `spiece.model` with `extra_ids` `<extra_id_N>` tokens.
    pub fn from_sentencepiece(spiece: &[u8], extra_ids: usize, max_length: usize) -> Result<Self> {
        let what = Path::new("spiece.model");
        let inner = from_sentencepiece(spiece, extra_ids).map_err(|e| bad(what, e))?;
        Self::with_limits(inner, max_length, what)
    }

    fn with_limits(mut inner: Tokenizer, max_length: usize, dir: &Path) -> Result<Self> {
        let pad_id = inner
            .token_to_id("<pad>")
            .ok_or_else(|| bad(dir, "no <pad> token"))?;
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| bad(dir, e))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: "<pad>".into(),
        }));
        Ok(Self { inner, max_length })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The same tokenizer padding and truncating to `max_length` tokens instead (the
    /// condition pipeline uses 256 where image-to-video uses 128).
    pub fn with_max_length(&self, max_length: usize) -> Result<Self> {
        Self::with_limits(self.inner.clone(), max_length, Path::new("(tokenizer)"))
    }

    /// Tokenizes like the LTX pipeline: `padding="max_length"`, `truncation=True`,
    /// `add_special_tokens=True`.
    pub fn encode(&self, prompts: &[&str]) -> Result<Tokens> {
        let mut ids = Vec::with_capacity(prompts.len() * self.max_length);
        let mut mask = Vec::with_capacity(ids.capacity());
        for p in prompts {
            let enc = self.inner.encode(*p, true).map_err(|e| {
                ModelError::InvalidInput(format!("cannot tokenize the prompt: {e}"))
            })?;
            ids.extend(enc.get_ids().iter().map(|&i| i64::from(i)));
            mask.extend(enc.get_attention_mask().iter().map(|&m| i64::from(m)));
        }
        let shape = [prompts.len() as i64, self.max_length as i64];
        Ok(Tokens {
            input_ids: Tensor::from_slice(&ids).f_reshape(shape)?,
            attention_mask: Tensor::from_slice(&mask).f_reshape(shape)?,
        })
    }
}

/// `extra_ids` from `tokenizer_config.json` (T5's default: 100).
fn extra_ids(dir: &Path) -> Result<usize> {
    let path = dir.join("tokenizer_config.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(100);
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ModelError::Json { path, source })?;
    Ok(v.get("extra_ids")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(100) as usize)
}

/// What the tokenizer needs from SentencePiece's `ModelProto`.
struct SentencePiece {
    /// (piece, score, type) with type 2 = unknown.
    pieces: Vec<(String, f32, u64)>,
    precompiled_charsmap: Vec<u8>,
}

/// A minimal protobuf reader for `spiece.model`: field 1 (pieces: 1 piece, 2 score, 3 type)
/// and field 3 (normalizer_spec: 2 precompiled_charsmap); everything else is skipped.
fn parse_sentencepiece(buf: &[u8]) -> std::result::Result<SentencePiece, String> {
    fn varint(buf: &[u8], pos: &mut usize) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *buf.get(*pos).ok_or("truncated varint")?;
            *pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    /// Calls `f(field, wire_type, payload)` for each field; payload is the bytes (wire type 2),
    /// the 4 bytes (5), or empty with the value in `u64` (0).
    fn fields(
        buf: &[u8],
        mut f: impl FnMut(u64, &[u8], u64) -> std::result::Result<(), String>,
    ) -> std::result::Result<(), String> {
        let mut pos = 0;
        while pos < buf.len() {
            let key = varint(buf, &mut pos)?;
            let (field, wire) = (key >> 3, key & 7);
            match wire {
                0 => {
                    let v = varint(buf, &mut pos)?;
                    f(field, &[], v)?;
                }
                1 => pos += 8,
                2 => {
                    let len = varint(buf, &mut pos)? as usize;
                    let end = pos
                        .checked_add(len)
                        .filter(|e| *e <= buf.len())
                        .ok_or("truncated field")?;
                    f(field, &buf[pos..end], 0)?;
                    pos = end;
                }
                5 => {
                    let end = pos + 4;
                    f(field, buf.get(pos..end).ok_or("truncated fixed32")?, 0)?;
                    pos = end;
                }
                w => return Err(format!("unsupported protobuf wire type {w}")),
            }
        }
        Ok(())
    }
    let mut out = SentencePiece {
        pieces: Vec::new(),
        precompiled_charsmap: Vec::new(),
    };
    fields(buf, |field, bytes, _| {
        match field {
            1 => {
                let (mut piece, mut score, mut kind) = (String::new(), 0f32, 1u64);
                fields(bytes, |f, b, v| {
                    match f {
                        1 => piece = String::from_utf8(b.to_vec()).map_err(|e| e.to_string())?,
                        2 => score = f32::from_le_bytes(b.try_into().map_err(|_| "bad score")?),
                        3 => kind = v,
                        _ => {}
                    }
                    Ok(())
                })?;
                out.pieces.push((piece, score, kind));
            }
            3 => fields(bytes, |f, b, _| {
                if f == 2 {
                    out.precompiled_charsmap = b.to_vec();
                }
                Ok(())
            })?,
            _ => {}
        }
        Ok(())
    })?;
    if out.pieces.is_empty() {
        return Err("no pieces: not a SentencePiece model".into());
    }
    Ok(out)
}

fn from_sentencepiece(bytes: &[u8], extra_ids: usize) -> std::result::Result<Tokenizer, String> {
    let sp = parse_sentencepiece(bytes)?;
    let unk_id = sp.pieces.iter().position(|(_, _, kind)| *kind == 2);
    let mut vocab: Vec<(String, f64)> = sp
        .pieces
        .iter()
        .map(|(p, s, _)| (p.clone(), f64::from(*s)))
        .collect();
    vocab.extend(
        (0..extra_ids)
            .rev()
            .map(|i| (format!("<extra_id_{i}>"), 0.0)),
    );
    let specials: Vec<AddedToken> = ["<pad>", "</s>", "<unk>"]
        .into_iter()
        .map(String::from)
        .chain((0..extra_ids).map(|i| format!("<extra_id_{i}>")))
        .filter(|t| vocab.iter().any(|(p, _)| p == t))
        .map(|t| AddedToken::from(t, true))
        .collect();
    let eos = vocab
        .iter()
        .position(|(p, _)| p == "</s>")
        .ok_or("no </s> piece")? as u32;
    let model = Unigram::from(vocab, unk_id, false).map_err(|e| e.to_string())?;
    let mut tok = Tokenizer::new(model);
    if !sp.precompiled_charsmap.is_empty() {
        tok.with_normalizer(Some(
            Precompiled::from(&sp.precompiled_charsmap).map_err(|e| e.to_string())?,
        ));
    }
    tok.with_pre_tokenizer(Some(Sequence::new(vec![
        WhitespaceSplit.into(),
        Metaspace::new('▁', PrependScheme::Always, true).into(),
    ])));
    let template = TemplateProcessing::builder()
        .try_single("$A </s>")
        .map_err(|e| e.to_string())?
        .try_pair("$A </s> $B </s>")
        .map_err(|e| e.to_string())?
        .special_tokens(vec![("</s>", eos)])
        .build()
        .map_err(|e| e.to_string())?;
    tok.with_post_processor(Some(template));
    tok.add_special_tokens(&specials);
    Ok(tok)
}
