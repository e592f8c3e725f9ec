//! The `demo` model: a tiny LTX-Video (T5, transformer, 0.9.1-style VAE) with random weights
//! from a fixed seed (a generator of its own, so building it on one thread never disturbs or
//! depends on another thread's draws) and the small T5 tokenizer shipped in `assets/`, so `generate` and the
//! server run on a fresh machine with nothing downloaded. Its videos are noise.

use ltx_models::ltx::{LtxTransformer, LtxTransformerConfig, LtxVae, LtxVaeConfig};
use ltx_models::scheduler::FlowMatchConfig;
use ltx_models::t5::{T5Config, T5Encoder};
use ltx_models::t5_tokenizer::T5Tokenizer;
use ltx_models::text_encoder::TextEncoder;
use ltx_models::weights::{shared_generator, SharedGenerator, WeightStore};
use ltx_models::Result;

use crate::ltx_i2v::{Components, LoadOptions, LtxI2vPipeline, ModelSource};
use crate::memory::ComponentParams;

/// Seed of the demo model's weights: the same model on every machine.
pub const DEMO_SEED: u64 = 0x17_1D_E0;

const SPIECE: &[u8] = include_bytes!("../assets/demo-spiece.model");

fn t5() -> T5Config {
    T5Config {
        vocab_size: 600,
        d_model: 64,
        d_kv: 16,
        d_ff: 128,
        num_layers: 2,
        num_heads: 4,
        ..T5Config::default()
    }
}

fn transformer() -> LtxTransformerConfig {
    LtxTransformerConfig {
        in_channels: 16,
        out_channels: 16,
        num_attention_heads: 4,
        attention_head_dim: 16,
        cross_attention_dim: 64,
        num_layers: 2,
        caption_channels: 64,
        ..LtxTransformerConfig::default()
    }
}

fn vae() -> LtxVaeConfig {
    LtxVaeConfig {
        latent_channels: 16,
        block_out_channels: vec![8, 16, 32, 32],
        decoder_block_out_channels: vec![16, 32, 64],
        layers_per_block: vec![1, 1, 1, 1, 1],
        decoder_layers_per_block: vec![1, 1, 1, 1],
        decoder_spatio_temporal_scaling: vec![true, true, true],
        decoder_inject_noise: vec![false; 4],
        upsample_residual: vec![true; 3],
        upsample_factor: vec![2; 3],
        timestep_conditioning: true,
        ..LtxVaeConfig::default()
    }
}

/// The demo's scheduler: LTX-Video 0.9.7/0.9.8's (every default: no dynamic shift, which the
/// condition pipeline of the multi-scale flow refuses), so the demo runs both flows.
pub fn demo_scheduler() -> FlowMatchConfig {
    FlowMatchConfig::default()
}

/// A tiny latent upsampler for the demo model's 16 latent channels (random weights), so the
/// multi-scale flow and `POST /i2v` run without a download. Returns the model and its
/// parameter handles (for [`crate::LtxI2vPipeline::set_upsampler`]).
pub fn demo_upsampler(opts: LoadOptions) -> Result<Upsampler> {
    let rng = shared_generator(opts.device, DEMO_SEED + 1)?;
    random_upsampler(demo_upsampler_config(), opts, rng)
}

/// The shape of [`demo_upsampler`].
pub fn demo_upsampler_config() -> ltx_models::ltx::LtxUpsamplerConfig {
    ltx_models::ltx::LtxUpsamplerConfig {
        in_channels: vae().latent_channels,
        mid_channels: 32,
        num_blocks_per_stage: 1,
        ..Default::default()
    }
}

/// Attaches [`demo_upsampler`] to `pipe` (placed as its memory mode places components).
pub fn attach_demo_upsampler(pipe: &mut LtxI2vPipeline) -> Result<()> {
    let (up, params) = demo_upsampler(LoadOptions {
        device: pipe.device(),
        dtype: pipe.dtype(),
    })?;
    pipe.set_upsampler(up, params)
}

