//! The host memory the offload modes hold for the released model shapes, planned from the real
//! modules' parameter names and sizes (shape-only weights: nothing the size of a model is
//! allocated). What the arena counts is what it allocates, and that must stay within 1.1× the
//! weights: torch's pinned allocator would round a 9.5 GB T5-XXL chunk up to 16 GiB.

use ltx_models::ltx::single_file::{released_vae_config, VaeLayout};
use ltx_models::ltx::{LtxTransformer, LtxTransformerConfig, LtxVae};
use ltx_models::t5::{T5Config, T5Encoder};
use ltx_models::weights::WeightStore;
use ltx_offload::arena::Layout;
use ltx_offload::weights::{ltx_transformer_unit, plan_layout, t5_unit, UnitOf, CHUNK_BYTES};
use tch::Kind;

fn sizes(store: &WeightStore) -> Vec<(String, usize)> {
    store
        .take_params()
        .into_iter()
        .map(|(n, t)| {
            let b = t.numel() * t.kind().elt_size_in_bytes();
            (n, b)
        })
        .collect()
}

fn t5_xxl() -> Vec<(String, usize)> {
    let store = WeightStore::shapes_only(Kind::BFloat16);
    T5Encoder::new(&store.root(), T5Config::default()).unwrap();
    sizes(&store)
}

fn transformer(cfg: LtxTransformerConfig) -> Vec<(String, usize)> {
    let store = WeightStore::shapes_only(Kind::BFloat16);
    LtxTransformer::new(&store.root(), cfg).unwrap();
    sizes(&store)
}

fn vae(layout: VaeLayout) -> Vec<(String, usize)> {
    let store = WeightStore::shapes_only(Kind::BFloat16);
    LtxVae::new(&store.root(), released_vae_config(layout)).unwrap();
    sizes(&store)
}

/// What torch's caching pinned allocator would hold for the same chunks (next power of two).
fn torch_pinned(l: &Layout) -> u64 {
    l.chunks
        .iter()
        .map(|&c| (c as u64).next_power_of_two())
        .sum()
}

/// Checks one component in one mode; returns (weight bytes, host bytes).
fn check(what: &str, named: &[(String, usize)], unit_of: UnitOf, streamed: bool) -> (u64, u64) {
    let weights: u64 = named.iter().map(|(_, b)| *b as u64).sum();
    let l = plan_layout(named, unit_of, CHUNK_BYTES).unwrap();
    let host = l.total_bytes() as u64;
    let ratio = host as f64 / weights as f64;
    println!(
        "{what:<40} weights {:>7.3} GB, host {:>7.3} GB ({ratio:.4}x) in {:>3} chunks; torch's pinned allocator would hold {:.3} GB ({:.2}x)",
        weights as f64 / 1e9,
        host as f64 / 1e9,
        l.chunks.len(),
        torch_pinned(&l) as f64 / 1e9,
        torch_pinned(&l) as f64 / weights as f64
    );
    assert!(ratio <= 1.1, "{what}: {ratio}");
    // No chunk is larger than a chunk, unless it holds one unit (or one tensor) that is.
    let largest_piece = named.iter().map(|(_, b)| *b).max().unwrap_or(0);
    let largest_unit = if streamed {
        let mut per: std::collections::BTreeMap<usize, usize> = Default::default();
        for (n, b) in named {
            if let Some(u) = unit_of(n) {
                *per.entry(u).or_default() += b.div_ceil(256) * 256;
            }
        }
        per.values().copied().max().unwrap_or(0)
    } else {
        0
    };
    let cap = CHUNK_BYTES
        .max(largest_piece.div_ceil(256) * 256)
        .max(largest_unit);
    assert!(
        l.chunks.iter().all(|&c| c <= cap),
        "{what}: a chunk over {cap}: {:?}",
        l.chunks
    );
    (weights, host)
}

fn whole(_: &str) -> Option<usize> {
    None
}

#[test]
fn host_memory_for_the_released_2b_and_13b_shapes_is_within_1_1x_of_the_weights() {
    let t5 = t5_xxl();
    for (name, tr, vae_layout) in [
        ("2B", LtxTransformerConfig::default(), VaeLayout::V091),
        ("13B", LtxTransformerConfig::ltx_13b(), VaeLayout::V095),
    ] {
        let tr = transformer(tr);
        let vae = vae(vae_layout);
        let (mut weights, mut model_host, mut seq_host) = (0, 0, 0);
        for (component, named, unit_of) in [
            ("T5-XXL", &t5, t5_unit as UnitOf),
            ("transformer", &tr, ltx_transformer_unit as UnitOf),
        ] {
            let (w, h) = check(
                &format!("{name} {component}, model mode"),
                named,
                whole,
                false,
            );
            let (_, s) = check(
                &format!("{name} {component}, sequential mode"),
                named,
                unit_of,
                true,
            );
            weights += w;
            model_host += h;
            seq_host += s;
        }
        let (w, h) = check(&format!("{name} VAE, model mode"), &vae, whole, false);
        weights += w;
        model_host += h;
        seq_host += h;
        for (mode, host) in [("model", model_host), ("sequential", seq_host)] {
            let ratio = host as f64 / weights as f64;
            println!("{name} pipeline, {mode} mode: {ratio:.4}x the weights");
            assert!(ratio <= 1.1, "{name} {mode}: {ratio}");
        }
    }
}
