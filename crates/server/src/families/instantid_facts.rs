//! What the InstantID models' configs say before any weight loads, for the residency
//! manager's first decision: the shapes of the workload formula and each component's weight
//! bytes in the dtypes the family loads. A diffusers folder's UNet, text encoders and VAE and
//! the IdentityNet are built on shape-only stores from their configs (tensors with shapes and
//! no memory), the IP layers from the UNet's attention widths; the face Resampler counts as
//! the rest of the IP-Adapter file (a pickle) on disk. The demo family is
//! built once on the CPU and measured. Once the family is loaded, the pipeline's own figures
//! replace these.

use std::path::Path;

use ltx_models::config::read_config;
use ltx_models::sdxl::clip::{ClipTextConfig, ClipTextModel, ClipTextModelWithProjection};
use ltx_models::sdxl::unet::{
    ControlNetConfig, ControlNetModel, UNet2DConditionConfig, UNet2DConditionModel,
};
use ltx_models::sdxl::vae::{AutoencoderKl, AutoencoderKlConfig};
use ltx_models::weights::WeightStore;
use ltx_models::ModelError;
use ltx_offload::weights::{group_sizes, prefix_units};
use ltx_pipelines::budget::ComponentSizes;
use ltx_pipelines::instantid::{
    demo::demo_instantid, InstantIdLoadOptions, InstantIdPaths, InstantIdPipeline, InstantIdShapes,
};
use ltx_pipelines::sdxl_tiled_decode::{SdxlTileConfig, TilingMode};
use ltx_pipelines::MemoryOptions;

/// The configured InstantID models' shapes and sizes.
#[derive(Debug, Clone)]
pub struct InstantIdFacts {
    pub shapes: InstantIdShapes,
    pub sizes: ComponentSizes,
    /// The VAE's decode tile (diffusers' tile for it, feather-weighted).
    pub tile: SdxlTileConfig,
}

fn all_bytes(store: &WeightStore) -> u64 {
    group_sizes(&store.take_params(), |_| None).0
}

impl InstantIdFacts {
    /// `paths` (None: the demo family) in the dtypes of `opts`.
    pub fn read(
        paths: Option<&InstantIdPaths>,
        opts: &InstantIdLoadOptions,
    ) -> Result<Self, ModelError> {
        match paths {
            None => Self::demo(opts),
            Some(p) => Self::folder(p, opts),
        }
    }

    fn demo(opts: &InstantIdLoadOptions) -> Result<Self, ModelError> {
        let cpu = InstantIdLoadOptions {
            sdxl: ltx_models::sdxl::folder::SdxlLoadOptions {
                device: tch::Device::Cpu,
                ..opts.sdxl.clone()
            },
            ..opts.clone()
        };
        let pipe = InstantIdPipeline::from_models(
            demo_instantid(&cpu)?,
            tch::Device::Cpu,
            MemoryOptions::default(),
        )?;
        Ok(Self {
            shapes: InstantIdShapes::of_models(pipe.models())?,
            sizes: pipe.component_sizes(),
            tile: pipe.default_vae_tiling(TilingMode::Weighted),
        })
    }

