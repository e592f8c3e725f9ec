//! Result retention. A done job's result (`{id}.mp4` or `{id}.png`) stays in the output folder,
//! with its status beside it (`{id}.json`, so a restarted server still serves it), until it is
//! older than the age limit, or the folder's results exceed the byte limit (oldest first; the
//! newest result is never deleted for bytes). Only files named after job ids are ever deleted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::jobs::{is_job_id, Job, JobState, JobStatus, JobStore};

#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age_s: u64,
    pub max_bytes: u64,
}

/// The extensions of results (videos and images).
pub const RESULT_EXTENSIONS: [&str; 2] = ["mp4", "png"];

/// Where a job's status is kept beside its result.
pub fn record_path(result: &Path) -> PathBuf {
    result.with_extension("json")
}

/// Where a result is written before it is complete (renamed to its final name when it is):
/// `{id}.mp4.part`, `{id}.png.part`.
pub fn partial_path(result: &Path) -> PathBuf {
    let ext = result.extension().and_then(|e| e.to_str()).unwrap_or("");
    result.with_extension(format!("{ext}.part"))
}

/// Writes the status of a done job beside its video (to a temporary name, then renamed, so a
/// crash never leaves half a record).
pub fn persist(job: &Job) -> std::io::Result<()> {
    let record = record_path(&job.output);
    let tmp = record.with_extension("json.part");
    let body = serde_json::to_vec_pretty(&job.status()).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, &record)
}

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub deleted: usize,
    pub freed_bytes: u64,
    pub kept: usize,
    pub kept_bytes: u64,
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// Deletes a job's files and marks its result expired; returns the bytes freed.
fn expire(job: &Job) -> u64 {
    let freed = file_len(&job.output);
    for p in [job.output.clone(), record_path(&job.output)] {
        if let Err(e) = std::fs::remove_file(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %p.display(), "retention: cannot delete: {e}");
            }
        }
    }
    job.update(|s| s.expired = true);
    freed
}

/// Applies the policy at time `now` (Unix seconds). Records of expired, failed and cancelled
/// jobs are forgotten one `max_age_s` later (then their id answers 404).
pub fn sweep(jobs: &JobStore, r: Retention, now: u64) -> Swept {
    let mut out = Swept::default();
    let mut live: Vec<(u64, Arc<Job>, u64)> = Vec::new();
    for job in jobs.all() {
        let s = job.status();
        let forget_after = s
            .expires_at
            .unwrap_or(s.created_at)
            .saturating_add(r.max_age_s);
        match s.state {
            JobState::Done if !s.expired => {
                if s.expires_at.is_some_and(|e| e <= now) {
                    out.freed_bytes += expire(&job);
                    out.deleted += 1;
                } else {
                    let len = file_len(&job.output);
                    live.push((s.expires_at.unwrap_or(u64::MAX), job, len));
                }
            }
            JobState::Done | JobState::Failed | JobState::Cancelled if forget_after < now => {
                jobs.remove(&job.id);
            }
            _ => {}
        }
    }
    live.sort_by_key(|(expires, job, _)| (*expires, job.id.clone()));
    let mut total: u64 = live.iter().map(|(_, _, len)| len).sum();
    let mut kept = live.len();
    for (_, job, len) in &live {
        if total <= r.max_bytes || kept <= 1 {
            break;
        }
        out.freed_bytes += expire(job);
        out.deleted += 1;
        total -= len;
        kept -= 1;
    }
    out.kept = kept;
    out.kept_bytes = total;
    out
}