/// A latent upsampler of `cfg`'s shape with random weights from `rng` (drawn on its device,
/// kept on `opts.device`), with its parameter handles.
pub fn random_upsampler(
    cfg: ltx_models::ltx::LtxUpsamplerConfig,
    opts: LoadOptions,
    rng: SharedGenerator,
) -> Result<Upsampler> {
    let store = WeightStore::random_from(opts.dtype, opts.device, rng);
    let model = tch::no_grad(|| ltx_models::ltx::LtxLatentUpsampler::new(&store.root(), cfg))?;
    Ok((model, store.take_params()))
}

/// A latent upsampler and its parameter handles.
pub type Upsampler = (
    ltx_models::ltx::LtxLatentUpsampler,
    Vec<(String, tch::Tensor)>,
);

/// Builds the demo pipeline (deterministic: the weights come from [`DEMO_SEED`]).
pub fn demo_pipeline(opts: LoadOptions, max_sequence_length: usize) -> Result<LtxI2vPipeline> {
    let rng = shared_generator(opts.device, DEMO_SEED)?;
    random_pipeline(&RandomShapes::demo(), opts, rng, max_sequence_length)
}

/// Component shapes of a random-weight pipeline.
pub struct RandomShapes {
    pub text_encoder: T5Config,
    pub transformer: LtxTransformerConfig,
    pub vae: LtxVaeConfig,
}

impl RandomShapes {
    /// The demo model's tiny shapes.
    pub fn demo() -> Self {
        Self {
            text_encoder: t5(),
            transformer: transformer(),
            vae: vae(),
        }
    }

    /// The released LTX-Video 0.9.7/0.9.8 13B shapes: T5-XXL, the 13B transformer, the 0.9.5+
    /// VAE layout.
    pub fn ltx_13b() -> Self {
        Self {
            text_encoder: T5Config::default(),
            transformer: LtxTransformerConfig::ltx_13b(),
            vae: ltx_models::ltx::single_file::released_vae_config(
                ltx_models::ltx::single_file::VaeLayout::V095,
            ),
        }
    }

    /// The released LTX-Video 2B shapes: T5-XXL, the 2B transformer, the 0.9.1 VAE.
    pub fn ltx_2b() -> Self {
        Self {
            text_encoder: T5Config::default(),
            transformer: LtxTransformerConfig::default(),
            vae: ltx_models::ltx::single_file::released_vae_config(
                ltx_models::ltx::single_file::VaeLayout::V091,
            ),
        }
    }
}

/// A pipeline of `shapes` with random weights from `rng`, the demo tokenizer and the demo
/// scheduler, on `opts.device`; the numbers are drawn on `rng`'s device (a GPU draws billions
/// of them quickly), component after component from the one sequence.
pub fn random_pipeline(
    shapes: &RandomShapes,
    opts: LoadOptions,
    rng: SharedGenerator,
    max_sequence_length: usize,
) -> Result<LtxI2vPipeline> {
    // One store per component, so each component's parameters can be placed on their own.
    let stores: [WeightStore; 3] =
        std::array::from_fn(|_| WeightStore::random_from(opts.dtype, opts.device, rng.clone()));
    let parts = tch::no_grad(|| -> Result<Components> {
        Ok(Components {
            tokenizer: T5Tokenizer::from_sentencepiece(SPIECE, 100, max_sequence_length)?,
            text_encoder: TextEncoder::T5(T5Encoder::new(
                &stores[0].root(),
                shapes.text_encoder.clone(),
            )?),
            transformer: LtxTransformer::new(&stores[1].root(), shapes.transformer.clone())?,
            vae: LtxVae::new(&stores[2].root(), shapes.vae.clone())?,
            scheduler: demo_scheduler(),
            weight_bytes: stores.iter().map(WeightStore::loaded_bytes).sum(),
            params: ComponentParams {
                text_encoder: stores[0].take_params(),
                transformer: stores[1].take_params(),
                vae: stores[2].take_params(),
            },
        })
    })?;
    Ok(LtxI2vPipeline::from_components(
        parts,
        opts,
        ModelSource::Demo,
    ))
}
