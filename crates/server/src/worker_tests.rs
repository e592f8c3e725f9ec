//! The workers with the demo families on the CPU: both families through one worker, the
//! residency manager's host-memory eviction there, and two workers running at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;
use ltx_gpu::device::ResolvedDevice;
use ltx_pipelines::budget::{estimate_host_peak, HostPlacement};
use ltx_pipelines::image::RgbImage;
use ltx_pipelines::instantid::{analyze_faces, InstantIdParams};
use ltx_pipelines::I2vParams;

use crate::devices::Served;
use crate::families::ltx::{LtxFamily, LtxSettings};
use crate::family::{FamilyId, FamilyState};
use crate::host_memory::{HostBudget, RUNTIME_BYTES};
use crate::jobs::{InstantIdWork, Job, JobState, JobStatus, JobStore, VideoInput, Work, WorkKind};
use crate::metrics::Metrics;
use crate::model_facts::ModelFacts;
use crate::residency::EvictAction;
use crate::retention::Retention;
use crate::worker::{Slot, Worker, WorkerConfig};

fn cpu() -> ResolvedDevice {
    ResolvedDevice::Cpu {
        cuda_unavailable: None,
    }
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ltx-worker-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ltx_slot() -> Slot {
    let facts = ModelFacts::read(None, None, HostPlacement::Cpu).unwrap();
    let family = LtxFamily::new(LtxSettings {
        model: None,
        upsampler: None,
        device: tch::Device::Cpu,
        memory: Default::default(),
        budget: ltx_pipelines::BudgetSpec::Auto,
        tiling: Default::default(),
        tiling_on: false,
        attention: ltx_models::attention::AttentionBackend::Sdpa,
        facts,
    });
    let report = crate::routes::initial_report(
        FamilyId::Ltx,
        &cpu(),
        "demo".into(),
        ltx_models::attention::AttentionBackend::Sdpa,
        ltx_pipelines::OffloadMode::None,
    );
    Slot::new(Box::new(family), report)
}

#[derive(Parser)]
struct P {
    #[command(flatten)]
    c: crate::InstantIdConfig,
}

fn instantid_slot() -> Slot {
    let c = P::try_parse_from(["serve", "--instantid-device", "cpu"])
        .unwrap()
        .c;
    let Served { family, report, .. } = crate::families::instantid::served(&c).unwrap();
    Slot::new(family, report)
}

fn image(w: usize, h: usize, seed: u8) -> RgbImage {
    RgbImage {
        width: w,
        height: h,
        data: (0..w * h * 3)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect(),
    }
}

fn ltx_work(seed: u64) -> Work {
    let params = I2vParams {
        prompt: "a cat".into(),
        height: 64,
        width: 96,
        num_frames: 9,
        steps: 2,
        seed,
        decoder_noise_seed: seed,
        ..Default::default()
    };
    Work::new(
        WorkKind::I2v(
            VideoInput {
                image: image(96, 64, seed as u8),
                fps: 25.0,
            },
            params,
        ),
        Vec::new(),
    )
}

fn instantid_work(seed: u64) -> Work {
    let dir = ltx_pipelines::instantid::demo::demo_face_models_dir().unwrap();
    let mut fa = ltx_face::FaceAnalysis::new(&dir, Default::default()).unwrap();
    let face = analyze_faces(&mut fa, &image(80, 96, 7), None, &[]).unwrap();
    let params = InstantIdParams {
        prompt: "a portrait".into(),
        height: Some(64),
        width: Some(64),
        steps: 2,
        seed,
        ..Default::default()
    };
    Work::new(
        WorkKind::InstantId(Box::new(InstantIdWork {
            face,
            params,
            scheduler: None,
            face_seconds: 0.25,
        })),
        Vec::new(),
    )
}

fn worker(slots: Vec<Slot>, host: HostBudget) -> Worker {
    Worker::new(WorkerConfig {
        device: cpu(),
        families: slots,
        host,
        metrics: Arc::new(Metrics::default()),
        retention: Retention {
            max_age_s: 3600,
            max_bytes: u64::MAX,
        },
    })
}

fn run(w: &mut Worker, jobs: &JobStore, work: Work, dir: &Path) -> (Arc<Job>, JobStatus) {
    let job = jobs.create(work, "demo".into(), dir).unwrap();
    w.run_job(&job);
    let s = job.status();
    assert_eq!(s.state, JobState::Done, "{s:?}");
    (job, s)
}

fn unlimited() -> HostBudget {
    HostBudget {
        budget_bytes: u64::MAX,
        baseline_bytes: 0,
    }
}

#[test]
fn both_families_take_turns_on_one_worker() {
    let dir = tempdir("turns");
    let jobs = JobStore::default();
    let (ltx, iid) = (ltx_slot(), instantid_slot());
    let (ltx_report, iid_report) = (ltx.report.clone(), iid.report.clone());
    let mut w = worker(vec![ltx, iid], unlimited());
    assert_eq!(ltx_report.get().state, FamilyState::Unloaded);
    assert_eq!(iid_report.get().state, FamilyState::Unloaded);

    let (job, s) = run(&mut w, &jobs, ltx_work(1), &dir);
    assert!(job.output.extension().is_some_and(|e| e == "mp4"));
    assert_eq!(ltx_report.get().state, FamilyState::Resident);
    assert_eq!(iid_report.get().state, FamilyState::Unloaded);
    assert!(s.memory.is_none(), "nothing to evict: {:?}", s.memory);

    let (job, s) = run(&mut w, &jobs, instantid_work(2), &dir);
    let png = std::fs::read(&job.output).unwrap();
    let img = image::load_from_memory(&png).unwrap();
    assert_eq!((img.width(), img.height()), (64, 64));
    assert_eq!(s.family, "instantid");
    assert_eq!(s.timings[&crate::jobs::Stage::FaceAnalysis], 0.25);
    assert!(s.timings[&crate::jobs::Stage::Denoising] > 0.0, "{s:?}");
    assert!(s.timings.contains_key(&crate::jobs::Stage::WritingImage));
    assert_eq!((s.step, s.total_steps), (2, 2));
    // Plenty of host memory: both stay loaded.
    assert_eq!(ltx_report.get().state, FamilyState::Resident);
    let iid_now = iid_report.get();
    assert_eq!(iid_now.state, FamilyState::Resident);
    assert!(iid_now.host_bytes > 1_000_000, "{iid_now:?}");
    assert_eq!(iid_now.loads, 1);

    run(&mut w, &jobs, ltx_work(3), &dir);
    run(&mut w, &jobs, instantid_work(4), &dir);
    assert_eq!(ltx_report.get().loads, 1, "each family loaded once");
    assert_eq!(iid_report.get().loads, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn short_host_memory_unloads_the_other_family_on_the_cpu() {
    let dir = tempdir("evict");
    let jobs = JobStore::default();
    let (ltx, iid) = (ltx_slot(), instantid_slot());
    let (ltx_report, iid_report) = (ltx.report.clone(), iid.report.clone());
    // What the InstantID job needs, as the manager counts it on the CPU.
    let iid_work = instantid_work(5);
    let e = iid.family.estimate(&iid_work, false).unwrap();
    let iid_need = estimate_host_peak(&e.workload, &e.sizes, HostPlacement::Cpu, 0);
    let e = ltx.family.estimate(&ltx_work(6), false).unwrap();
    let ltx_need = estimate_host_peak(&e.workload, &e.sizes, HostPlacement::Cpu, 0);
    // Room for either job alone, not for one beside the other's weights.
    let room = iid_need.max(ltx_need);
    let host = HostBudget {
        budget_bytes: RUNTIME_BYTES + room,
        baseline_bytes: 0,
    };
    let mut w = worker(vec![ltx, iid], host);
    run(&mut w, &jobs, ltx_work(6), &dir);
    let ltx_bytes = ltx_report.get().host_bytes;
    assert!(ltx_bytes + iid_need > room, "the test's premise");

    let (_, s) = run(&mut w, &jobs, iid_work, &dir);
    let m = s.memory.expect("the eviction is recorded");
    assert_eq!(m.evicted.len(), 1, "{m:?}");
    let ev = &m.evicted[0];
    assert_eq!(ev.family, FamilyId::Ltx);
    assert_eq!(ev.action, EvictAction::Unloaded);
    assert_eq!(ev.freed_bytes, ltx_bytes);
    assert!(ev.reason.contains("instantid needs about"), "{}", ev.reason);
    assert_eq!(m.estimate_bytes, iid_need);
    assert_eq!(m.held_by_others_bytes, 0);
    assert_eq!(ltx_report.get().state, FamilyState::Unloaded);
    assert_eq!(iid_report.get().state, FamilyState::Resident);

    // The next video job loads LTX-Video again; the smaller video job fits beside
    // InstantID's weights, so InstantID stays.
    let iid_bytes = iid_report.get().host_bytes;
    assert!(ltx_need + iid_bytes <= room, "the test's premise");
    let (_, s) = run(&mut w, &jobs, ltx_work(7), &dir);
    assert!(s.memory.is_none(), "{:?}", s.memory);
    assert_eq!(ltx_report.get().loads, 2);
    assert_eq!(ltx_report.get().state, FamilyState::Resident);
    assert_eq!(iid_report.get().state, FamilyState::Resident);
    std::fs::remove_dir_all(&dir).unwrap();
}