/// At start-up: takes back the done jobs recorded in `dir` that are still within retention,
/// and deletes what is past it, half-written, or has no record (a result whose job can no
/// longer be asked for). Returns how many jobs were restored.
pub fn restore(jobs: &JobStore, dir: &Path, r: Retention, now: u64) -> std::io::Result<usize> {
    let mut restored = 0;
    let mut results = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some((stem, ext)) = name.split_once('.') else {
            continue;
        };
        if !is_job_id(stem) {
            continue;
        }
        match ext {
            "json" => {
                let result = RESULT_EXTENSIONS
                    .iter()
                    .map(|e| path.with_extension(e))
                    .find(|p| p.is_file());
                let status: Option<JobStatus> = std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                match (status, result) {
                    (Some(s), Some(result))
                        if s.id == stem
                            && s.state == JobState::Done
                            && !s.expired
                            && s.expires_at.is_some_and(|e| e > now) =>
                    {
                        jobs.restore(s, result);
                        restored += 1;
                    }
                    (_, result) => {
                        let _ = std::fs::remove_file(&path);
                        if let Some(r) = result {
                            let _ = std::fs::remove_file(&r);
                        }
                    }
                }
            }
            "json.part" => {
                let _ = std::fs::remove_file(&path);
            }
            ext if RESULT_EXTENSIONS.contains(&ext) => {
                results.push((stem.to_string(), path.clone()))
            }
            ext if ext
                .strip_suffix(".part")
                .is_some_and(|e| RESULT_EXTENSIONS.contains(&e)) =>
            {
                let _ = std::fs::remove_file(&path);
            }
            _ => {}
        }
    }
    for (id, path) in results {
        if jobs.get(&id).is_none() {
            let _ = std::fs::remove_file(&path);
        }
    }
    let swept = sweep(jobs, r, now);
    tracing::info!(
        restored,
        deleted = swept.deleted,
        kept_bytes = swept.kept_bytes,
        "results in {}",
        dir.display()
    );
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str, state: JobState, expires_at: Option<u64>) -> JobStatus {
        JobStatus {
            id: id.into(),
            state,
            stage: None,
            step: 0,
            total_steps: 1,
            error: None,
            created_at: 1000,
            queued_seconds: None,
            run_seconds: None,
            timings: Default::default(),
            family: "ltx".into(),
            model: "demo".into(),
            seed: 0,
            memory: None,
            host_memory: None,
            expires_at,
            expired: false,
            warnings: Vec::new(),
        }
    }

    fn id(n: u8) -> String {
        format!("{n:032x}")
    }

    fn done_job(jobs: &JobStore, dir: &Path, n: u8, expires: u64, len: usize) -> PathBuf {
        done_result(jobs, dir, n, expires, len, "mp4")
    }

    fn done_result(
        jobs: &JobStore,
        dir: &Path,
        n: u8,
        expires: u64,
        len: usize,
        ext: &str,
    ) -> PathBuf {
        let video = dir.join(format!("{}.{ext}", id(n)));
        std::fs::write(&video, vec![0u8; len]).unwrap();
        jobs.restore(status(&id(n), JobState::Done, Some(expires)), video.clone());
        persist(&jobs.get(&id(n)).unwrap()).unwrap();
        video
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ltx-retention-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn partial_results_keep_their_kind() {
        let p = partial_path(Path::new("/o/abc.png"));
        assert_eq!(p, Path::new("/o/abc.png.part"));
        assert_eq!(
            partial_path(Path::new("/o/abc.mp4")),
            Path::new("/o/abc.mp4.part")
        );
    }

    #[test]
    fn age_limit_expires_only_old_results() {
        let dir = tempdir("age");
        let jobs = JobStore::default();
        let old = done_job(&jobs, &dir, 1, 2000, 10);
        let new = done_job(&jobs, &dir, 2, 3000, 10);
        let r = Retention {
            max_age_s: 500,
            max_bytes: u64::MAX,
        };
        let s = sweep(&jobs, r, 2500);
        assert_eq!((s.deleted, s.freed_bytes, s.kept), (1, 10, 1));
        assert!(!old.exists() && !record_path(&old).exists());
        assert!(new.exists() && record_path(&new).exists());
        assert!(jobs.get(&id(1)).unwrap().status().expired);
        assert!(!jobs.get(&id(2)).unwrap().status().expired);
        // One more max_age later the expired record is forgotten.
        sweep(&jobs, r, 2000 + 500);
        assert!(jobs.get(&id(1)).is_some());
        sweep(&jobs, r, 2000 + 501);
        assert!(jobs.get(&id(1)).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn byte_limit_deletes_oldest_first_but_never_the_newest() {
        let dir = tempdir("bytes");
        let jobs = JobStore::default();
        let a = done_job(&jobs, &dir, 1, 100, 40);
        let b = done_job(&jobs, &dir, 2, 200, 40);
        let c = done_job(&jobs, &dir, 3, 300, 40);
        let r = Retention {
            max_age_s: 10_000,
            max_bytes: 90,
        };
        let s = sweep(&jobs, r, 50);
        assert_eq!((s.deleted, s.kept, s.kept_bytes), (1, 2, 80));
        assert!(!a.exists() && b.exists() && c.exists());
        // A limit below one video still keeps the newest.
        let s = sweep(&jobs, Retention { max_bytes: 1, ..r }, 50);
        assert_eq!((s.deleted, s.kept), (1, 1));
        assert!(!b.exists() && c.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn restore_takes_back_live_results_and_cleans_the_rest() {
        let dir = tempdir("restore");
        {
            let jobs = JobStore::default();
            done_job(&jobs, &dir, 1, 5000, 10); // live
            done_job(&jobs, &dir, 2, 1500, 10); // past retention
            done_result(&jobs, &dir, 6, 5000, 10, "png"); // a live portrait
            done_result(&jobs, &dir, 7, 1500, 10, "png"); // past retention
        }
        std::fs::write(dir.join(format!("{}.mp4", id(3))), b"orphan").unwrap();
        std::fs::write(dir.join(format!("{}.png", id(8))), b"orphan").unwrap();
        std::fs::write(dir.join(format!("{}.mp4.part", id(4))), b"half").unwrap();
        std::fs::write(dir.join(format!("{}.png.part", id(9))), b"half").unwrap();
        std::fs::write(dir.join(format!("{}.json", id(5))), b"{not json").unwrap();
        std::fs::write(dir.join("keep-me.mp4"), b"not ours").unwrap();
        let jobs = JobStore::default();
        let r = Retention {
            max_age_s: 1000,
            max_bytes: u64::MAX,
        };
        assert_eq!(restore(&jobs, &dir, r, 2000).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = vec![
            format!("{}.json", id(1)),
            format!("{}.mp4", id(1)),
            format!("{}.json", id(6)),
            format!("{}.png", id(6)),
            "keep-me.mp4".to_string(),
        ];
        want.sort();
        assert_eq!(left, want);
        assert_eq!(jobs.get(&id(1)).unwrap().status().state, JobState::Done);
        let portrait = jobs.get(&id(6)).unwrap();
        assert_eq!(portrait.output, dir.join(format!("{}.png", id(6))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
