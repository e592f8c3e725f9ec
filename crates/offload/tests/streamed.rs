//! Streamed and model-offloaded forwards equal the resident forward, on the CPU: the "device"
//! is a second host buffer, the kernels and their order are the same, so the outputs must be
//! bitwise equal. The ring's call order is checked from the streamer's own record.

use std::sync::{Arc, Mutex};

use ltx_models::ltx::{LtxTransformer, LtxTransformerConfig, TransformerInput};
use ltx_models::t5::{T5Config, T5Encoder};
use ltx_models::weights::WeightStore;
use ltx_offload::weights::{ltx_transformer_unit, t5_unit, CHUNK_BYTES};
use ltx_offload::{OffloadedWeights, Streamer};
use tch::{Device, Kind, Tensor};

/// torch's generator is process-wide: tests that seed it take turns.
static RNG: Mutex<()> = Mutex::new(());

fn cfg() -> LtxTransformerConfig {
    LtxTransformerConfig {
        in_channels: 16,
        out_channels: 16,
        num_attention_heads: 4,
        attention_head_dim: 16,
        cross_attention_dim: 64,
        num_layers: 5,
        caption_channels: 64,
        ..LtxTransformerConfig::default()
    }
}

/// The same random transformer each call; with the store so its parameters can be taken.
fn transformer() -> (LtxTransformer, WeightStore) {
    tch::manual_seed(7);
    let store = WeightStore::random(Kind::Float, Device::Cpu);
    let t = LtxTransformer::new(&store.root(), cfg()).unwrap();
    (t, store)
}

fn forward(t: &LtxTransformer, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    let (b, f, h, w) = (2, 2, 3, 4);
    let x = Tensor::randn([b, f * h * w, 16], (Kind::Float, Device::Cpu));
    let text = Tensor::randn([b, 7, 64], (Kind::Float, Device::Cpu));
    let mask = Tensor::ones([b, 7], (Kind::Float, Device::Cpu));
    let timestep = Tensor::from_slice(&[500f32, 250.]);
    tch::no_grad(|| {
        t.forward(&TransformerInput {
            hidden_states: &x,
            encoder_hidden_states: &text,
            timestep: &timestep,
            encoder_attention_mask: Some(&mask),
            num_frames: f,
            height: h,
            width: w,
            rope_interpolation_scale: [8.0 / 25.0, 32.0, 32.0],
            video_coords: None,
        })
        .unwrap()
    })
}

#[test]
fn streamed_transformer_equals_resident_for_every_prefetch_depth() {
    let _g = RNG.lock().unwrap_or_else(|p| p.into_inner());
    let (resident, _) = transformer();
    let want = [forward(&resident, 1), forward(&resident, 2)];
    for prefetch in [0, 1, 2, 4, 9] {
        let (mut t, store) = transformer();
        let w = OffloadedWeights::new(
            store.take_params(),
            ltx_transformer_unit,
            Device::Cpu,
            CHUNK_BYTES,
        )
        .unwrap();
        assert_eq!(w.num_units(), 5);
        let s = Arc::new(Streamer::new(w, prefetch, Device::Cpu).unwrap());
        t.set_block_hooks(Some(s.clone()));
        for (seed, want) in [(1, &want[0]), (2, &want[1])] {
            let got = forward(&t, seed);
            assert!(
                got.equal(want),
                "prefetch {prefetch}, forward {seed}: max diff {}",
                (&got - want).abs().max().double_value(&[])
            );
        }
        let slots = (prefetch + 1).min(5);
        assert_eq!(s.slots(), slots);
        let expected_copies = if slots < 5 { 2 * 5 + slots } else { 5 };
        assert_eq!(s.copies(), expected_copies as u64, "prefetch {prefetch}");
    }
}

#[test]
fn the_ring_waits_binds_and_releases_in_order() {
    let _g = RNG.lock().unwrap_or_else(|p| p.into_inner());
    let (mut t, store) = transformer();
    let params = store.take_params();
    let block4: Vec<Tensor> = params
        .iter()
        .filter(|(n, _)| n.starts_with("transformer_blocks.4."))
        .map(|(_, t)| t.shallow_clone())
        .collect();
    let w = OffloadedWeights::new(params, ltx_transformer_unit, Device::Cpu, CHUNK_BYTES).unwrap();
    let host = w.unit_host(4).unwrap();
    let host_range = host.data_ptr() as usize..host.data_ptr() as usize + host.numel();
    let in_host = |t: &Tensor| host_range.contains(&(t.data_ptr() as usize));
    assert!(
        block4.iter().all(in_host),
        "offloaded: the modules read the host copy"
    );
    let s = Arc::new(Streamer::new(w, 1, Device::Cpu).unwrap());
    t.set_block_hooks(Some(s.clone()));
    s.record_calls();
    let _ = forward(&t, 1);
    // Block 4 ran from its slot (a different buffer), not from the host copy.
    assert!(
        block4.iter().all(|t| !in_host(t)),
        "streamed: the modules read a slot"
    );
    let calls = s.take_calls();
    let want: Vec<&str> = vec![
        "copy 0->0",
        "copy 1->1", // cold start: unit 0 and one ahead
        "wait 0",
        "bind 0->0",
        "release 0",
        "copy 2->0", //
        "wait 1",
        "bind 1->1",
        "release 1",
        "copy 3->1", //
        "wait 0",
        "bind 2->0",
        "release 0",
        "copy 4->0", //
        "wait 1",
        "bind 3->1",
        "release 1",
        "copy 0->1", // the next forward's first unit
        "wait 0",
        "bind 4->0",
        "release 0",
        "copy 1->0",
    ];
    assert_eq!(calls, want);
    // The next forward finds its first units already on their way: no cold start.
    let _ = forward(&t, 1);
    assert_eq!(&s.take_calls()[..2], ["wait 1", "bind 0->1"]);
}

