//! Shared by the binary's integration tests: run the server on a loopback port, speak raw
//! HTTP/1.1 to it, and read an MP4 with ffprobe.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_ltx-i2v");

pub struct Server {
    pub child: Child,
    pub addr: String,
    pub dir: PathBuf,
    /// Leave the output folder in place when dropped (for a server started after this one).
    pub keep_dir: bool,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Server {
    /// SIGTERM, then waits for the exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The output folder `start(tag, ..)` uses.
pub fn output_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ltx-http-{tag}-{}", std::process::id()))
}

pub fn start(tag: &str, args: &[&str]) -> Server {
    let dir = output_dir(tag);
    let _ = std::fs::remove_dir_all(&dir);
    start_in(dir, args, &[])
}

/// Starts a server on `dir` as it is (not emptied first), with extra environment variables.
pub fn start_in(dir: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--output-dir",
        ])
        .arg(&dir)
        .args(args)
        .env("LTX_LOG", "info")
        .env("LTX_DEVICE", "cpu")
        .env("INSTANTID_DEVICE", "cpu")
        .env_remove("LTX_MODEL")
        .env_remove("INSTANTID_MODEL")
        .env_remove("INSTANTID_CONTROLNET")
        .env_remove("INSTANTID_IP_ADAPTER")
        .env_remove("INSTANTID_FACE_MODELS")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.split("local=").nth(1).map(|a| a.trim().to_string()))
        .expect("server printed no listening address");
    std::thread::spawn(move || lines.for_each(drop));
    Server {
        child,
        addr,
        dir,
        keep_dir: false,
    }
}

pub struct Resp {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl Resp {
    /// A response header's value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

pub fn request(addr: &str, method: &str, path: &str, ctype: Option<&str>, body: &[u8]) -> Resp {
    request_with(addr, method, path, &[], ctype, body)
}

/// Like [`request`], with extra request headers.
pub fn request_with(
    addr: &str,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    ctype: Option<&str>,
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(c) = ctype {
        head.push_str(&format!("Content-Type: {c}\r\n"));
    }
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header end");
    let headers = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = headers.split_whitespace().nth(1).unwrap().parse().unwrap();
    Resp {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

pub fn ffprobe(path: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=codec_name,pix_fmt,width,height,nb_read_frames",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe not found: install ffmpeg (apt-get install ffmpeg)");
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["streams"][0].clone()
}

pub const BOUNDARY: &str = "ltx-test-boundary-7d3f";

/// A multipart part: (name, filename, bytes).
pub type Part<'a> = (&'a str, Option<&'a str>, &'a [u8]);

/// A multipart/form-data body: `(name, filename, bytes)` parts.
pub fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, file, data) in parts {
        b.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match file {
            Some(f) => b.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                     Content-Type: image/png\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => b.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

pub fn multipart_ctype() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}
