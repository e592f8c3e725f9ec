//! Counters the worker and the routes update, and their Prometheus text rendering
//! (`GET /metrics`, exposition format 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use ltx_gpu::report::CudaReport;

use crate::family::{FamilyId, FamilyReport, FamilyState};
use crate::jobs::{JobState, Stage};

/// Upper bounds (seconds) of the stage-duration histogram buckets.
const BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// One family's job counters.
#[derive(Default, Clone, Copy)]
struct Counters {
    done: u64,
    failed: u64,
    cancelled: u64,
    accepted: u64,
    rejected_queue_full: u64,
}

#[derive(Default)]
pub struct Metrics {
    jobs: Mutex<BTreeMap<FamilyId, Counters>>,
    stages: Mutex<BTreeMap<(FamilyId, Stage), Histogram>>,
}

/// One worker's queue at scrape time.
pub struct WorkerGauge {
    /// "cpu" or "cuda:N".
    pub device: String,
    pub queue_depth: usize,
    pub queue_capacity: usize,
}

/// Values read at scrape time.
pub struct Gauges<'a> {
    pub workers: &'a [WorkerGauge],
    pub unfinished_jobs: usize,
    pub families: &'a [FamilyReport],
    pub cuda: &'a CudaReport,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    fn count(&self, family: FamilyId, f: impl FnOnce(&mut Counters)) {
        f(lock(&self.jobs).entry(family).or_default());
    }

    pub fn job_accepted(&self, family: FamilyId) {
        self.count(family, |c| c.accepted += 1);
    }

    pub fn queue_full(&self, family: FamilyId) {
        self.count(family, |c| c.rejected_queue_full += 1);
    }

    pub fn job_finished(&self, family: FamilyId, state: JobState) {
        self.count(family, |c| match state {
            JobState::Done => c.done += 1,
            JobState::Failed => c.failed += 1,
            JobState::Cancelled => c.cancelled += 1,
            JobState::Queued | JobState::Running => {}
        });
    }

    pub fn stage_seconds(&self, family: FamilyId, stage: Stage, seconds: f64) {
        let mut stages = lock(&self.stages);
        let h = stages.entry((family, stage)).or_default();
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    pub fn render(&self, g: &Gauges<'_>) -> String {
        let mut o = String::new();
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family("ltx_queue_depth", "gauge", "Jobs waiting in the queues.");
        family(
            "ltx_queue_capacity",
            "gauge",
            "Jobs the queues hold before 429 (each worker's queue holds LTX_QUEUE_SIZE).",
        );
        family(
            "ltx_worker_queue_depth",
            "gauge",
            "Jobs waiting for the worker of each device.",
        );
        family(
            "ltx_worker_queue_capacity",
            "gauge",
            "Jobs the worker of each device holds before 429.",
        );
        family(
            "ltx_jobs_unfinished",
            "gauge",
            "Jobs queued or running (including cancelled-but-not-yet-stopped).",
        );
        family(
            "ltx_jobs_accepted_total",
            "counter",
            "Jobs accepted (202), by model family.",
        );
        family(
            "ltx_jobs_rejected_total",
            "counter",
            "Submissions refused, by model family and reason.",
        );
        family(
            "ltx_jobs_total",
            "counter",
            "Finished jobs by model family and outcome.",
        );
        let depth: usize = g.workers.iter().map(|w| w.queue_depth).sum();
        let capacity: usize = g.workers.iter().map(|w| w.queue_capacity).sum();
        let _ = (
            writeln!(o, "ltx_queue_depth {depth}"),
            writeln!(o, "ltx_queue_capacity {capacity}"),
            writeln!(o, "ltx_jobs_unfinished {}", g.unfinished_jobs),
        );
        for w in g.workers {
            let _ = writeln!(
                o,
                "ltx_worker_queue_depth{{device=\"{0}\"}} {1}\n\
                 ltx_worker_queue_capacity{{device=\"{0}\"}} {2}",
                w.device, w.queue_depth, w.queue_capacity
            );
        }
        let jobs = lock(&self.jobs).clone();
        for id in FamilyId::ALL {
            let c = jobs.get(&id).copied().unwrap_or_default();
            let f = id.as_str();
            let _ = writeln!(
                o,
                "ltx_jobs_accepted_total{{family=\"{f}\"}} {}\n\
                 ltx_jobs_rejected_total{{family=\"{f}\",reason=\"queue_full\"}} {}",
                c.accepted, c.rejected_queue_full
            );
            for (outcome, n) in [
                ("done", c.done),
                ("failed", c.failed),
                ("cancelled", c.cancelled),
            ] {
                let _ = writeln!(
                    o,
                    "ltx_jobs_total{{family=\"{f}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }

        let _ = writeln!(
            o,
            "# HELP ltx_stage_duration_seconds Time jobs spent in each stage, by model family.\n\
             # TYPE ltx_stage_duration_seconds histogram"
        );
        let stages = lock(&self.stages).clone();
        for id in FamilyId::ALL {
            let f = id.as_str();
            for stage in Stage::ALL {
                let h = stages.get(&(id, stage)).cloned().unwrap_or_default();
                let s = stage.as_str();
                let labels = format!("family=\"{f}\",stage=\"{s}\"");
                for (le, n) in BUCKETS.iter().zip(h.counts) {
                    let _ = writeln!(
                        o,
                        "ltx_stage_duration_seconds_bucket{{{labels},le=\"{le}\"}} {n}"
                    );
                }
                let _ = writeln!(
                    o,
                    "ltx_stage_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n\
                     ltx_stage_duration_seconds_sum{{{labels}}} {}\n\
                     ltx_stage_duration_seconds_count{{{labels}}} {}",
                    h.count, h.sum, h.count
                );
            }
        }

        let _ = writeln!(
            o,
            "# HELP ltx_model_state 1 for the state each model family is in.\n\
             # TYPE ltx_model_state gauge\n\
             # HELP ltx_model_weight_bytes Bytes of model weights, by location.\n\
             # TYPE ltx_model_weight_bytes gauge"
        );
        for f in g.families {
            for st in FamilyState::ALL {
                let _ = writeln!(
                    o,
                    "ltx_model_state{{family=\"{}\",state=\"{}\"}} {}",
                    f.name,
                    st.as_str(),
                    u8::from(f.state == st)
                );
            }
            let _ = writeln!(
                o,
                "ltx_model_weight_bytes{{family=\"{0}\",location=\"gpu\"}} {1}\n\
                 ltx_model_weight_bytes{{family=\"{0}\",location=\"host\"}} {2}",
                f.name, f.gpu_bytes, f.host_bytes
            );
        }

        let _ = writeln!(
            o,
            "# HELP ltx_gpu_memory_bytes GPU memory: torch's caching allocator and the device.\n\
             # TYPE ltx_gpu_memory_bytes gauge"
        );
        for d in &g.cuda.devices {
            let dev = format!("cuda:{}", d.index);
            for (kind, v) in [
                ("allocated", d.memory.allocated_bytes),
                ("reserved", d.memory.reserved_bytes),
                ("peak_allocated", d.memory.peak_allocated_bytes),
                ("peak_reserved", d.memory.peak_reserved_bytes),
                ("free", d.free_bytes),
                ("total", d.total_bytes),
            ] {
                let _ = writeln!(
                    o,
                    "ltx_gpu_memory_bytes{{device=\"{dev}\",kind=\"{kind}\"}} {v}"
                );
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.stage_seconds(FamilyId::Ltx, Stage::Denoising, 0.2);
        m.stage_seconds(FamilyId::Ltx, Stage::Denoising, 7.0);
        m.stage_seconds(FamilyId::InstantId, Stage::Denoising, 1.0);
        m.job_finished(FamilyId::Ltx, JobState::Done);
        let cuda = CudaReport {
            available: false,
            reason: None,
            libtorch_cuda: None,
            devices: vec![],
        };
        let workers = [
            WorkerGauge {
                device: "cuda:0".into(),
                queue_depth: 3,
                queue_capacity: 16,
            },
            WorkerGauge {
                device: "cuda:1".into(),
                queue_depth: 1,
                queue_capacity: 16,
            },
        ];
        let text = m.render(&Gauges {
            workers: &workers,
            unfinished_jobs: 4,
            families: &[],
            cuda: &cuda,
        });
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        let b = "ltx_stage_duration_seconds_bucket{family=\"ltx\",stage=\"denoising\"";
        assert_eq!(line(&format!("{b},le=\"0.1\"}}")), "0");
        assert_eq!(line(&format!("{b},le=\"0.5\"}}")), "1");
        assert_eq!(line(&format!("{b},le=\"10\"}}")), "2");
        assert_eq!(line(&format!("{b},le=\"+Inf\"}}")), "2");
        assert_eq!(
            line("ltx_stage_duration_seconds_sum{family=\"ltx\",stage=\"denoising\"}"),
            "7.2"
        );
        assert_eq!(
            line("ltx_stage_duration_seconds_count{family=\"instantid\",stage=\"denoising\"}"),
            "1"
        );
        assert_eq!(line("ltx_jobs_total{family=\"ltx\",outcome=\"done\"}"), "1");
        assert_eq!(
            line("ltx_jobs_total{family=\"instantid\",outcome=\"done\"}"),
            "0"
        );
        assert_eq!(line("ltx_queue_depth "), "4");
        assert_eq!(line("ltx_worker_queue_depth{device=\"cuda:1\"}"), "1");
    }
}