    fn folder(p: &InstantIdPaths, opts: &InstantIdLoadOptions) -> Result<Self, ModelError> {
        let dtypes = &opts.sdxl.dtypes;
        let cfg = |dir: &str| p.sdxl.join(dir).join("config.json");
        let unet_cfg: UNet2DConditionConfig = read_config(&cfg("unet"))?;
        let vae_cfg: AutoencoderKlConfig = read_config(&cfg("vae"))?;
        let t1: ClipTextConfig = read_config(&cfg("text_encoder"))?;
        let t2: ClipTextConfig = read_config(&cfg("text_encoder_2"))?;
        let cn_cfg: ControlNetConfig = read_config(&p.controlnet.join("config.json"))?;
        let shapes = InstantIdShapes::from_configs(&unet_cfg, &vae_cfg, [&t1, &t2], dtypes)?;

        let store = WeightStore::shapes_only(dtypes.text_encoder);
        ClipTextModel::new(&store.root(), t1)?;
        let mut text = all_bytes(&store);
        let store = WeightStore::shapes_only(dtypes.text_encoder_2);
        ClipTextModelWithProjection::new(&store.root(), t2)?;
        text += all_bytes(&store);

        let store = WeightStore::shapes_only(dtypes.unet);
        let unet = UNet2DConditionModel::new(&store.root(), unet_cfg)?;
        let mut unet_params = store.take_params();
        // The IP layers bound to every attn2 (they stream with their attention unit).
        let ip_store = WeightStore::shapes_only(opts.face_adapter);
        let mut ip_bytes = 0;
        for slot in unet.ip_attention_layers() {
            for which in ["to_k_ip", "to_v_ip"] {
                let name = format!("{}.{which}.weight", slot.name);
                let t = ip_store
                    .root()
                    .get(&name, &[slot.query_dim, slot.cross_dim])?;
                ip_bytes += ltx_models::weights::tensor_bytes(&t);
                unet_params.push((name, t));
            }
        }
        let (unet_all, unet_rest, unet_unit) =
            group_sizes(&unet_params, prefix_units(&unet.block_names()));
        let store = WeightStore::shapes_only(opts.controlnet);
        let cn = ControlNetModel::new(&store.root(), cn_cfg)?;
        let (cn_all, cn_rest, cn_unit) =
            group_sizes(&store.take_params(), prefix_units(&cn.block_names()));
        // The face Resampler: the rest of the IP-Adapter file, as stored.
        let resampler = file_bytes(&p.ip_adapter)?.saturating_sub(ip_bytes);

        let store = WeightStore::shapes_only(dtypes.vae_kind(&vae_cfg));
        let tile = SdxlTileConfig::for_vae(
            &AutoencoderKl::new(&store.root(), vae_cfg)?,
            TilingMode::Weighted,
        );
        let vae = all_bytes(&store);
        Ok(Self {
            shapes,
            tile,
            sizes: ComponentSizes {
                text_encoder: text,
                transformer: unet_all + cn_all + resampler,
                vae,
                upsampler: 0,
                transformer_remainder: unet_rest + cn_rest + resampler,
                transformer_max_unit: unet_unit + cn_unit,
                text_remainder: text,
                text_max_unit: 0,
            },
        })
    }
}

fn file_bytes(path: &Path) -> Result<u64, ModelError> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ltx_pipelines::instantid::InstantIdModels;

    #[test]
    fn a_folders_facts_match_the_loaded_pipeline() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/sdxl/instantid");
        let paths = InstantIdPaths::from_checkpoints(&dir.join("sdxl"), &dir);
        let opts = InstantIdLoadOptions::new(tch::Device::Cpu, tch::Kind::Float);
        let facts = InstantIdFacts::read(Some(&paths), &opts).unwrap();
        let pipe = InstantIdPipeline::load_placed(
            tch::Device::Cpu,
            tch::Kind::Float,
            MemoryOptions::default(),
            |o| InstantIdModels::load(&paths, o),
        )
        .unwrap();
        let loaded = pipe.component_sizes();
        assert_eq!(
            facts.shapes,
            InstantIdShapes::of_models(pipe.models()).unwrap()
        );
        assert_eq!(facts.tile, pipe.default_vae_tiling(TilingMode::Weighted));
        assert_eq!(facts.sizes.text_encoder, loaded.text_encoder);
        assert_eq!(facts.sizes.vae, loaded.vae);
        assert_eq!(
            facts.sizes.transformer_max_unit,
            loaded.transformer_max_unit
        );
        let rel = |a: u64, b: u64| (a as f64 - b as f64).abs() / b as f64;
        assert!(rel(facts.sizes.transformer, loaded.transformer) < 0.05);
    }

    #[test]
    fn the_demos_facts_are_its_pipelines() {
        let opts = InstantIdLoadOptions::new(tch::Device::Cpu, tch::Kind::Float);
        let facts = InstantIdFacts::read(None, &opts).unwrap();
        assert!(facts.sizes.total() > 1_000_000, "{:?}", facts.sizes);
        assert_eq!(facts.sizes.upsampler, 0);
        assert_eq!(facts.shapes.vae_ratio, 8);
    }
}
