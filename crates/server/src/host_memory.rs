//! The host side of the memory plan: the budget on the process's resident memory
//! (`LTX_HOST_BUDGET`), resolved once at start-up from the kernel's figures, and this
//! process's resident memory as the kernel counts it.

use ltx_pipelines::BudgetSpec;

/// What the process grows by beyond weights and a job's activations once it has run jobs:
/// libtorch's thread pools and oneDNN's primitive cache, the allocator's free lists, the
/// video encoder. Calibrated on the demo model on an x86-64 CPU with libtorch 2.11 (a first
/// 96×64×9 job adds about 40 MB to the start-up resident memory; jobs of 2–9 M output pixels
/// about 115 MB beyond the formula's activations); counted once in every estimate.
pub const RUNTIME_BYTES: u64 = 160 << 20;

/// The host budget and the resident memory it was resolved against.
#[derive(Debug, Clone, Copy)]
pub struct HostBudget {
    /// The most resident memory a job may take the process to.
    pub budget_bytes: u64,
    /// The process's resident memory at start-up (code, libtorch, no model).
    pub baseline_bytes: u64,
}

impl HostBudget {
    /// Resolves `spec` against `/proc/meminfo` and this process's resident memory now. Without
    /// `/proc` (not Linux) `auto` cannot be resolved and nothing is refused.
    pub fn at_start(spec: &BudgetSpec) -> Self {
        let baseline = resident_bytes().unwrap_or(0);
        let budget = match (meminfo(), spec) {
            (Some((available, total)), _) => spec.host_bytes(available, total, baseline),
            (None, BudgetSpec::Bytes(b)) => *b,
            (None, _) => {
                tracing::warn!("no /proc/meminfo: the host budget {spec:?} is not enforced");
                u64::MAX
            }
        };
        Self {
            budget_bytes: budget,
            baseline_bytes: baseline,
        }
    }
}

/// `(MemAvailable, MemTotal)` in bytes, from `/proc/meminfo`.
pub fn meminfo() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    Some((
        kib_field(&text, "MemAvailable:")?,
        kib_field(&text, "MemTotal:")?,
    ))
}

/// This process's resident memory (`VmRSS`) in bytes.
pub fn resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&text, "VmRSS:")
}

/// Gives the C heap's free memory back to the kernel (glibc's `malloc_trim(0)`), the host side
/// of the cleanup after each job: libtorch's CPU tensors are malloc'd, and the freed blocks of
/// a finished job otherwise stay in the process's arenas, so its resident memory keeps the
/// high-water mark of every job size seen (a 20-minute soak grew 17 % this way with no leak:
/// trimming by hand brought it back to the same level after every 80 jobs). Returns the
/// resident bytes released (0 where glibc or `/proc` is absent).
pub fn release_host_memory() -> u64 {
    let before = resident_bytes();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes the arena
    // locks itself and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
    match (before, resident_bytes()) {
        (Some(b), Some(a)) => b.saturating_sub(a),
        _ => 0,
    }
}

/// A `Name:   1234 kB` line's value in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// `12.34 GB`, for messages.
pub fn gb(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_figures_parse() {
        let text = "MemTotal: 24683652 kB\nMemFree: 1 kB\nMemAvailable:\t23821244 kB\n";
        assert_eq!(kib_field(text, "MemAvailable:"), Some(23821244 * 1024));
        assert_eq!(kib_field(text, "MemTotal:"), Some(24683652 * 1024));
        assert_eq!(kib_field(text, "VmRSS:"), None);
        if cfg!(target_os = "linux") {
            let (available, total) = meminfo().unwrap();
            assert!(available > 0 && available <= total);
            assert!(resident_bytes().unwrap() > 0);
        }
    }

    #[test]
    fn the_budget_resolves_against_start_up() {
        let b = HostBudget::at_start(&BudgetSpec::Bytes(5 << 30));
        assert_eq!(b.budget_bytes, 5 << 30);
        if let Some((available, _)) = meminfo() {
            let auto = HostBudget::at_start(&BudgetSpec::Auto);
            // Half of what is available plus what the process holds, give or take the
            // machine's activity between the two reads.
            let half = available / 2;
            assert!(auto.budget_bytes > auto.baseline_bytes);
            assert!(
                auto.budget_bytes - auto.baseline_bytes > half / 2,
                "{auto:?}"
            );
        }
    }
}
