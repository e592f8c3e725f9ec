//! diffusers 0.42.1's `infer_diffusers_model_type`: which model a single file holds, decided by
//! the presence (and a few shapes) of its `CHECKPOINT_KEY_NAMES`, checked in diffusers' order.
//! Only the header is needed. Where diffusers looks at tensor values or would fail on a missing
//! key, the family is named instead of a variant.

use std::collections::HashMap;

/// The key that makes diffusers call a file `xl_base` (the 10th OpenCLIP bigG layer).
pub const XL_BASE_KEY: &str =
    "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias";

const V1: &str = "model.diffusion_model.output_blocks.11.0.skip_connection.weight";
const V2: &str = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight";
const XL_REFINER: &str = "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias";
const UPSCALE: &str = "model.diffusion_model.input_blocks.10.0.skip_connection.bias";
const CONTROLNET: [&str; 2] = [
    "control_model.time_embed.0.weight",
    "controlnet_cond_embedding.conv_in.weight",
];
const INPAINTING: &str = "model.diffusion_model.input_blocks.0.0.weight";
const CASCADE_C: &str = "clip_txt_mapper.weight";
const CASCADE_B: &str = "down_blocks.1.0.channelwise.0.weight";
const SD3: [&str; 2] = [
    "joint_blocks.0.context_block.adaLN_modulation.1.bias",
    "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias",
];
const SD35_LARGE: [&str; 2] = [
    "joint_blocks.37.x_block.mlp.fc1.weight",
    "model.diffusion_model.joint_blocks.37.x_block.mlp.fc1.weight",
];
const ANIMATEDIFF: &str =
    "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe";
const FLUX: [&str; 2] = [
    "double_blocks.0.img_attn.norm.key_norm.scale",
    "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale",
];
const LTX: [&str; 6] = [
    "model.diffusion_model.patchify_proj.weight",
    "model.diffusion_model.transformer_blocks.27.scale_shift_table",
    "patchify_proj.weight",
    "transformer_blocks.27.scale_shift_table",
    "vae.decoder.last_scale_shift_table",
    "vae.decoder.up_blocks.9.res_blocks.0.conv1.conv.weight",
];

/// Model types recognised by one key (or any of several), in diffusers' order after LTX-Video.
const BY_KEY: &[(&str, &[&str])] = &[
    (
        "autoencoder-dc",
        &["decoder.stages.1.op_list.0.main.conv.conv.bias"],
    ),
    (
        "mochi-1-preview",
        &[
            "model.diffusion_model.blocks.0.attn.qkv_x.weight",
            "blocks.0.attn.qkv_x.weight",
        ],
    ),
    (
        "hunyuan-video",
        &["txt_in.individual_token_refiner.blocks.0.adaLN_modulation.1.bias"],
    ),
];

const LATER: &[(&str, &[&str])] = &[
    (
        "z-image-turbo",
        &[
            "model.diffusion_model.layers.0.adaLN_modulation.0.weight",
            "layers.0.adaLN_modulation.0.weight",
        ],
    ),
    (
        "lumina2",
        &[
            "model.diffusion_model.cap_embedder.0.weight",
            "cap_embedder.0.weight",
        ],
    ),
    (
        "sana",
        &[
            "blocks.0.cross_attn.q_linear.weight",
            "blocks.0.cross_attn.q_linear.bias",
            "blocks.0.cross_attn.kv_linear.weight",
            "blocks.0.cross_attn.kv_linear.bias",
        ],
    ),
    (
        "wan",
        &["model.diffusion_model.head.modulation", "head.modulation"],
    ),
    (
        "qwen-image-2.1",
        &[
            "model.diffusion_model.txt_in.text_norm.weight",
            "txt_in.text_norm.weight",
        ],
    ),
    (
        "krea2",
        &[
            "model.diffusion_model.txtfusion.projector.weight",
            "txtfusion.projector.weight",
        ],
    ),
    (
        "wan-t2v-14B (Wan VAE)",
        &["decoder.middle.0.residual.0.gamma"],
    ),
    (
        "hidream",
        &["double_stream_blocks.0.block.adaLN_modulation.1.bias"],
    ),
];

const LAST: &[(&str, &[&str])] = &[
    ("z-image-turbo-controlnet-2.x", &["control_layers.14.adaLN_modulation.0.weight"]),
    ("z-image-turbo-controlnet", &["control_all_x_embedder.2-1.weight"]),
    (
        "ltx2-dev",
        &[
            "model.diffusion_model.av_ca_a2v_gate_adaln_single.emb.timestep_embedder.linear_1.weight",
            "vae.per_channel_statistics.mean-of-means",
            "audio_vae.per_channel_statistics.mean-of-means",
        ],
    ),
    ("minimax-h3", &["token_refiner.blocks.0.attn.qkv_proj.weight"]),
];

