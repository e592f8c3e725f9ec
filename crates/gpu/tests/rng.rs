//! The generators' contract: a CPU `Generator::new(Cpu, s)` draws bit for bit what
//! `tch::manual_seed(s)` and the same `Tensor::randn` calls draw from torch's default CPU
//! generator (what every parity fixture was made with), and two generators on two threads
//! draw what each draws alone.
//!
//! One test function: it compares with torch's process-wide generator, which no other test
//! in this binary may touch meanwhile.

use ltx_gpu::rng::{Generator, Generators};
use tch::{Device, Kind, Tensor};

/// Shapes crossing torch's vectorised normal path (16+ contiguous floats) and its scalar one,
/// odd sizes, an empty one, in several kinds, one after another from one generator.
fn draws() -> Vec<(Vec<i64>, Kind)> {
    vec![
        (vec![1, 16, 3, 4, 5], Kind::Float),
        (vec![7], Kind::Float),
        (vec![2, 3], Kind::Double),
        (vec![1, 16, 3, 4, 5], Kind::BFloat16),
        (vec![33], Kind::Half),
        (vec![0, 4], Kind::Float),
        (vec![5, 17], Kind::Float),
        (vec![], Kind::Float),
        (vec![19, 3], Kind::Double),
        (vec![1, 4, 8, 8], Kind::Float),
    ]
}

fn through_generator(seed: u64) -> Vec<Tensor> {
    let mut g = Generator::new(Device::Cpu, seed).unwrap();
    draws()
        .iter()
        .map(|(s, k)| g.randn(s, *k).unwrap())
        .collect()
}

#[test]
fn cpu_generators_draw_what_torchs_seeded_default_generator_draws() {
    for seed in [0u64, 42, 0x17_1D_E0, u32::MAX as u64 + 7] {
        tch::manual_seed(seed as i64);
        let global: Vec<Tensor> = draws()
            .iter()
            .map(|(s, k)| Tensor::randn(s.as_slice(), (*k, Device::Cpu)))
            .collect();
        let own = through_generator(seed);
        for (i, (a, b)) in global.iter().zip(&own).enumerate() {
            assert_eq!(a.kind(), b.kind(), "seed {seed}, draw {i}");
            assert_eq!(a.size(), b.size(), "seed {seed}, draw {i}");
            assert!(a.equal(b), "seed {seed}, draw {i}: the numbers differ");
        }
    }

    // The per-device set: its CPU generator is a plain CPU generator of the seed.
    let mut gens = Generators::new(9).unwrap();
    let mut plain = Generator::new(Device::Cpu, 9).unwrap();
    assert!(gens
        .cpu()
        .randn(&[40], Kind::Float)
        .unwrap()
        .equal(&plain.randn(&[40], Kind::Float).unwrap()));
    assert!(gens
        .on(Device::Cpu)
        .unwrap()
        .randn(&[40], Kind::Float)
        .unwrap()
        .equal(&plain.randn(&[40], Kind::Float).unwrap()));

    // Two threads, each with its own generator, many draws interleaving: each gets exactly
    // its single-thread sequence, and torch's default generator is left alone.
    let alone: Vec<Vec<Tensor>> = [1u64, 2].iter().map(|&s| through_generator(s)).collect();
    tch::manual_seed(5);
    let before = Tensor::randn([8], (Kind::Float, Device::Cpu));
    tch::manual_seed(5);
    let together: Vec<Vec<Vec<Tensor>>> = std::thread::scope(|s| {
        let hs: Vec<_> = [1u64, 2]
            .iter()
            .map(|&seed| s.spawn(move || (0..20).map(|_| through_generator(seed)).collect()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (a, runs) in alone.iter().zip(&together) {
        for run in runs {
            for (x, y) in a.iter().zip(run) {
                assert!(x.equal(y));
            }
        }
    }
    let after = Tensor::randn([8], (Kind::Float, Device::Cpu));
    assert!(
        before.equal(&after),
        "drawing from own generators moved torch's default generator"
    );
}
