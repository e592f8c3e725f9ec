//! `ltx-i2v bench soak`: a bounded soak test of the server on this machine. It starts the
//! server as a child process on a loopback port (demo model unless `LTX_MODEL` is set, a
//! temporary output folder), then for `--minutes` several clients mix valid jobs of random
//! sizes (JSON, multipart, `?wait=true`, multi-scale), invalid requests, cancels, unloads,
//! status polls, result downloads (whole and ranges) and service routes, while the server's
//! resident memory (`VmRSS` of its process) is sampled. Then it stops sending, waits for
//! every accepted job to end, unloads the model and reports: jobs by outcome (none may be
//! lost: every accepted job ends done, failed with its error, or cancelled), answers by
//! action and status, 5xx count, and resident memory over time with its growth after the
//! warm-up. It fails (exit status 1) on a lost job, a 5xx, a transport error, an answer
//! outside the expected statuses, or growth beyond 10 %.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{header, Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

mod report;

#[derive(Debug, Args)]
pub struct SoakBench {
    /// How long the clients send, in minutes (then every accepted job is waited for).
    #[arg(long, default_value_t = 5.0)]
    minutes: f64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Largest width and height of a random job (multiples of 32 up to this).
    #[arg(long, default_value_t = 384)]
    max_side: i64,
    /// Most frames of a random job (8k+1 up to this).
    #[arg(long, default_value_t = 33)]
    max_frames: i64,
    /// Seconds between resident-memory samples.
    #[arg(long, default_value_t = 5.0)]
    sample_seconds: f64,
    /// Minutes at the start left out of the growth figure (default: a fifth of the run).
    #[arg(long)]
    warmup_minutes: Option<f64>,
    /// The server's queue size.
    #[arg(long, default_value_t = 8)]
    queue_size: usize,
    /// Seed of the request mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Longest the drain after the run waits for the accepted jobs.
const DRAIN: Duration = Duration::from_secs(1800);
/// Longest one request may take (a `?wait=true` job included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(900);
/// Growth of resident memory after the warm-up the soak accepts.
const MAX_GROWTH: f64 = 0.10;

/// xorshift64*: a seeded, dependency-free generator for the mix.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The server child, killed and its folder removed when dropped.
struct ServerChild {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    log: Arc<Mutex<LogTally>>,
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Default, Debug)]
struct LogTally {
    errors: usize,
    panics: Vec<String>,
}

fn start_server(b: &SoakBench) -> anyhow::Result<ServerChild> {
    let dir = std::env::temp_dir().join(format!("ltx-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--output-dir",
        ])
        .arg(&dir)
        .args(["--queue-size", &b.queue_size.to_string()])
        .env("LTX_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the server")?;
    let stderr = child.stderr.take().context("the server's stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.split("local=").nth(1).map(|a| a.trim().to_string()))
        .context("the server exited before listening")?
        .parse()?;
    let log = Arc::new(Mutex::new(LogTally::default()));
    let tally = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
            if line.contains(" ERROR ") {
                t.errors += 1;
            }
            if line.contains("panicked") && t.panics.len() < 5 {
                t.panics.push(line);
            }
        }
    });
    Ok(ServerChild {
        child,
        addr,
        dir,
        log,
    })
}

fn resident_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line[6..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

struct Answer {
    status: u16,
    body: Bytes,
    ctype: String,
}

/// One request on a fresh loopback connection.
async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<(String, Bytes)>,
    extra: &[(&str, &str)],
) -> anyhow::Result<Answer> {
    let stream = TcpStream::connect(addr).await?;
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string());
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let bytes = match body {
        Some((ctype, b)) => {
            req = req.header(header::CONTENT_TYPE, ctype);
            b
        }
        None => Bytes::new(),
    };
    let resp = s.send_request(req.body(Full::new(bytes))?).await?;
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        body,
        ctype,
    })
}

fn png(width: u32, height: u32, seed: u64) -> anyhow::Result<Vec<u8>> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x as u64 * 3 + seed) as u8, (y * 5) as u8, 90])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