#[test]
fn model_offload_round_trip_keeps_the_output_and_host_memory_is_one_copy() {
    let _g = RNG.lock().unwrap_or_else(|p| p.into_inner());
    let (resident, _) = transformer();
    let want = forward(&resident, 3);
    let (t, store) = transformer();
    let loaded = store.loaded_bytes();
    let mut w = OffloadedWeights::new(
        store.take_params(),
        ltx_transformer_unit,
        Device::Cpu,
        CHUNK_BYTES,
    )
    .unwrap();
    assert_eq!(w.weight_bytes(), loaded);
    // Alignment padding only: ≤ 1.1× the weights.
    assert!(
        w.host_bytes() as f64 <= 1.1 * loaded as f64,
        "host {} for {} weight bytes",
        w.host_bytes(),
        loaded
    );
    assert!(forward(&t, 3).equal(&want), "host copies");
    w.onload().unwrap();
    assert!(forward(&t, 3).equal(&want), "onloaded");
    w.offload().unwrap();
    assert!(forward(&t, 3).equal(&want), "offloaded again");
}

#[test]
fn streamed_t5_equals_resident() {
    let _g = RNG.lock().unwrap_or_else(|p| p.into_inner());
    let cfg = T5Config {
        vocab_size: 100,
        d_model: 32,
        d_kv: 8,
        d_ff: 64,
        num_layers: 3,
        num_heads: 4,
        ..T5Config::default()
    };
    let build = || {
        tch::manual_seed(11);
        let store = WeightStore::random(Kind::Float, Device::Cpu);
        (T5Encoder::new(&store.root(), cfg.clone()).unwrap(), store)
    };
    let ids = Tensor::from_slice(&[3i64, 14, 15, 92, 6, 5, 0, 0]).view([1, 8]);
    let (resident, _) = build();
    let want = tch::no_grad(|| resident.forward(&ids).unwrap());
    let (mut t5, store) = build();
    let w = OffloadedWeights::new(store.take_params(), t5_unit, Device::Cpu, CHUNK_BYTES).unwrap();
    assert_eq!(w.num_units(), 3);
    let s = Arc::new(Streamer::new(w, 1, Device::Cpu).unwrap());
    t5.set_block_hooks(Some(s));
    let got = tch::no_grad(|| t5.forward(&ids).unwrap());
    assert!(got.equal(&want));
}

#[test]
fn the_synchronous_baseline_and_into_weights_keep_the_output() {
    use ltx_offload::naive::SyncCopyHooks;
    let _g = RNG.lock().unwrap_or_else(|p| p.into_inner());
    let (resident, _) = transformer();
    let want = forward(&resident, 4);
    let (mut t, store) = transformer();
    let named = store.take_params();
    let handles: Vec<(String, Tensor)> = named
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let w = OffloadedWeights::new(named, ltx_transformer_unit, Device::Cpu, CHUNK_BYTES).unwrap();
    let s = Arc::new(Streamer::new(w, 1, Device::Cpu).unwrap());
    t.set_block_hooks(Some(s.clone()));
    assert!(forward(&t, 4).equal(&want));
    // Back from streaming: the hooks go, the modules read the host copy, same output.
    t.set_block_hooks(None);
    let s = Arc::into_inner(s).expect("only the test holds the streamer now");
    let w = s.into_weights().unwrap();
    assert!(forward(&t, 4).equal(&want));
    drop(w);
    // The same handles into a pageable arena, copied unit by unit by the baseline.
    let w = OffloadedWeights::with_pinning(
        handles,
        ltx_transformer_unit,
        Device::Cpu,
        CHUNK_BYTES,
        false,
    )
    .unwrap();
    t.set_block_hooks(Some(Arc::new(SyncCopyHooks::new(w, Device::Cpu))));
    assert!(forward(&t, 4).equal(&want));
}
