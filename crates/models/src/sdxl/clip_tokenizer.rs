//! The CLIP tokenizer of SDXL's `tokenizer/` and `tokenizer_2/` folders, built from
//! `vocab.json` + `merges.txt` + `tokenizer_config.json` (+ `special_tokens_map.json`) the way
//! transformers 5's `CLIPTokenizer` builds it: BPE (`end_of_word_suffix="</w>"`, unk
//! `<|endoftext|>`), normalizer NFC → `\s+` to one space → lowercase, pre-tokenizer CLIP's Split
//! regex (inverted, matches kept) then ByteLevel without prefix space, post-processor
//! `[bos] + ids + [eos]`. Added tokens come from the folder's configs (in SDXL's `tokenizer_2/`,
//! `!` is an added special token, so every `!` is split out as id 0). Prompts are encoded as
//! diffusers' SDXL pipeline calls it: `padding="max_length"`, `max_length=model_max_length`,
//! `truncation=True` (75 content tokens, the end token kept).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use tch::Tensor;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as Normalizers, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, SplitDelimiterBehavior,
    Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::{ModelError, Result};

/// transformers' CLIP pre-tokenizer pattern (from OpenAI's `simple_tokenizer.py`).
const SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// transformers' `SPECIAL_TOKENS_ATTRIBUTES`, in its order (the order matters, see
/// [`added_tokens`]).
const NAMED: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// `CLIPTokenizer.__init__`'s defaults for the tokens a config leaves out.
fn clip_default(name: &str) -> Option<&'static str> {
    match name {
        "bos_token" => Some("<|startoftext|>"),
        "eos_token" | "unk_token" | "pad_token" => Some("<|endoftext|>"),
        _ => None,
    }
}

/// A token as a config declares it: a bare string, or an `AddedToken` object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TokenSpec {
    Text(String),
    Full(TokenFields),
}

#[derive(Debug, Clone, Deserialize)]
struct TokenFields {
    content: String,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    #[serde(default)]
    single_word: bool,
    normalized: Option<bool>,
    special: Option<bool>,
}

impl TokenSpec {
    fn content(&self) -> &str {
        match self {
            Self::Text(s) => s,
            Self::Full(f) => &f.content,
        }
    }

    /// transformers' equality in its de-duplication: strings by content, `AddedToken`s by
    /// content and flags, never a string with an `AddedToken`.
    fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Text(a), Self::Text(b)) => a == b,
            (Self::Full(a), Self::Full(b)) => {
                (&a.content, a.lstrip, a.rstrip, a.single_word, a.normalized)
                    == (&b.content, b.lstrip, b.rstrip, b.single_word, b.normalized)
            }
            _ => false,
        }
    }

    /// The backend token. A string becomes `AddedToken(s, special=True)` (not normalized); an
    /// object keeps its flags, `normalized` defaulting to `not special`, where `special` is
    /// the object's own (default false) or, for `special_tokens_map.json` objects, forced true.
    fn added(&self, forced_special: bool) -> AddedToken {
        match self {
            Self::Text(s) => AddedToken::from(s.clone(), true),
            Self::Full(f) => {
                let special = forced_special || f.special.unwrap_or(false);
                AddedToken::from(f.content.clone(), special)
                    .lstrip(f.lstrip)
                    .rstrip(f.rstrip)
                    .single_word(f.single_word)
                    .normalized(f.normalized.unwrap_or(!special))
            }
        }
    }
}

/// What the tokenizer reads from `tokenizer_config.json`; everything else is ignored.
#[derive(Debug, Default, Deserialize)]
struct TokenizerConfig {
    model_max_length: Option<serde_json::Value>,
    added_tokens_decoder: Option<BTreeMap<String, TokenFields>>,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

fn bad(path: &Path, what: impl std::fmt::Display) -> ModelError {
    ModelError::UnsupportedConfig(format!("tokenizer {}: {what}", path.display()))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    crate::config::read_config(path)
}

/// A named token's value: absent, JSON `null`, a string or an `AddedToken` object.
fn token_value(path: &Path, key: &str, v: Option<&serde_json::Value>) -> Result<Option<TokenSpec>> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| bad(path, format!("{key}: {e}"))),
    }
}

