//! `ltx-i2v bench http`: a bounded load test of the HTTP API over keep-alive HTTP/1.1
//! connections, loopback only. Without `--url` it starts the server in this process (demo
//! model, CPU, a temporary output folder that is removed at the end). Each scenario stops at
//! `--requests` or `--max-seconds`, whichever comes first; one row per scenario gives the
//! statuses seen, transport errors, throughput and latency percentiles.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

#[derive(Debug, Args)]
pub struct HttpBench {
    /// A running server to load, e.g. http://127.0.0.1:8000 (loopback addresses only).
    /// Without it the server is started in this process with the demo model on the CPU.
    #[arg(long)]
    url: Option<String>,
    /// Most requests per scenario (the job-submitting scenario sends at most 200).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Longest a scenario runs, in seconds.
    #[arg(long, default_value_t = 20.0)]
    max_seconds: f64,
    /// Queue size of the in-process server (ignored with --url).
    #[arg(long, default_value_t = 8)]
    queue_size: usize,
    /// Also write the rows as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The job-submitting scenario runs real (tiny) jobs on the worker: keep it short.
const MAX_SUBMITS: usize = 200;

/// Where requests go: the address connected to and the Host header sent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
}

impl Target {
    fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

/// Parses `http://HOST[:PORT][/]`, refusing any host that is not loopback
/// (127.0.0.0/8, ::1, localhost): this command must never load someone else's server.
fn parse_loopback_url(url: &str) -> anyhow::Result<Target> {
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("--url {url:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => bail!("--url {url}: only http:// is supported, not {other}://"),
        None => bail!("--url {url}: give the scheme too, e.g. http://127.0.0.1:8000"),
    }
    let host = uri
        .host()
        .with_context(|| format!("--url {url}: no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if !is_loopback_host(&host) {
        bail!(
            "--url {url}: {host} is not a loopback address; bench http only loads servers on \
             this machine (127.0.0.0/8, ::1 or localhost)"
        );
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        bail!("--url {url}: give only scheme, host and port (the paths are the API's own)");
    }
    Ok(Target {
        host,
        port: uri.port_u16().unwrap_or(80),
    })
}

/// Nearest-rank percentile (`p` in (0, 100]) of ascending `sorted`; `None` when empty.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `200:1998 404:2`, ascending by status; `-` when no response came.
fn format_statuses(statuses: &BTreeMap<u16, usize>) -> String {
    if statuses.is_empty() {
        return "-".into();
    }
    statuses
        .iter()
        .map(|(s, n)| format!("{s}:{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Standard base64 with padding (the `base64` crate is only a dev-dependency here).
fn base64_encode(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
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

fn tiny_png() -> anyhow::Result<Vec<u8>> {
    let img = image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, 128])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

fn job_body(png_b64: &str, width: i64) -> Bytes {
    Bytes::from(
        json!({"image": png_b64, "prompt": "a cat", "width": width, "height": 64,
               "num_frames": 9, "steps": 2, "seed": 1})
        .to_string(),
    )
}

/// One scenario: the same request, over and over.
struct Spec {
    name: String,
    method: Method,
    path: String,
    body: Option<Bytes>,
    /// Statuses this request should get; others are reported under the table.
    expect: &'static [u16],
    /// The most requests this scenario sends.
    limit: usize,
}

#[derive(Default)]
struct Stats {
    sent: usize,
    statuses: BTreeMap<u16, usize>,
    errors: usize,
    first_error: Option<String>,
    latencies: Vec<Duration>,
    /// Ids of accepted (202) jobs.
    ids: Vec<String>,
    /// 429s without a Retry-After header.
    no_retry_after: usize,
}

impl Stats {
    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| e.to_string());
    }

    fn merge(&mut self, o: Stats) {
        self.sent += o.sent;
        for (s, n) in o.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.latencies.extend(o.latencies);
        self.ids.extend(o.ids);
        self.no_retry_after += o.no_retry_after;
    }
}

type Sender = SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

struct Answer {
    status: u16,
    retry_after: bool,
    body: Bytes,
}

async fn send(
    s: &mut Sender,
    host: &str,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> anyhow::Result<Answer> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req.body(Full::new(body.unwrap_or_default()))?;
    s.ready().await?;
    let resp = s.send_request(req).await?;
    let status = resp.status().as_u16();
    let retry_after = resp.headers().contains_key(header::RETRY_AFTER);
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

struct Shared {
    addr: SocketAddr,
    host: String,
    spec: Spec,
    claimed: AtomicUsize,
    deadline: Instant,
    timeout: Duration,
}

async fn connection(sh: Arc<Shared>) -> Stats {
    let mut st = Stats::default();
    let mut conn: Option<Sender> = None;
    loop {
        if Instant::now() >= sh.deadline
            || sh.claimed.fetch_add(1, Ordering::Relaxed) >= sh.spec.limit
        {
            break;
        }
        st.sent += 1;
        let s = match conn.as_mut() {
            Some(s) => s,
            None => match connect(sh.addr).await {
                Ok(s) => conn.insert(s),
                Err(e) => {
                    // The server is gone or refuses: this connection stops here.
                    st.error(format!("{e:#}"));
                    break;
                }
            },
        };
        let start = Instant::now();
        let spec = &sh.spec;
        let sent = send(
            s,
            &sh.host,
            spec.method.clone(),
            &spec.path,
            spec.body.clone(),
        );
        match tokio::time::timeout(sh.timeout, sent).await {
            Ok(Ok(a)) => {
                st.latencies.push(start.elapsed());
                *st.statuses.entry(a.status).or_default() += 1;
                if a.status == 429 && !a.retry_after {
                    st.no_retry_after += 1;
                }
                if a.status == 202 {
                    match serde_json::from_slice::<Value>(&a.body) {
                        Ok(v) if v["id"].is_string() => st
                            .ids
                            .push(v["id"].as_str().unwrap_or_default().to_string()),
                        _ => st.error("a 202 without a job id"),
                    }
                }
            }
            Ok(Err(e)) => {
                st.error(format!("{} {}: {e:#}", spec.method, spec.path));
                conn = None;
            }
            Err(_) => {
                st.error(format!(
                    "{} {}: no answer within {:?}",
                    spec.method, spec.path, sh.timeout
                ));
                conn = None;
            }
        }
    }
    st
}

struct Row {
    name: String,
    sent: usize,
    statuses: BTreeMap<u16, usize>,
    errors: usize,
    seconds: f64,
    rps: f64,
    /// p50, p90, p99, max in milliseconds.
    ms: [Option<f64>; 4],
}

impl Row {
    fn new(name: &str, st: &mut Stats, seconds: f64) -> Self {
        st.latencies.sort_unstable();
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
        let l = &st.latencies;
        Row {
            name: name.to_string(),
            sent: st.sent,
            statuses: st.statuses.clone(),
            errors: st.errors,
            seconds,
            rps: if seconds > 0.0 {
                l.len() as f64 / seconds
            } else {
                0.0
            },
            ms: [
                ms(percentile(l, 50.0)),
                ms(percentile(l, 90.0)),
                ms(percentile(l, 99.0)),
                ms(l.last().copied()),
            ],
        }
    }

    fn print(&self) {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        println!(
            "{:<28} {:>6} {:<22} {:>6} {:>9.1} {:>8} {:>8} {:>8} {:>8}",
            self.name,
            self.sent,
            format_statuses(&self.statuses),
            self.errors,
            self.rps,
            f(self.ms[0]),
            f(self.ms[1]),
            f(self.ms[2]),
            f(self.ms[3]),
        );
    }

    fn json(&self) -> Value {
        json!({
            "scenario": self.name,
            "sent": self.sent,
            "statuses": self.statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "errors": self.errors,
            "seconds": self.seconds,
            "requests_per_second": self.rps,
            "latency_ms": {"p50": self.ms[0], "p90": self.ms[1], "p99": self.ms[2], "max": self.ms[3]},
        })
    }
}

fn print_header() {
    println!(
        "{:<28} {:>6} {:<22} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "scenario", "sent", "statuses", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
}

struct Bench<'a> {
    b: &'a HttpBench,
    addr: SocketAddr,
    host: String,
    rows: Vec<Row>,
    notes: Vec<String>,
    failed: bool,
}

impl Bench<'_> {
    async fn scenario(&mut self, spec: Spec) -> Stats {
        let name = spec.name.clone();
        let expect = spec.expect;
        let max = Duration::from_secs_f64(self.b.max_seconds);
        let start = Instant::now();
        let sh = Arc::new(Shared {
            addr: self.addr,
            host: self.host.clone(),
            spec,
            claimed: AtomicUsize::new(0),
            deadline: start + max,
            timeout: max.max(Duration::from_secs(5)),
        });
        let tasks: Vec<_> = (0..self.b.concurrency)
            .map(|_| tokio::spawn(connection(sh.clone())))
            .collect();
        let mut st = Stats::default();
        for t in tasks {
            match t.await {
                Ok(s) => st.merge(s),
                Err(e) => st.error(format!("connection task: {e}")),
            }
        }
        let row = Row::new(&name, &mut st, start.elapsed().as_secs_f64());
        row.print();
        if st.errors > 0 || st.statuses.keys().any(|s| *s >= 500) {
            self.failed = true;
        }
        if let Some(e) = &st.first_error {
            self.notes.push(format!(
                "{name}: {} transport error(s), first: {e}",
                st.errors
            ));
        }
        for (s, n) in &st.statuses {
            if !expect.contains(s) {
                self.notes.push(format!(
                    "{name}: {n} answer(s) with status {s}, expected {expect:?}"
                ));
            }
        }
        if st.no_retry_after > 0 {
            self.notes.push(format!(
                "{name}: {} 429 answer(s) without Retry-After",
                st.no_retry_after
            ));
        }
        self.rows.push(row);
        st
    }

    fn get(&self, name: &str, path: &str, expect: &'static [u16]) -> Spec {
        Spec {
            name: name.to_string(),
            method: Method::GET,
            path: path.to_string(),
            body: None,
            expect,
            limit: self.b.requests,
        }
    }

    /// One request on a connection of its own (setup and cleanup, not measured).
    async fn once(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<Answer> {
        let mut s = connect(self.addr).await?;
        let a = tokio::time::timeout(
            Duration::from_secs(30),
            send(&mut s, &self.host, method.clone(), path, body),
        )
        .await
        .map_err(|_| anyhow!("{method} {path}: no answer within 30 s"))??;
        Ok(a)
    }

    /// Cancels the jobs, then waits (at most `wait`) until none still runs, so the worker is
    /// idle for what comes next and the output folder can go. Returns the failed cancels.
    async fn cancel_jobs(&self, ids: &[String], wait: Duration) -> usize {
        let mut failed = 0;
        let Ok(mut s) = connect(self.addr).await else {
            return ids.len();
        };
        for id in ids {
            let path = format!("/v1/jobs/{id}");
            match send(&mut s, &self.host, Method::DELETE, &path, None).await {
                Ok(a) if a.status == 200 => {}
                Ok(_) => failed += 1,
                Err(_) => {
                    failed += 1;
                    match connect(self.addr).await {
                        Ok(n) => s = n,
                        Err(_) => return failed + ids.len(),
                    }
                }
            }
        }
        let deadline = Instant::now() + wait;
        for id in ids {
            let path = format!("/v1/jobs/{id}");
            while Instant::now() < deadline {
                let terminal = match send(&mut s, &self.host, Method::GET, &path, None).await {
                    Ok(a) => serde_json::from_slice::<Value>(&a.body).is_ok_and(|v| {
                        matches!(v["state"].as_str(), Some("done" | "failed" | "cancelled"))
                            || a.status == 404
                    }),
                    Err(_) => true,
                };
                if terminal {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        failed
    }

    /// Submits one valid job; its id.
    async fn submit_one(&mut self, body: &Bytes) -> anyhow::Result<String> {
        let a = match self
            .once(Method::POST, "/v1/image-to-video", Some(body.clone()))
            .await
        {
            Ok(a) => a,
            Err(e) => {
                self.failed = true;
                return Err(e.context("submitting a job"));
            }
        };
        if a.status >= 500 {
            self.failed = true;
        }
        if a.status != 202 {
            bail!(
                "submitting a job got {}: {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
        Ok(serde_json::from_slice::<Value>(&a.body)?["id"]
            .as_str()
            .context("the 202 has no job id")?
            .to_string())
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let png = base64_encode(&tiny_png()?);
        let valid = job_body(&png, 64);
        print_header();
        let s = self.get("GET /health", "/health", &[200]);
        self.scenario(s).await;
        let s = self.get("GET /ready", "/ready", &[200]);
        self.scenario(s).await;
        let s = self.get("GET /v1/system", "/v1/system", &[200]);
        self.scenario(s).await;

        // An existing job: submitted, then cancelled before the measurement so that the
        // worker does not compete with the server for the CPU (a cancelled job stays
        // readable, with the same status route and body shape).
        match self.submit_one(&valid).await {
            Ok(id) => {
                let wait = Duration::from_secs_f64(self.b.max_seconds);
                if self.cancel_jobs(std::slice::from_ref(&id), wait).await > 0 {
                    self.failed = true;
                    self.notes.push(format!("could not cancel job {id}"));
                }
                let s = self.get("GET /v1/jobs/{id}", &format!("/v1/jobs/{id}"), &[200]);
                self.scenario(s).await;
            }
            Err(e) => {
                // A busy server may well answer 429 here: skip the scenario, say why.
                println!("{:<28} skipped: {e:#}", "GET /v1/jobs/{id}");
                self.notes
                    .push(format!("GET /v1/jobs/{{id}} skipped: {e:#}"));
            }
        }
        let s = self.get(
            "GET /v1/jobs/{unknown} (404)",
            &format!("/v1/jobs/{}", "0".repeat(32)),
            &[404],
        );
        self.scenario(s).await;
        let s = Spec {
            name: "POST invalid job (422)".into(),
            method: Method::POST,
            body: Some(job_body(&png, 33)),
            ..self.get("", "/v1/image-to-video", &[422])
        };
        self.scenario(s).await;
        let s = Spec {
            name: "POST job (queue, 202/429)".into(),
            method: Method::POST,
            body: Some(valid),
            limit: self.b.requests.min(MAX_SUBMITS),
            ..self.get("", "/v1/image-to-video", &[202, 429])
        };
        let st = self.scenario(s).await;
        let failed = self.cancel_jobs(&st.ids, Duration::from_secs(30)).await;
        println!();
        println!(
            "cancelled {} of {} accepted job(s)",
            st.ids.len() - failed.min(st.ids.len()),
            st.ids.len()
        );
        if failed > 0 {
            self.failed = true;
            self.notes
                .push(format!("{failed} accepted job(s) could not be cancelled"));
        }
        Ok(())
    }
}

/// Makes the in-process server's configuration the way `ltx-i2v serve` would, so every
/// field the server adds keeps its default (and its environment variable).
fn in_process_config(
    port: u16,
    dir: &std::path::Path,
    queue: usize,
) -> anyhow::Result<ltx_server::ServeConfig> {
    #[derive(clap::Parser)]
    struct P {
        #[command(flatten)]
        c: ltx_server::ServeConfig,
    }
    let dir = dir.to_str().context("the temporary folder is not UTF-8")?;
    let (port, queue) = (port.to_string(), queue.to_string());
    let p = <P as clap::Parser>::try_parse_from([
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--output-dir",
        dir,
        "--queue-size",
        &queue,
        "--ltx-device",
        "cpu",
    ])?;
    let mut c = p.c;
    // The demo model always, whatever LTX_MODEL says.
    c.ltx_model = None;
    c.check()?;
    Ok(c)
}

/// Starts `ltx_server::serve` on a free loopback port and waits for `/health`.
async fn start_server(
    dir: &std::path::Path,
    queue: usize,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    let mut last = None;
    // `serve` binds the port itself: pick a free one, and try again if it was taken between.
    for _ in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let cfg = in_process_config(port, dir, queue)?;
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let r = ltx_server::serve(cfg).await;
            let _ = tx.send(r);
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = rx.try_recv() {
                last = Some(match r {
                    Ok(()) => anyhow!("the in-process server stopped"),
                    Err(e) => anyhow!(e),
                });
                break;
            }
            if let Ok(mut s) = connect(addr).await {
                if let Ok(a) = send(&mut s, "127.0.0.1", Method::GET, "/health", None).await {
                    if a.status == 200 {
                        return Ok((task, addr));
                    }
                }
            }
            if Instant::now() >= deadline {
                task.abort();
                bail!("the in-process server did not answer /health within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Err(last
        .unwrap_or_else(|| anyhow!("could not start the server"))
        .context("starting the in-process server"))
}

async fn resolve(t: &Target) -> anyhow::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((t.host.as_str(), t.port))
        .await
        .with_context(|| format!("resolving {}", t.host))?
        .collect();
    if let Some(a) = addrs.iter().find(|a| !a.ip().to_canonical().is_loopback()) {
        bail!(
            "{} resolves to {}, which is not a loopback address",
            t.host,
            a.ip()
        );
    }
    addrs
        .first()
        .copied()
        .with_context(|| format!("{} resolves to nothing", t.host))
}

/// Removes the in-process server's output folder however the run ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn bench(
    b: &HttpBench,
    dir: Option<&std::path::Path>,
) -> anyhow::Result<(Vec<Row>, Vec<String>, bool)> {
    let (server, addr, host, where_) = match (&b.url, dir) {
        (Some(url), _) => {
            let t = parse_loopback_url(url)?;
            let addr = resolve(&t).await?;
            // Fail before the table when nothing answers there.
            let mut s = connect(addr)
                .await
                .with_context(|| format!("no server at {url}"))?;
            tokio::time::timeout(
                Duration::from_secs(10),
                send(&mut s, &t.host_header(), Method::GET, "/health", None),
            )
            .await
            .map_err(|_| anyhow!("{url}/health: no answer within 10 s"))?
            .with_context(|| format!("{url}/health"))?;
            (
                None,
                addr,
                t.host_header(),
                format!("server at {url} ({addr})"),
            )
        }
        (None, Some(dir)) => {
            let (task, addr) = start_server(dir, b.queue_size).await?;
            let where_ = format!(
                "in-process server at http://{addr} (demo model, CPU, queue {}, output {})",
                b.queue_size,
                dir.display()
            );
            (Some(task), addr, addr.to_string(), where_)
        }
        (None, None) => bail!("no server to load"),
    };
    println!(
        "bench http: {where_}; per scenario at most {} requests (job submits at most {}) or {} s, {} keep-alive connection(s)",
        b.requests,
        b.requests.min(MAX_SUBMITS),
        b.max_seconds,
        b.concurrency
    );
    let mut bench = Bench {
        b,
        addr,
        host,
        rows: Vec::new(),
        notes: Vec::new(),
        failed: false,
    };
    let r = bench.run().await;
    if let Some(task) = server {
        task.abort();
        let _ = task.await;
    }
    r?;
    Ok((bench.rows, bench.notes, bench.failed))
}

pub fn run(b: HttpBench) -> anyhow::Result<()> {
    if b.requests == 0 || b.concurrency == 0 {
        bail!("--requests and --concurrency must be at least 1");
    }
    if !(b.max_seconds.is_finite() && b.max_seconds > 0.0) {
        bail!("--max-seconds must be a positive number of seconds");
    }
    let dir = match b.url {
        Some(_) => None,
        None => {
            let d = std::env::temp_dir().join(format!("ltx-i2v-bench-http-{}", std::process::id()));
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            Some(TempDir(d))
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(async {
        tokio::select! {
            r = bench(&b, dir.as_ref().map(|d| d.0.as_path())) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(dir);
    let (rows, notes, failed) = outcome?;
    for n in &notes {
        println!("note: {n}");
    }
    if let Some(path) = &b.json {
        let v = json!({
            "url": b.url,
            "requests": b.requests,
            "concurrency": b.concurrency,
            "max_seconds": b.max_seconds,
            "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if failed {
        bail!("5xx answers or transport errors (see the table)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v = ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(percentile(&v, 50.0), Some(Duration::from_millis(5)));
        assert_eq!(percentile(&v, 90.0), Some(Duration::from_millis(9)));
        assert_eq!(percentile(&v, 99.0), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&v, 100.0), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&v, 1.0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&ms(&[7]), 50.0), Some(Duration::from_millis(7)));
        // Nearest rank: ceil(0.5 * 4) = 2, no interpolation.
        assert_eq!(
            percentile(&ms(&[1, 2, 3, 4]), 50.0),
            Some(Duration::from_millis(2))
        );
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn loopback_urls_only() {
        let t = parse_loopback_url("http://127.0.0.1:8000").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8000));
        assert_eq!(t.host_header(), "127.0.0.1:8000");
        assert_eq!(parse_loopback_url("http://127.1.2.3:9/").unwrap().port, 9);
        assert_eq!(parse_loopback_url("http://localhost").unwrap().port, 80);
        let v6 = parse_loopback_url("http://[::1]:8000").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.host_header(), "[::1]:8000");
        for bad in [
            "http://10.0.0.1:8000",
            "http://0.0.0.0:8000",
            "http://example.com",
            "http://[::2]:80",
            "http://128.0.0.1",
            "https://127.0.0.1:8000",
            "127.0.0.1:8000",
            "http://127.0.0.1:8000/v1",
        ] {
            assert!(parse_loopback_url(bad).is_err(), "{bad} was accepted");
        }
        let e = parse_loopback_url("http://10.0.0.1:8000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a loopback address"), "{e}");
    }

    #[test]
    fn statuses_are_counted_in_order() {
        let mut m = BTreeMap::new();
        assert_eq!(format_statuses(&m), "-");
        m.insert(429, 191);
        m.insert(202, 9);
        assert_eq!(format_statuses(&m), "202:9 429:191");
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(raw.as_bytes()), enc);
        }
        assert_eq!(base64_encode(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn the_tiny_png_decodes() {
        let png = tiny_png().unwrap();
        let img = image::load_from_memory(&png).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
    }
}