struct Keys<'a>(&'a HashMap<String, Vec<i64>>);

impl Keys<'_> {
    fn has(&self, k: &str) -> bool {
        self.0.contains_key(k)
    }
    fn any(&self, ks: &[&str]) -> bool {
        ks.iter().any(|k| self.has(k))
    }
    fn all(&self, ks: &[&str]) -> bool {
        ks.iter().all(|k| self.has(k))
    }
    /// Dimension `d` of `k` (negative from the end), if the key and dimension exist.
    fn dim(&self, k: &str, d: isize) -> Option<i64> {
        let s = self.0.get(k)?;
        let i = if d < 0 { s.len() as isize + d } else { d };
        usize::try_from(i).ok().and_then(|i| s.get(i).copied())
    }
}

/// diffusers' model type for a checkpoint with these tensor names and shapes (`xl_base` for an
/// SDXL base file). Files matching no key get `v1`, as in diffusers; [`describe`] says so.
pub fn infer_model_type(shapes: &HashMap<String, Vec<i64>>) -> &'static str {
    let k = Keys(shapes);
    let v2 = k.dim(V2, -1) == Some(1024);
    if k.dim(INPAINTING, 1) == Some(9) {
        return if v2 {
            "inpainting_v2"
        } else if k.has(XL_BASE_KEY) {
            "xl_inpaint"
        } else {
            "inpainting"
        };
    }
    if v2 {
        return "v2";
    }
    if k.has("edm_mean") {
        return "playground-v2-5";
    }
    if k.has(XL_BASE_KEY) {
        return "xl_base";
    }
    if k.has(XL_REFINER) {
        return "xl_refiner";
    }
    if k.has(UPSCALE) {
        return "upscale";
    }
    if k.any(&CONTROLNET) {
        return if !k.has("add_embedding.linear_1.weight") {
            "controlnet"
        } else if k.has("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k.weight") {
            "controlnet_xl_large"
        } else if k.has("down_blocks.1.attentions.0.norm.weight") {
            "controlnet_xl_mid"
        } else {
            "controlnet_xl_small"
        };
    }
    match k.dim(CASCADE_C, 0) {
        Some(1536) => return "stable_cascade_stage_c_lite",
        Some(2048) => return "stable_cascade_stage_c",
        _ => {}
    }
    match k.dim(CASCADE_B, -1) {
        Some(576) => return "stable_cascade_stage_b_lite",
        Some(640) => return "stable_cascade_stage_b",
        _ => {}
    }
    if SD3.iter().any(|key| k.dim(key, -1) == Some(9216)) {
        let pos = if k.has("model.diffusion_model.pos_embed") {
            "model.diffusion_model.pos_embed"
        } else {
            "pos_embed"
        };
        return match k.dim(pos, 1) {
            Some(36864) => "sd3",
            Some(147456) => "sd35_medium",
            _ => "sd3 (unknown size)",
        };
    }
    if k.any(&SD35_LARGE) {
        return "sd35_large";
    }
    if k.has(ANIMATEDIFF) {
        return if k.has("controlnet_cond_embedding.conv_in.weight") {
            "animatediff_scribble"
        } else if k.has("controlnet_cond_embedding.weight") {
            "animatediff_rgb"
        } else if k.has("mid_block.motion_modules.0.temporal_transformer.norm.bias") {
            "animatediff_v2"
        } else if k.dim(
            "up_blocks.2.motion_modules.0.temporal_transformer.norm.weight",
            -1,
        ) == Some(320)
        {
            "animatediff_sdxl_beta"
        } else if k.dim(ANIMATEDIFF, 1) == Some(24) {
            "animatediff_v1"
        } else {
            "animatediff_v3"
        };
    }
    let d = "model.diffusion_model.";
    let either = |name: &str| [format!("{d}{name}"), name.to_string()];
    let has_either = |name: &str| either(name).iter().any(|n| k.has(n));
    if has_either("single_stream_modulation.lin.weight") {
        return "flux-2-dev";
    }
    if has_either("early_stream_modulations.image.lin.weight") {
        return if has_either("ref_time_in.in_layer.weight") {
            "flux-3-image-distilled"
        } else {
            "flux-3-image"
        };
    }
    if has_either("distilled_guidance_layer.in_proj.bias") {
        return "chroma";
    }
    if k.any(&FLUX) {
        if !has_either("guidance_in.in_layer.bias") {
            return "flux-schnell";
        }
        let img_in = either("img_in.weight")
            .into_iter()
            .find(|n| k.has(n))
            .and_then(|n| k.dim(&n, 1));
        return match img_in {
            Some(384) => "flux-fill",
            Some(128) => "flux-depth",
            _ => "flux-dev",
        };
    }
    if k.any(&LTX) {
        return if shapes
            .keys()
            .any(|n| n.ends_with("transformer_blocks.47.scale_shift_table"))
        {
            "ltx-video-0.9.7"
        } else if k.has("vae.encoder.conv_in.conv.bias")
            && k.dim("vae.encoder.conv_out.conv.weight", 1) == Some(2048)
        {
            "ltx-video-0.9.5"
        } else if k.has("vae.decoder.last_time_embedder.timestep_embedder.linear_1.weight") {
            "ltx-video-0.9.1"
        } else {
            "ltx-video"
        };
    }
    if let Some((name, _)) = BY_KEY.iter().find(|(_, keys)| k.any(keys)) {
        return name;
    }
    if k.all(&[
        "double_layers.0.attn.w2q.weight",
        "double_layers.0.attn.w1q.weight",
        "cond_seq_linear.weight",
        "t_embedder.mlp.0.weight",
    ]) {
        return "auraflow";
    }
    if k.dim(INPAINTING, 1) == Some(8) {
        return "instruct-pix2pix";
    }
    if let Some((name, _)) = LATER.iter().find(|(_, keys)| k.any(keys)) {
        return name;
    }
    if k.all(&[
        "net.x_embedder.proj.1.weight",
        "net.blocks.block1.blocks.0.block.attn.to_q.0.weight",
        "net.extra_pos_embedder.pos_emb_h",
    ]) {
        return "cosmos-1.0";
    }
    if k.all(&[
        "net.x_embedder.proj.1.weight",
        "net.blocks.0.self_attn.q_proj.weight",
        "net.pos_embedder.dim_spatial_range",
    ]) {
        return "cosmos-2.0";
    }
    if let Some((name, _)) = LAST.iter().find(|(_, keys)| k.any(keys)) {
        return name;
    }
    "v1"
}

