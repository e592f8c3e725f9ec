//! The InstantID `demo` family: a tiny SDXL (both CLIP text encoders with CLIP's real
//! tokenizers, a UNet with the text_time embedding and IP attention on every `attn2`, a 4-level
//! VAE, SDXL base's Euler scheduler), an IdentityNet sharing the UNet's encoder layout and a
//! face Resampler, all with random weights from a fixed seed and built in memory; plus tiny face
//! graphs (`assets/instantid-demo/face/`, made by `tools/face-fixtures/make_demo_models.py`)
//! that find exactly one face in any image and embed its aligned crop. The server and the CLI
//! run every real code path with it on a fresh machine, ONNX Runtime included. Its images are
//! noise.
//!
//! Sizes: text encoders 32 and 64 wide (2 layers each; the 49,408-token embedding tables are
//! most of the weights), UNet channels 16/32/64 with 1/1/2 transformer layers of 32-wide heads,
//! Resampler 128 wide, 2 layers, 16 face tokens from 512-value ArcFace embeddings, VAE channels
//! 8/16/16/16; 41 MB of float32 weights. Measured on one core of the shared 2-core build
//! machine (debug build): a 256×256, 4-step job with CFG in 0.8 s after 1.8 s of face analysis
//! and building; 1024×1024, 30 steps in 111 s.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ltx_models::sdxl::clip::{ClipTextConfig, ClipTextModel, ClipTextModelWithProjection};
use ltx_models::sdxl::clip_tokenizer::ClipTokenizer;
use ltx_models::sdxl::folder::{check_controlnet_fits, SdxlParams};
use ltx_models::sdxl::ip_adapter::{IpAdapterFile, IpLayer};
use ltx_models::sdxl::ip_bind::bind_ip_adapter;
use ltx_models::sdxl::resampler::{Resampler, DIM_HEAD};
use ltx_models::sdxl::schedulers::SdxlScheduler;
use ltx_models::sdxl::unet::{
    ControlNetConfig, ControlNetModel, PerBlock, TransformerLayers, UNet2DConditionConfig,
    UNet2DConditionModel,
};
use ltx_models::sdxl::vae::{AutoencoderKl, AutoencoderKlConfig};
use ltx_models::weights::{tensor_bytes, WeightStore};
use ltx_models::{ModelError, Result};
use tch::{Device, Kind};

use super::{InstantIdLoadOptions, InstantIdModels, InstantIdWeights};

/// Seed of the demo family's weights (torch's CPU generator, whatever the device): the same
/// model on every machine.
pub const INSTANTID_DEMO_SEED: u64 = crate::demo::DEMO_SEED + 0x1D;

/// Text encoder widths; side by side they are the UNet's cross-attention width.
const TEXT_HIDDEN: [i64; 2] = [32, 64];
const CROSS: i64 = TEXT_HIDDEN[0] + TEXT_HIDDEN[1];
const TIME_DIM: i64 = 16;

/// The Resampler: InstantID's 16 face tokens from ArcFace's 512 values.
const FACE_DIM: i64 = 128;
const FACE_DEPTH: usize = 2;
const FACE_TOKENS: i64 = 16;
const FACE_EMBEDDING: i64 = 512;
const FACE_FF: i64 = 2 * FACE_DIM;

type Files = [(&'static str, &'static [u8])];

const VOCAB: &[u8] = include_bytes!("../../assets/instantid-demo/tokenizer/vocab.json");
const MERGES: &[u8] = include_bytes!("../../assets/instantid-demo/tokenizer/merges.txt");

/// SDXL's two tokenizer folders (CLIP's vocabulary; `tokenizer_2/` pads with `!`).
const TOKENIZER_FILES: &Files = &[
    ("tokenizer/vocab.json", VOCAB),
    ("tokenizer/merges.txt", MERGES),
    (
        "tokenizer/tokenizer_config.json",
        include_bytes!("../../assets/instantid-demo/tokenizer/tokenizer_config.json"),
    ),
    (
        "tokenizer/special_tokens_map.json",
        include_bytes!("../../assets/instantid-demo/tokenizer/special_tokens_map.json"),
    ),
    ("tokenizer_2/vocab.json", VOCAB),
    ("tokenizer_2/merges.txt", MERGES),
    (
        "tokenizer_2/tokenizer_config.json",
        include_bytes!("../../assets/instantid-demo/tokenizer_2/tokenizer_config.json"),
    ),
    (
        "tokenizer_2/special_tokens_map.json",
        include_bytes!("../../assets/instantid-demo/tokenizer_2/special_tokens_map.json"),
    ),
];

