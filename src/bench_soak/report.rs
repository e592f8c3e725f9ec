//! The soak's report: jobs by outcome, answers by action, resident memory per time window
//! and its growth after the warm-up, and the verdict.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{Book, LogTally, SoakBench, MAX_GROWTH};

#[derive(Clone, Copy)]
struct Growth {
    min: f64,
    median: f64,
    max: f64,
}

/// One row of the memory table: a time window's samples.
struct Window {
    from_s: f64,
    to_s: f64,
    min: u64,
    median: u64,
    max: u64,
}

fn windows(samples: &[(f64, u64)], n: usize, total_s: f64) -> Vec<Window> {
    let width = total_s / n as f64;
    (0..n)
        .filter_map(|i| {
            let (from, to) = (i as f64 * width, (i + 1) as f64 * width);
            let mut v: Vec<u64> = samples
                .iter()
                .filter(|(t, _)| *t >= from && *t < to)
                .map(|(_, b)| *b)
                .collect();
            v.sort_unstable();
            (!v.is_empty()).then(|| Window {
                from_s: from,
                to_s: to,
                min: v[0],
                median: v[v.len() / 2],
                max: v[v.len() - 1],
            })
        })
        .collect()
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

pub(super) fn report(
    b: &SoakBench,
    book: &Book,
    outcomes: &[(String, Value)],
    samples: &[(f64, u64)],
    run_s: f64,
    idle_end: Option<u64>,
    log: &LogTally,
) -> anyhow::Result<()> {
    let mut by_outcome: BTreeMap<String, usize> = BTreeMap::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut unexplained = 0;
    for (_, v) in outcomes {
        let state = v["state"].as_str().unwrap_or("lost").to_string();
        if state == "failed" {
            match v["error"].as_str() {
                Some(e) if !e.is_empty() => {
                    *reasons.entry(e.chars().take(120).collect()).or_default() += 1
                }
                _ => unexplained += 1,
            }
        }
        *by_outcome.entry(state).or_default() += 1;
    }
    let lost = by_outcome
        .iter()
        .filter(|(s, _)| !matches!(s.as_str(), "done" | "failed" | "cancelled"))
        .map(|(_, n)| n)
        .sum::<usize>();
    let five_xx: usize = book
        .answers
        .iter()
        .filter(|((_, s), _)| *s >= 500)
        .map(|(_, n)| n)
        .sum();
    println!("\n## Jobs ({} accepted)\n", outcomes.len());
    println!("| outcome | jobs |\n|---|---:|");
    for (s, n) in &by_outcome {
        println!("| {s} | {n} |");
    }
    for (r, n) in &reasons {
        println!("\nfailed ×{n}: {r}");
    }
    println!("\n## Answers by action\n");
    println!("| action | statuses |\n|---|---|");
    let mut actions: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((a, s), n) in &book.answers {
        actions.entry(a).or_default().push(format!("{s}:{n}"));
    }
    for (a, s) in &actions {
        println!("| {a} | {} |", s.join(" "));
    }
    println!(
        "\n5xx: {five_xx}; transport errors: {}; downloads checked: {} ({} bad); server log: {} ERROR line(s), {} panic(s)",
        book.transport_errors,
        book.downloads,
        book.bad_downloads.len(),
        log.errors,
        log.panics.len()
    );
    for u in book
        .unexpected
        .iter()
        .chain(&book.bad_downloads)
        .chain(&log.panics)
    {
        println!("  unexpected: {u}");
    }
    let warmup_s = b.warmup_minutes.map_or(run_s / 5.0, |m| m * 60.0);
    let n = ((run_s / 60.0).round() as usize).clamp(4, 20);
    let rows = windows(samples, n, run_s);
    println!(
        "\n## Server resident memory (VmRSS, MB; warm-up: first {:.0} s)\n",
        warmup_s
    );
    println!("| window (s) | min | median | max |\n|---|---:|---:|---:|");
    for w in &rows {
        println!(
            "| {:.0}–{:.0}{} | {:.0} | {:.0} | {:.0} |",
            w.from_s,
            w.to_s,
            if w.to_s <= warmup_s { " (warm-up)" } else { "" },
            mb(w.min),
            mb(w.median),
            mb(w.max)
        );
    }
    // Growth from the first window after the warm-up to the last: of the floor (between
    // jobs) and of the median, which a leak raises; the max follows the largest job of a
    // window and is shown, not judged.
    let after: Vec<&Window> = rows.iter().filter(|w| w.from_s >= warmup_s).collect();
    let growth = match (after.first(), after.last()) {
        (Some(f), Some(l)) if after.len() >= 2 => Some(Growth {
            min: l.min as f64 / f.min as f64 - 1.0,
            median: l.median as f64 / f.median as f64 - 1.0,
            max: l.max as f64 / f.max as f64 - 1.0,
        }),
        _ => None,
    };
    let first = samples.first().map_or(0, |s| s.1);
    match growth {
        Some(g) => println!(
            "\ngrowth after warm-up (first → last window): min {:+.1} %, median {:+.1} %, max {:+.1} %; resident at start {:.0} MB, idle after the final unload {:.0} MB",
            g.min * 100.0,
            g.median * 100.0,
            g.max * 100.0,
            mb(first),
            idle_end.map_or(0.0, mb)
        ),
        None => println!("\ngrowth after warm-up: too short a run to tell"),
    }
    if let Some(path) = &b.json {
        let doc = json!({
            "minutes": b.minutes, "concurrency": b.concurrency, "seed": b.seed,
            "jobs": by_outcome, "failed_reasons": reasons, "five_xx": five_xx,
            "transport_errors": book.transport_errors, "unexpected": book.unexpected,
            "answers": book.answers.iter().map(|((a, s), n)| json!({"action": a, "status": s, "count": n})).collect::<Vec<_>>(),
            "memory": rows.iter().map(|w| json!({"from_s": w.from_s, "to_s": w.to_s, "min": w.min, "median": w.median, "max": w.max})).collect::<Vec<_>>(),
            "growth_min": growth.map(|g| g.min), "growth_median": growth.map(|g| g.median),
            "growth_max": growth.map(|g| g.max), "resident_at_start": first,
            "idle_after_unload": idle_end,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    let mut failures = Vec::new();
    if lost > 0 {
        failures.push(format!("{lost} accepted job(s) lost"));
    }
    if unexplained > 0 {
        failures.push(format!("{unexplained} failed job(s) without an error"));
    }
    if five_xx > 0 {
        failures.push(format!("{five_xx} 5xx answer(s)"));
    }
    if book.transport_errors > 0 || !book.unexpected.is_empty() || !book.bad_downloads.is_empty() {
        failures.push("unexpected answers (listed above)".into());
    }
    if growth.is_some_and(|g| g.min > MAX_GROWTH || g.median > MAX_GROWTH) {
        failures.push(format!(
            "resident memory grew more than {:.0} % after the warm-up",
            MAX_GROWTH * 100.0
        ));
    }
    if failures.is_empty() {
        println!("\nsoak: passed");
        Ok(())
    } else {
        anyhow::bail!("soak failed: {}", failures.join("; "))
    }
}