/// A sentence for an error: the model type, and for `v1` whether the file has SD 1.x's key at
/// all (diffusers falls back to `v1` for anything it does not recognise).
pub fn describe(shapes: &HashMap<String, Vec<i64>>) -> String {
    match infer_model_type(shapes) {
        "v1" if shapes.contains_key(V1) => "`v1` (Stable Diffusion 1.x)".into(),
        "v1" => "no model type diffusers recognises (it would fall back to `v1`)".into(),
        "xl_refiner" => "`xl_refiner` (the SDXL refiner: one OpenCLIP encoder, 2.3 B UNet)".into(),
        "xl_inpaint" => "`xl_inpaint` (a 9-channel SDXL inpainting UNet)".into(),
        "playground-v2-5" => "`playground-v2-5` (SDXL-shaped, EDM latents)".into(),
        other => format!("`{other}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(keys: &[(&str, &[i64])]) -> HashMap<String, Vec<i64>> {
        keys.iter()
            .map(|(k, s)| (k.to_string(), s.to_vec()))
            .collect()
    }

    #[test]
    fn follows_diffusers_order_and_shapes() {
        let xl = [(XL_BASE_KEY, &[1280][..])];
        assert_eq!(infer_model_type(&shapes(&xl)), "xl_base");
        let inpaint = [
            (XL_BASE_KEY, &[1280][..]),
            (INPAINTING, &[320, 9, 3, 3][..]),
        ];
        assert_eq!(infer_model_type(&shapes(&inpaint)), "xl_inpaint");
        let plain = [
            (XL_BASE_KEY, &[1280][..]),
            (INPAINTING, &[320, 4, 3, 3][..]),
        ];
        assert_eq!(infer_model_type(&shapes(&plain)), "xl_base");
        let playground = [(XL_BASE_KEY, &[1280][..]), ("edm_mean", &[1, 4, 1, 1][..])];
        assert_eq!(infer_model_type(&shapes(&playground)), "playground-v2-5");
        assert_eq!(infer_model_type(&shapes(&[(V2, &[320, 1024])])), "v2");
        assert_eq!(infer_model_type(&shapes(&[(V2, &[320, 768])])), "v1");
        let sd3 = [
            (SD3[1], &[9216][..]),
            ("model.diffusion_model.pos_embed", &[1, 36864, 1536][..]),
        ];
        assert_eq!(infer_model_type(&shapes(&sd3)), "sd3");
        let flux = [
            (FLUX[1], &[128][..]),
            (
                "model.diffusion_model.guidance_in.in_layer.bias",
                &[3072][..],
            ),
        ];
        assert_eq!(infer_model_type(&shapes(&flux)), "flux-dev");
        assert_eq!(
            infer_model_type(&shapes(&[(LTX[0], &[2048, 128])])),
            "ltx-video"
        );
        assert!(describe(&shapes(&[("foo", &[1])])).contains("fall back"));
        assert!(describe(&shapes(&[(V1, &[320, 640, 1, 1])])).contains("1.x"));
    }
}