/// A `multipart/form-data` body: text fields and the `image` file part.
fn multipart(fields: &[(&str, String)], image: &[u8]) -> (String, Bytes) {
    const B: &str = "ltxsoakboundary7d1f";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend_from_slice(
            format!("--{B}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{B}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"f.png\"\r\nContent-Type: image/png\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(image);
    body.extend_from_slice(format!("\r\n--{B}--\r\n").as_bytes());
    (
        format!("multipart/form-data; boundary={B}"),
        Bytes::from(body),
    )
}

/// What the clients know and counted, shared.
#[derive(Default)]
struct Book {
    /// Accepted job id → the last state seen.
    jobs: HashMap<String, String>,
    /// (action, status) → count.
    answers: BTreeMap<(&'static str, u16), usize>,
    transport_errors: usize,
    unexpected: Vec<String>,
    downloads: usize,
    bad_downloads: Vec<String>,
}

impl Book {
    fn record(&mut self, action: &'static str, status: u16, expect: &[u16], detail: &str) {
        *self.answers.entry((action, status)).or_default() += 1;
        if !expect.contains(&status) && self.unexpected.len() < 20 {
            self.unexpected.push(format!(
                "{action}: {status} {}",
                detail.chars().take(300).collect::<String>()
            ));
        }
    }
}

struct Ctx {
    addr: SocketAddr,
    book: Mutex<Book>,
    deadline: Instant,
    max_side: i64,
    max_frames: i64,
    image: Vec<u8>,
    image_b64: String,
}

impl Ctx {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn random_job(&self, rng: &mut Rng) -> Value {
        let sides = (self.max_side / 32).max(2) as u64;
        let frames = ((self.max_frames - 1) / 8).max(0) as u64;
        let mut j = json!({
            "prompt": "a red ball bounces",
            "width": 32 * (2 + rng.below(sides - 1)) as i64,
            "height": 32 * (2 + rng.below(sides - 1)) as i64,
            "num_frames": 8 * rng.below(frames + 1) as i64 + 1,
            "steps": 1 + rng.below(3) as i64,
            "seed": rng.below(1 << 20) as i64,
        });
        if rng.below(8) == 0 {
            // The multi-scale flow takes any size and frame count.
            j["pipeline"] = json!("multiscale");
            // Any even size (the H.264 video's 4:2:0 chroma).
            let side = |rng: &mut Rng| 48 + 2 * rng.below((self.max_side as u64 - 48) / 2) as i64;
            j["width"] = json!(side(rng));
            j["height"] = json!(side(rng));
            j["num_frames"] = json!(1 + rng.below(self.max_frames as u64) as i64);
            j["steps_refine"] = json!(3 + rng.below(3) as i64);
        }
        j
    }

    fn some_job(&self, rng: &mut Rng, want: Option<&str>) -> Option<String> {
        let book = self.book();
        let ids: Vec<&String> = book
            .jobs
            .iter()
            .filter(|(_, s)| want.is_none_or(|w| s.as_str() == w))
            .map(|(id, _)| id)
            .collect();
        (!ids.is_empty()).then(|| ids[rng.below(ids.len() as u64) as usize].clone())
    }
}

/// Bad requests: each must be a 4xx naming the problem, never a 5xx.
fn invalid(ctx: &Ctx, rng: &mut Rng) -> (Method, String, Option<(String, Bytes)>) {
    let json_body = |v: Value| Some(("application/json".to_string(), Bytes::from(v.to_string())));
    let mut job = ctx.random_job(rng);
    job["image"] = json!(ctx.image_b64);
    job.as_object_mut().map(|o| o.remove("pipeline"));
    let broken: [(&str, Value); 9] = [
        ("width", json!(100)),
        ("num_frames", json!(10)),
        ("steps", json!(0)),
        ("guidance_scale", json!(-1)),
        ("image", json!("not base64!")),
        ("unknown_field", json!(1)),
        ("steps_refine", json!(3)),
        ("width", json!("wide")),
        ("width", json!(100_000)),
    ];
    let post = |b| (Method::POST, "/v1/image-to-video".to_string(), b);
    match rng.below(15) {
        i @ 0..=8 => {
            let (k, v) = &broken[i as usize];
            job[*k] = v.clone();
            post(json_body(job))
        }
        9 => {
            // The multi-scale flow with an odd width.
            job["pipeline"] = json!("multiscale");
            job["width"] = json!(99);
            post(json_body(job))
        }
        10 => post(Some((
            "application/json".into(),
            Bytes::from("{\"image\": "),
        ))),
        11 => post(Some(("text/plain".into(), Bytes::from("hello")))),
        12 => post(Some(multipart(&[("width", "64".into())], b"not an image"))),
        13 => (Method::GET, format!("/v1/jobs/{:032x}", rng.next()), None),
        _ => (Method::POST, "/v1/models/nope/unload".into(), None),
    }
}

async fn client(ctx: Arc<Ctx>, seed: u64) {
    let mut rng = Rng(seed | 1);
    while Instant::now() < ctx.deadline {
        let roll = rng.below(100);
        let step = tokio::time::timeout(REQUEST_TIMEOUT, act(&ctx, &mut rng, roll)).await;
        if let Ok(Err(e)) | Err(e) = step.map_err(anyhow::Error::from) {
            let mut b = ctx.book();
            b.transport_errors += 1;
            if b.unexpected.len() < 20 {
                b.unexpected.push(format!("transport: {e:#}"));
            }
        }
        // Keep the mix from spinning on fast 4xx answers.
        tokio::time::sleep(Duration::from_millis(20 + rng.below(80))).await;
    }
}

async fn act(ctx: &Ctx, rng: &mut Rng, roll: u64) -> anyhow::Result<()> {
    let a = ctx.addr;
    match roll {
        0..=29 => {
            let job = ctx.random_job(rng);
            let multipart_form = rng.below(3) == 0;
            let wait = rng.below(6) == 0;
            let body = if multipart_form {
                let fields: Vec<(&str, String)> = job
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| {
                                let text = v.as_str().map_or_else(|| v.to_string(), String::from);
                                (k.as_str(), text)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                multipart(&fields, &ctx.image)
            } else {
                let mut j = job;
                j["image"] = json!(ctx.image_b64);
                ("application/json".into(), Bytes::from(j.to_string()))
            };
            let path = if wait {
                "/v1/image-to-video?wait=true"
            } else {
                "/v1/image-to-video"
            };
            let r = send(a, Method::POST, path, Some(body), &[]).await?;
            let action = if wait { "submit_wait" } else { "submit" };
            // wait=true: the video (200), not finished in time (202), cancelled by another
            // client (409); both: a full queue (429).
            let expect: &[u16] = if wait {
                &[200, 202, 409, 429]
            } else {
                &[202, 429]
            };
            let detail = String::from_utf8_lossy(&r.body).to_string();
            let mut book = ctx.book();
            book.record(action, r.status, expect, &detail);
            if r.status == 202 {
                let v: Value = serde_json::from_slice(&r.body)?;
                let id = v["id"].as_str().context("a 202 without an id")?.to_string();
                book.jobs.insert(id, "queued".into());
            }
            if r.status == 200 && !(r.ctype == "video/mp4" && r.body.get(4..8) == Some(b"ftyp")) {
                book.bad_downloads.push(format!(
                    "wait=true answered {} bytes of {}",
                    r.body.len(),
                    r.ctype
                ));
            }
        }
        30..=49 => {
            let (method, path, body) = invalid(ctx, rng);
            let r = send(a, method, &path, body, &[]).await?;
            let detail = String::from_utf8_lossy(&r.body).to_string();
            let named = serde_json::from_slice::<Value>(&r.body)
                .is_ok_and(|v| v["error_type"].is_string() && v["message"].is_string());
            let mut book = ctx.book();
            book.record("invalid", r.status, &[400, 404, 413, 415, 422], &detail);
            if !named {
                book.unexpected
                    .push(format!("invalid: not a JSON error: {detail}"));
            }
        }
        50..=57 => {
            if let Some(id) = ctx
                .some_job(rng, Some("queued"))
                .or_else(|| ctx.some_job(rng, Some("running")))
            {
                let r = send(a, Method::DELETE, &format!("/v1/jobs/{id}"), None, &[]).await?;
                ctx.book().record(
                    "cancel",
                    r.status,
                    &[200],
                    &String::from_utf8_lossy(&r.body),
                );
            }
        }
        58..=60 => {
            let r = send(a, Method::POST, "/v1/models/ltx/unload", None, &[]).await?;
            ctx.book().record(
                "unload",
                r.status,
                &[200, 429],
                &String::from_utf8_lossy(&r.body),
            );
        }
        61..=79 => {
            if let Some(id) = ctx.some_job(rng, None) {
                let r = send(a, Method::GET, &format!("/v1/jobs/{id}"), None, &[]).await?;
                let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                let mut book = ctx.book();
                book.record("status", r.status, &[200], &v.to_string());
                if let Some(state) = v["state"].as_str() {
                    book.jobs.insert(id, state.to_string());
                }
            }
        }
        80..=91 => {
            if let Some(id) = ctx.some_job(rng, Some("done")) {
                let ranged = rng.below(3) == 0;
                let extra: &[(&str, &str)] = if ranged {
                    &[("Range", "bytes=0-99")]
                } else {
                    &[]
                };
                let r = send(
                    a,
                    Method::GET,
                    &format!("/v1/jobs/{id}/result"),
                    None,
                    extra,
                )
                .await?;
                let mut book = ctx.book();
                let want = if ranged { 206 } else { 200 };
                book.record("download", r.status, &[want], "");
                book.downloads += 1;
                let ok = r.ctype == "video/mp4"
                    && r.body.get(4..8) == Some(b"ftyp")
                    && (!ranged || r.body.len() == 100);
                if r.status == want && !ok {
                    book.bad_downloads
                        .push(format!("{id}: {} bytes of {}", r.body.len(), r.ctype));
                }
            }
        }
        _ => {
            let path = ["/health", "/ready", "/v1/system", "/metrics"][rng.below(4) as usize];
            let r = send(a, Method::GET, path, None, &[]).await?;
            ctx.book().record(
                "service",
                r.status,
                &[200],
                &String::from_utf8_lossy(&r.body),
            );
        }
    }
    Ok(())
}

/// Resident-memory samples: (seconds since start, bytes).
type Samples = Arc<Mutex<Vec<(f64, u64)>>>;

async fn sampler(pid: u32, every: Duration, start: Instant, samples: Samples) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Some(rss) = resident_bytes(pid) else {
            return;
        };
        samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((start.elapsed().as_secs_f64(), rss));
    }
}

/// Waits until every accepted job has ended; returns (id, status) of each.
async fn drain(ctx: &Ctx) -> anyhow::Result<Vec<(String, Value)>> {
    let ids: Vec<String> = ctx.book().jobs.keys().cloned().collect();
    let until = Instant::now() + DRAIN;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        loop {
            let r = send(ctx.addr, Method::GET, &format!("/v1/jobs/{id}"), None, &[]).await?;
            let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            let terminal = matches!(v["state"].as_str(), Some("done" | "failed" | "cancelled"));
            if r.status != 200 || terminal || Instant::now() >= until {
                out.push((
                    id,
                    if r.status == 200 {
                        v
                    } else {
                        json!({"state": "lost"})
                    },
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(out)
}

pub fn run(b: SoakBench) -> anyhow::Result<()> {
    if b.minutes.is_nan()
        || b.minutes <= 0.0
        || b.concurrency == 0
        || b.max_side < 64
        || b.max_frames < 1
    {
        bail!("--minutes must be > 0, --concurrency ≥ 1, --max-side ≥ 64, --max-frames ≥ 1");
    }
    let server = start_server(&b)?;
    let pid = server.child.id();
    let image = png(96, 64, b.seed)?;
    let image_b64 = base64(&image);
    let run_for = Duration::from_secs_f64(b.minutes * 60.0);
    let start = Instant::now();
    let ctx = Arc::new(Ctx {
        addr: server.addr,
        book: Mutex::new(Book::default()),
        deadline: start + run_for,
        max_side: b.max_side,
        max_frames: b.max_frames,
        image,
        image_b64,
    });
    let samples: Samples = Arc::default();
    eprintln!(
        "soak: {} client(s) for {} min against {} (server pid {pid})",
        b.concurrency, b.minutes, server.addr
    );
    let rt = tokio::runtime::Runtime::new()?;
    let (outcomes, idle_end) = rt.block_on(async {
        let sample = tokio::spawn(sampler(
            pid,
            Duration::from_secs_f64(b.sample_seconds.max(0.5)),
            start,
            samples.clone(),
        ));
        let clients: Vec<_> = (0..b.concurrency)
            .map(|i| tokio::spawn(client(ctx.clone(), b.seed.wrapping_mul(7919) + i as u64)))
            .collect();
        for c in clients {
            let _ = c.await;
        }
        eprintln!(
            "soak: sending stopped after {:.0} s; waiting for the accepted jobs",
            start.elapsed().as_secs_f64()
        );
        let outcomes = drain(&ctx).await;
        let unload = send(ctx.addr, Method::POST, "/v1/models/ltx/unload", None, &[]).await;
        if let Ok(r) = &unload {
            ctx.book()
                .record("unload", r.status, &[200], "after the run");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        sample.abort();
        (outcomes, resident_bytes(pid))
    });
    let outcomes = outcomes?;
    let book = ctx.book();
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let log = server.log.lock().unwrap_or_else(|p| p.into_inner());
    report::report(
        &b,
        &book,
        &outcomes,
        &samples,
        run_for.as_secs_f64(),
        idle_end,
        &log,
    )
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | u32::from(c) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