/// The demo face graphs (see `tools/face-fixtures/make_demo_models.py`).
const FACE_FILES: &Files = &[
    (
        "scrfd_demo.onnx",
        include_bytes!("../../assets/instantid-demo/face/scrfd_demo.onnx"),
    ),
    (
        "arcface_demo.onnx",
        include_bytes!("../../assets/instantid-demo/face/arcface_demo.onnx"),
    ),
];

/// SDXL base 1.0's `scheduler/scheduler_config.json` (EulerDiscreteScheduler).
const SCHEDULER_CONFIG: &str = include_str!("../../assets/instantid-demo/scheduler_config.json");

/// A folder holding the demo face graphs, for `ltx_face::FaceAnalysis::new` (which loads them
/// through ONNX Runtime like any antelopev2 folder): written once per process into the temp
/// dir, under a name made from the files' hash (so processes share it and a changed graph gets
/// a new folder).
pub fn demo_face_models_dir() -> Result<PathBuf> {
    materialized("instantid-demo-face", FACE_FILES)
}

fn demo_tokenizers_dir() -> Result<PathBuf> {
    materialized("instantid-demo-tokenizers", TOKENIZER_FILES)
}

/// The folders written by this process, by label.
static WRITTEN: Mutex<Vec<(&str, PathBuf)>> = Mutex::new(Vec::new());

fn materialized(label: &'static str, files: &Files) -> Result<PathBuf> {
    let mut written = WRITTEN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, dir)) = written.iter().find(|(l, d)| *l == label && d.is_dir()) {
        return Ok(dir.clone());
    }
    let dir = materialize(&std::env::temp_dir(), label, files)?;
    written.retain(|(l, _)| *l != label);
    written.push((label, dir.clone()));
    Ok(dir)
}

/// FNV-1a (64 bits) over every file's name, length and bytes: a stable name for the folder.
fn fnv1a(files: &Files) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (name, bytes) in files {
        eat(name.as_bytes());
        eat(&(bytes.len() as u64).to_le_bytes());
        eat(bytes);
    }
    h
}