/// The special tokens a folder names, resolved as transformers 5 does.
struct Named {
    /// `bos, eos, unk, sep, pad, cls, mask` (CLIP's defaults where unnamed), each with whether
    /// it came from `special_tokens_map.json`.
    named: Vec<(&'static str, Option<TokenSpec>, bool)>,
    extras: Vec<TokenSpec>,
}

impl Named {
    /// `tokenizer_config.json`'s named tokens; without `added_tokens_decoder` (the legacy form)
    /// each is replaced by `special_tokens_map.json`'s entry of the same key when the file has
    /// one. With `added_tokens_decoder` the map file is not read.
    fn read(dir: &Path, cfg: &TokenizerConfig) -> Result<Self> {
        let cfg_path = dir.join("tokenizer_config.json");
        let mut named = Vec::new();
        for key in NAMED {
            named.push((key, token_value(&cfg_path, key, cfg.rest.get(key))?, false));
        }
        let map_path = dir.join("special_tokens_map.json");
        if cfg.added_tokens_decoder.is_none() && map_path.is_file() {
            let map: BTreeMap<String, serde_json::Value> = read_json(&map_path)?;
            for (key, spec, from_map) in &mut named {
                if let Some(v) = token_value(&map_path, key, map.get(*key))? {
                    *spec = Some(v);
                    *from_map = true;
                }
            }
        }
        for (key, spec, _) in &mut named {
            if spec.is_none() {
                *spec = clip_default(key).map(|s| TokenSpec::Text(s.into()));
            }
        }
        let mut extras = Vec::new();
        for key in ["extra_special_tokens", "additional_special_tokens"] {
            if let Some(serde_json::Value::Array(list)) = cfg.rest.get(key) {
                for v in list {
                    extras.extend(token_value(&cfg_path, key, Some(v))?);
                }
                break;
            }
        }
        Ok(Self { named, extras })
    }

    /// The content of the token named `key` (`"pad_token"`).
    fn content(&self, key: &str) -> Option<&str> {
        self.named
            .iter()
            .find(|(k, _, _)| *k == key)
            .and_then(|(_, s, _)| s.as_ref())
            .map(TokenSpec::content)
    }
}

/// The tokens transformers 5 adds to the backend tokenizer, one per content:
/// `added_tokens_decoder`'s entries (by id) first, then the named tokens whose content those do
/// not hold, in `bos, eos, unk, sep, pad, cls, mask` order, then
/// `additional_special_tokens`/`extra_special_tokens`. A named token equal to an earlier one is
/// skipped, and of several left with the same content the last one's flags hold (the backend
/// replaces an added token by a later one of the same content). So in SDXL's legacy
/// `tokenizer/`, the pad token `"<|endoftext|>"` (a string: not normalized) overrides the eos
/// object's `normalized: true`, and `<|ENDOFTEXT|>` in a prompt is not the end token.
fn added_tokens(cfg_path: &Path, cfg: &TokenizerConfig, names: &Named) -> Result<Vec<AddedToken>> {
    let mut out: Vec<AddedToken> = Vec::new();
    if let Some(decoder) = &cfg.added_tokens_decoder {
        let mut by_id: Vec<(u32, &TokenFields)> = Vec::new();
        for (id, fields) in decoder {
            let id: u32 = id.parse().map_err(|_| {
                bad(
                    cfg_path,
                    format!("added_tokens_decoder key {id:?} is not an id"),
                )
            })?;
            by_id.push((id, fields));
        }
        by_id.sort_by_key(|(id, _)| *id);
        for (_, fields) in by_id {
            out.push(TokenSpec::Full(fields.clone()).added(false));
        }
    }
    let candidates = names
        .named
        .iter()
        .filter_map(|(_, spec, from_map)| spec.as_ref().map(|s| (s, *from_map)))
        .chain(names.extras.iter().map(|e| (e, false)));
    let mut listed: Vec<(&TokenSpec, bool)> = Vec::new();
    for (spec, from_map) in candidates {
        let held = out.iter().any(|t| t.content == spec.content());
        if !held && !listed.iter().any(|(s, _)| s.same(spec)) {
            listed.push((spec, from_map));
        }
    }
    for (i, (spec, from_map)) in listed.iter().enumerate() {
        let later = listed[i + 1..]
            .iter()
            .any(|(s, _)| s.content() == spec.content());
        if !later {
            out.push(spec.added(*from_map));
        }
    }
    Ok(out)
}

/// SDXL's CLIP tokenizer with the folder's padding and length.
pub struct ClipTokenizer {
    inner: Tokenizer,
    max_length: usize,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
}

impl ClipTokenizer {
    /// Builds the tokenizer of a folder holding `vocab.json`, `merges.txt` and
    /// `tokenizer_config.json` (with `model_max_length`), and optionally
    /// `special_tokens_map.json`. A `tokenizer.json` is not read.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: TokenizerConfig = read_json(&cfg_path)?;
        let max_length = cfg
            .model_max_length
            .as_ref()
            .and_then(serde_json::Value::as_u64)
            .filter(|&n| (3..=4096).contains(&n))
            .ok_or_else(|| {
                bad(
                    &cfg_path,
                    format!(
                        "model_max_length {:?} is not a usable length (SDXL's is 77)",
                        cfg.model_max_length
                    ),
                )
            })? as usize;
        let names = Named::read(dir, &cfg)?;
        let added = added_tokens(&cfg_path, &cfg, &names)?;

