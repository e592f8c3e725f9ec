//! Counters the worker and the routes update, and their Prometheus text rendering
//! (`GET /metrics`, exposition format 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ltx_gpu::report::CudaReport;

use crate::family::{FamilyReport, FamilyState};
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

#[derive(Default)]
pub struct Metrics {
    done: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    accepted: AtomicU64,
    rejected_queue_full: AtomicU64,
    stages: Mutex<BTreeMap<Stage, Histogram>>,
}

/// Values read at scrape time.
pub struct Gauges<'a> {
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub unfinished_jobs: usize,
    pub families: &'a [FamilyReport],
    pub cuda: &'a CudaReport,
}

impl Metrics {
    pub fn job_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn queue_full(&self) {
        self.rejected_queue_full.fetch_add(1, Ordering::Relaxed);
    }

    pub fn job_finished(&self, state: JobState) {
        let c = match state {
            JobState::Done => &self.done,
            JobState::Failed => &self.failed,
            JobState::Cancelled => &self.cancelled,
            JobState::Queued | JobState::Running => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stage_seconds(&self, stage: Stage, seconds: f64) {
        let mut stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        let h = stages.entry(stage).or_default();
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
        family("ltx_queue_depth", "gauge", "Jobs waiting in the queue.");
        family(
            "ltx_queue_capacity",
            "gauge",
            "Jobs the queue holds before 429.",
        );
        family(
            "ltx_jobs_unfinished",
            "gauge",
            "Jobs queued or running (including cancelled-but-not-yet-stopped).",
        );
        family("ltx_jobs_accepted_total", "counter", "Jobs accepted (202).");
        family(
            "ltx_jobs_rejected_total",
            "counter",
            "Submissions refused, by reason.",
        );
        family("ltx_jobs_total", "counter", "Finished jobs by outcome.");
        let _ = (
            writeln!(o, "ltx_queue_depth {}", g.queue_depth),
            writeln!(o, "ltx_queue_capacity {}", g.queue_capacity),
            writeln!(o, "ltx_jobs_unfinished {}", g.unfinished_jobs),
            writeln!(
                o,
                "ltx_jobs_accepted_total {}",
                self.accepted.load(Ordering::Relaxed)
            ),
            writeln!(
                o,
                "ltx_jobs_rejected_total{{reason=\"queue_full\"}} {}",
                self.rejected_queue_full.load(Ordering::Relaxed)
            ),
        );
        for (outcome, c) in [
            ("done", &self.done),
            ("failed", &self.failed),
            ("cancelled", &self.cancelled),
        ] {
            let _ = writeln!(
                o,
                "ltx_jobs_total{{outcome=\"{outcome}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }

        let _ = writeln!(
            o,
            "# HELP ltx_stage_duration_seconds Time jobs spent in each stage.\n\
             # TYPE ltx_stage_duration_seconds histogram"
        );
        let stages = self
            .stages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for stage in Stage::ALL {
            let h = stages.get(&stage).cloned().unwrap_or_default();
            let s = stage.as_str();
            for (le, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    o,
                    "ltx_stage_duration_seconds_bucket{{stage=\"{s}\",le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                o,
                "ltx_stage_duration_seconds_bucket{{stage=\"{s}\",le=\"+Inf\"}} {}\n\
                 ltx_stage_duration_seconds_sum{{stage=\"{s}\"}} {}\n\
                 ltx_stage_duration_seconds_count{{stage=\"{s}\"}} {}",
                h.count, h.sum, h.count
            );
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
        m.stage_seconds(Stage::Denoising, 0.2);
        m.stage_seconds(Stage::Denoising, 7.0);
        m.job_finished(JobState::Done);
        let cuda = CudaReport {
            available: false,
            reason: None,
            libtorch_cuda: None,
            devices: vec![],
        };
        let text = m.render(&Gauges {
            queue_depth: 3,
            queue_capacity: 16,
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
        let b = "ltx_stage_duration_seconds_bucket{stage=\"denoising\"";
        assert_eq!(line(&format!("{b},le=\"0.1\"}}")), "0");
        assert_eq!(line(&format!("{b},le=\"0.5\"}}")), "1");
        assert_eq!(line(&format!("{b},le=\"10\"}}")), "2");
        assert_eq!(line(&format!("{b},le=\"+Inf\"}}")), "2");
        assert_eq!(
            line("ltx_stage_duration_seconds_sum{stage=\"denoising\"}"),
            "7.2"
        );
        assert_eq!(line("ltx_jobs_total{outcome=\"done\"}"), "1");
        assert_eq!(line("ltx_queue_depth"), "3");
    }
}