/// Whether `dir` holds every file with exactly these bytes.
fn holds(dir: &Path, files: &Files) -> bool {
    files
        .iter()
        .all(|(name, bytes)| std::fs::read(dir.join(name)).is_ok_and(|b| b == *bytes))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `root/ltx-i2v-<label>-<hash>/` with `files` in it: kept when already complete, else written
/// into a private folder and renamed into place (so a concurrent process never sees half of
/// it, and when two race the loser's copy is dropped).
fn materialize(root: &Path, label: &str, files: &Files) -> Result<PathBuf> {
    let dir = root.join(format!("ltx-i2v-{label}-{:016x}", fnv1a(files)));
    if holds(&dir, files) {
        return Ok(dir);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = root.join(format!(
        ".ltx-i2v-{label}-{}-{nanos}.partial",
        std::process::id()
    ));
    for (name, bytes) in files {
        let path = tmp.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, bytes).map_err(io(&path))?;
    }
    if std::fs::rename(&tmp, &dir).is_err() {
        if holds(&dir, files) {
            // Another process put a complete copy there first.
            let _ = std::fs::remove_dir_all(&tmp);
            return Ok(dir);
        }
        // An incomplete or altered folder under our name: replace it.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    }
    Ok(dir)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// SDXL's text encoder layout (config `eos_token_id` 2, so the pooled output is taken at
/// `argmax(input_ids)` as in SDXL's configs) at `hidden` width.
fn clip_config(hidden: i64, act: &str) -> ClipTextConfig {
    ClipTextConfig {
        hidden_size: hidden,
        intermediate_size: 4 * hidden,
        projection_dim: hidden,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        hidden_act: act.into(),
        bos_token_id: 0,
        eos_token_id: 2,
        ..ClipTextConfig::default()
    }
}

/// SDXL's UNet block structure (3 levels, 9 skip tensors, cross-attention in the two lower
/// levels, text_time added embedding) at small widths.
pub fn demo_unet_config() -> UNet2DConditionConfig {
    UNet2DConditionConfig {
        block_out_channels: vec![16, 32, 64],
        down_block_types: strings(&[
            "DownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
        ]),
        up_block_types: strings(&["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]),
        layers_per_block: PerBlock::One(2),
        transformer_layers_per_block: TransformerLayers::PerBlock(vec![1, 1, 2]),
        attention_head_dim: PerBlock::Each(vec![1, 1, 2]),
        cross_attention_dim: PerBlock::One(CROSS),
        use_linear_projection: true,
        addition_embed_type: Some("text_time".into()),
        addition_time_embed_dim: Some(TIME_DIM),
        projection_class_embeddings_input_dim: Some(TEXT_HIDDEN[1] + 6 * TIME_DIM),
        norm_num_groups: Some(8),
        ..UNet2DConditionConfig::default()
    }
}

/// The IdentityNet of [`demo_unet_config`]: the same encoder, InstantX's 3-channel
/// conditioning embedding (4 convolution widths, /8) at small widths.
pub fn demo_controlnet_config() -> ControlNetConfig {
    let u = demo_unet_config();
    ControlNetConfig {
        down_block_types: u.down_block_types,
        block_out_channels: u.block_out_channels,
        layers_per_block: u.layers_per_block,
        transformer_layers_per_block: u.transformer_layers_per_block,
        attention_head_dim: u.attention_head_dim,
        cross_attention_dim: u.cross_attention_dim,
        use_linear_projection: true,
        addition_embed_type: u.addition_embed_type,
        addition_time_embed_dim: u.addition_time_embed_dim,
        projection_class_embeddings_input_dim: u.projection_class_embeddings_input_dim,
        norm_num_groups: u.norm_num_groups,
        conditioning_embedding_out_channels: Some(vec![8, 16, 16, 32]),
        ..ControlNetConfig::default()
    }
}

/// SDXL's VAE layout (4 levels, 8× down, scaling 0.13025, `force_upcast`) at small widths.
pub fn demo_vae_config() -> AutoencoderKlConfig {
    AutoencoderKlConfig {
        down_block_types: strings(&["DownEncoderBlock2D"; 4]),
        up_block_types: strings(&["UpDecoderBlock2D"; 4]),
        block_out_channels: vec![8, 16, 16, 16],
        layers_per_block: 1,
        norm_num_groups: 8,
        sample_size: 256,
        scaling_factor: 0.13025,
        force_upcast: true,
        ..AutoencoderKlConfig::default()
    }
}

/// A random `ip-adapter.bin` for `unet`: the Resampler's `image_proj` tensors in InstantX's
/// names and a `(to_k_ip, to_v_ip)` pair for every `attn2`, drawn (float32, CPU) from torch's
/// generator with [`WeightStore::random`]'s initialisation.
fn random_face_adapter(
    unet: &UNet2DConditionModel,
    rng: ltx_models::weights::SharedGenerator,
) -> Result<IpAdapterFile> {
    let draw = WeightStore::random_from(Kind::Float, Device::Cpu, rng);
    let vb = draw.root();
    let (d, inner) = (FACE_DIM, (FACE_DIM / DIM_HEAD) * DIM_HEAD);
    let mut shapes: Vec<(String, Vec<i64>)> = vec![
        ("latents".into(), vec![1, FACE_TOKENS, d]),
        ("proj_in.weight".into(), vec![d, FACE_EMBEDDING]),
        ("proj_in.bias".into(), vec![d]),
        ("proj_out.weight".into(), vec![CROSS, d]),
        ("proj_out.bias".into(), vec![CROSS]),
        ("norm_out.weight".into(), vec![CROSS]),
        ("norm_out.bias".into(), vec![CROSS]),
    ];
    for i in 0..FACE_DEPTH {
        for (name, shape) in [
            ("0.norm1.weight", vec![d]),
            ("0.norm1.bias", vec![d]),
            ("0.norm2.weight", vec![d]),
            ("0.norm2.bias", vec![d]),
            ("0.to_q.weight", vec![inner, d]),
            ("0.to_kv.weight", vec![2 * inner, d]),
            ("0.to_out.weight", vec![d, inner]),
            ("1.0.weight", vec![d]),
            ("1.0.bias", vec![d]),
            ("1.1.weight", vec![FACE_FF, d]),
            ("1.3.weight", vec![d, FACE_FF]),
        ] {
            shapes.push((format!("layers.{i}.{name}"), shape));
        }
    }
    let image_proj = shapes
        .into_iter()
        .map(|(name, shape)| Ok((name.clone(), vb.get(&name, &shape)?)))
        .collect::<Result<Vec<_>>>()?;
    let layers = unet
        .ip_attention_layers()
        .into_iter()
        .map(|slot| {
            let shape = [slot.query_dim, slot.cross_dim];
            Ok(IpLayer {
                index: slot.n,
                to_k_ip: vb.get(&format!("{}.to_k_ip.weight", slot.n), &shape)?,
                to_v_ip: vb.get(&format!("{}.to_v_ip.weight", slot.n), &shape)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(IpAdapterFile { image_proj, layers })
}

/// Builds the demo family on `opts`' device in its dtypes (deterministic: the weights come
/// from [`INSTANTID_DEMO_SEED`] on a CPU generator of their own, then move to the device), with the
/// face adapter bound to the UNet and the parts checked to fit as a loaded model set is.
pub fn demo_instantid(opts: &InstantIdLoadOptions) -> Result<InstantIdModels> {
    let device = opts.sdxl.device;
    let kinds = opts.sdxl.dtypes;
    let tokenizers = demo_tokenizers_dir()?;
    let scheduler_config: serde_json::Value = serde_json::from_str(SCHEDULER_CONFIG)
        .map_err(|e| ModelError::UnsupportedConfig(format!("demo scheduler config: {e}")))?;
    SdxlScheduler::from_json(&scheduler_config)?;
    let vae_cfg = demo_vae_config();
    // One CPU generator for every component, drawn in construction order; the tensors then
    // move to the device.
    let rng = ltx_models::weights::shared_generator(Device::Cpu, INSTANTID_DEMO_SEED)?;
    let store = |kind| WeightStore::random_from(kind, device, rng.clone());
    let stores = [
        store(kinds.text_encoder),
        store(kinds.text_encoder_2),
        store(kinds.unet),
        store(kinds.vae_kind(&vae_cfg)),
        store(opts.controlnet),
    ];
    tch::no_grad(|| {
        let text_encoder =
            ClipTextModel::new(&stores[0].root(), clip_config(TEXT_HIDDEN[0], "quick_gelu"))?;
        let text_encoder_2 = ClipTextModelWithProjection::new(
            &stores[1].root(),
            clip_config(TEXT_HIDDEN[1], "gelu"),
        )?;
        let mut unet = UNet2DConditionModel::new(&stores[2].root(), demo_unet_config())?;
        let vae = AutoencoderKl::new(&stores[3].root(), vae_cfg)?;
        let controlnet = ControlNetModel::new(&stores[4].root(), demo_controlnet_config())?;
        let file = random_face_adapter(&unet, rng.clone())?;
        let resampler: Resampler = file.resampler(opts.face_adapter, device)?;
        bind_ip_adapter(&mut unet, &file, &resampler, "the demo face adapter")?;
        check_controlnet_fits(&controlnet, &unet, resampler.shape().output_dim)?;
        let resampler_bytes: u64 = file
            .image_proj
            .iter()
            .map(|(_, t)| (t.numel() * opts.face_adapter.elt_size_in_bytes()) as u64)
            .sum();
        let ip_bytes: u64 = unet.ip_params().iter().map(|(_, t)| tensor_bytes(t)).sum();
        let weight_bytes =
            stores.iter().map(WeightStore::loaded_bytes).sum::<u64>() + resampler_bytes + ip_bytes;
        let [te1, te2, un, va, cn] = &stores;
        let weights = InstantIdWeights {
            sdxl: SdxlParams {
                text_encoder: te1.take_params(),
                text_encoder_2: te2.take_params(),
                unet: un.take_params(),
                vae: va.take_params(),
            },
            controlnet: cn.take_params(),
        };
        tracing::info!(
            ip_layers = unet.ip_attention_layers().len(),
            face_tokens = resampler.shape().queries,
            weight_bytes,
            "InstantID demo models built (random weights: the images are noise)"
        );
        Ok(InstantIdModels {
            tokenizer: ClipTokenizer::from_dir(&tokenizers.join("tokenizer"))?,
            tokenizer_2: ClipTokenizer::from_dir(&tokenizers.join("tokenizer_2"))?,
            text_encoder,
            text_encoder_2,
            unet,
            controlnet,
            resampler,
            vae,
            scheduler_config,
            force_zeros_for_empty_prompt: true,
            device,
            text_kind: kinds.text_encoder_2,
            controlnet_kind: opts.controlnet,
            weight_bytes,
            weights: Some(weights),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn materialize_writes_once_and_repairs() {
        let root = std::env::temp_dir().join(format!("ltx-demo-assets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let files: &Files = &[("a/x.bin", b"abc"), ("y.txt", b"hello")];
        let dir = materialize(&root, "t", files).unwrap();
        assert!(holds(&dir, files));
        assert_eq!(materialize(&root, "t", files).unwrap(), dir);
        // Another content gets another folder.
        let other: &Files = &[("a/x.bin", b"abd"), ("y.txt", b"hello")];
        assert_ne!(materialize(&root, "t", other).unwrap(), dir);
        // A damaged copy is replaced.
        std::fs::write(dir.join("y.txt"), b"hell").unwrap();
        assert_eq!(materialize(&root, "t", files).unwrap(), dir);
        assert!(holds(&dir, files));
        let leftovers = std::fs::read_dir(&root)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".partial")
            })
            .count();
        assert_eq!(leftovers, 0);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