        let file = |name: &str| -> Result<String> {
            let p = dir.join(name);
            if !p.is_file() {
                return Err(ModelError::Io {
                    path: p,
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "missing"),
                });
            }
            p.to_str()
                .map(str::to_owned)
                .ok_or_else(|| bad(&p, "the path is not valid UTF-8"))
        };
        let (vocab_path, merges_path) = (file("vocab.json")?, file("merges.txt")?);
        let content = |key: &str| -> Result<String> {
            names
                .content(key)
                .map(str::to_owned)
                .ok_or_else(|| bad(&cfg_path, format!("no {key}")))
        };
        let (bos, eos, unk, pad) = (
            content("bos_token")?,
            content("eos_token")?,
            content("unk_token")?,
            content("pad_token")?,
        );

        let model = BPE::from_file(&vocab_path, &merges_path)
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".into())
            .fuse_unk(false)
            .unk_token(unk)
            .build()
            .map_err(|e| bad(dir, format!("vocab.json/merges.txt: {e}")))?;
        let mut inner = Tokenizer::new(model);
        let whitespace = Replace::new(
            tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
            " ",
        )
        .map_err(|e| bad(dir, e))?;
        inner.with_normalizer(Some(Normalizers::new(vec![
            NFC.into(),
            whitespace.into(),
            Lowercase.into(),
        ])));
        let split = Split::new(
            SplitPattern::Regex(SPLIT.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| bad(dir, e))?;
        inner.with_pre_tokenizer(Some(PreTokenizers::new(vec![
            split.into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        inner.add_tokens(&added);
        // transformers keeps the declared ids; the backend gives a token its vocabulary id, or
        // the next free one. Refuse a folder where the two disagree rather than shift ids.
        for (id, fields) in cfg.added_tokens_decoder.iter().flatten() {
            let got = inner.token_to_id(&fields.content);
            if got.map(|g| g.to_string()).as_deref() != Some(id.as_str()) {
                return Err(bad(
                    &cfg_path,
                    format!(
                        "added token {:?} is declared as id {id} but gets {got:?} from vocab.json",
                        fields.content
                    ),
                ));
            }
        }

        let id = |token: &str, what: &str| {
            inner.token_to_id(token).ok_or_else(|| {
                bad(
                    dir,
                    format!("the {what} {token:?} is not in the vocabulary"),
                )
            })
        };
        let (bos_id, eos_id, pad_id) = (
            id(&bos, "bos_token")?,
            id(&eos, "eos_token")?,
            id(&pad, "pad_token")?,
        );
        inner.with_post_processor(Some(
            RobertaProcessing::new((eos, eos_id), (bos, bos_id))
                .trim_offsets(false)
                .add_prefix_space(false),
        ));
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
            pad_token: pad,
        }));
        Ok(Self {
            inner,
            max_length,
            bos_id,
            eos_id,
            pad_id,
        })
    }

    /// `model_max_length` (77 for SDXL): every encoded row has this many ids.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn bos_token_id(&self) -> i64 {
        i64::from(self.bos_id)
    }

    pub fn eos_token_id(&self) -> i64 {
        i64::from(self.eos_id)
    }

    pub fn pad_token_id(&self) -> i64 {
        i64::from(self.pad_id)
    }

    /// The ids of one prompt, padded/truncated to [`ClipTokenizer::max_length`].
    pub fn encode_one(&self, prompt: &str) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(prompt, true)
            .map_err(|e| ModelError::InvalidInput(format!("cannot tokenize the prompt: {e}")))?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// `input_ids` `[B, max_length]` (int64, CPU) of `prompts`, as diffusers' SDXL pipeline
    /// tokenizes them.
    pub fn encode(&self, prompts: &[&str]) -> Result<Tensor> {
        let mut ids = Vec::with_capacity(prompts.len() * self.max_length);
        for p in prompts {
            ids.extend(self.encode_one(p)?);
        }
        Ok(Tensor::from_slice(&ids).f_reshape([prompts.len() as i64, self.max_length as i64])?)
    }
}
