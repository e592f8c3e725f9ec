//! User-facing messages free of stray whitespace: every string literal in the libraries
//! (`crates/*/src`, where every error a client or a log line shows is written) is read the way
//! the compiler reads it — escapes, `\`-newline continuations that drop the next line's
//! indentation, raw strings — and none may hold a run of spaces or a line break followed by
//! indentation (the mark of a string continued without `\`). Also the HTTP errors of a sweep
//! of bad requests, as a client receives them.

mod common;

use std::path::{Path, PathBuf};

use common::{request, start};

/// Literals as the compiler sees them, with the line each starts on.
fn string_literals(src: &str) -> Vec<(usize, String)> {
    let b = src.as_bytes();
    let (mut i, mut line) = (0, 1);
    let mut out = Vec::new();
    let bump = |c: u8, line: &mut usize| {
        if c == b'\n' {
            *line += 1;
        }
    };
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    bump(b[i], &mut line);
                    i += 1;
                }
                i += 2;
            }
            b'\'' => {
                // A char literal ('x', '\n', '"') or a lifetime ('a): skip a char literal whole.
                if b.get(i + 1) == Some(&b'\\') {
                    i += 2;
                    while i < b.len() && b[i] != b'\'' {
                        i += 1;
                    }
                    i += 1;
                } else if b.get(i + 2) == Some(&b'\'') {
                    i += 3;
                } else {
                    i += 1;
                }
            }
            b'r' if (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                let start_line = line;
                let begin = j + 1;
                let mut k = begin;
                while k < b.len() && !b[k..].starts_with(&close) {
                    bump(b[k], &mut line);
                    k += 1;
                }
                out.push((
                    start_line,
                    String::from_utf8_lossy(&b[begin..k.min(b.len())]).into(),
                ));
                i = k + close.len();
            }
            b'"' => {
                let start_line = line;
                let mut s = Vec::new();
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        match b.get(i + 1) {
                            Some(b'\n') => {
                                line += 1;
                                i += 2;
                                while i < b.len() && b[i].is_ascii_whitespace() {
                                    bump(b[i], &mut line);
                                    i += 1;
                                }
                                continue;
                            }
                            Some(b'n') => s.push(b'\n'),
                            Some(b't') => s.push(b'\t'),
                            Some(&c) => s.push(c),
                            None => {}
                        }
                        i += 2;
                        continue;
                    }
                    bump(b[i], &mut line);
                    s.push(b[i]);
                    i += 1;
                }
                i += 1;
                out.push((start_line, String::from_utf8_lossy(&s).into()));
            }
            c => {
                bump(c, &mut line);
                i += 1;
            }
        }
    }
    out
}

/// What is wrong with a message's whitespace, if anything.
fn stray_whitespace(s: &str) -> Option<&'static str> {
    if s.contains("  ") {
        Some("a run of spaces")
    } else if s.contains("\n ") {
        Some("a line break followed by indentation")
    } else {
        None
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn the_scanner_reads_literals_as_the_compiler_does() {
    let src = "let a = \"one \\\n         two\"; // \"not  this\"\nlet c = '\"'; let b = r#\"raw  \"# ;\nlet d = \"x,                      y\";";
    let lits = string_literals(src);
    let texts: Vec<&str> = lits.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(texts, ["one two", "raw  ", "x,                      y"]);
    assert_eq!(lits[2].0, 4);
    assert_eq!(stray_whitespace(texts[0]), None);
    assert!(stray_whitespace(texts[2]).is_some());
    assert!(stray_whitespace("broken\n    continuation").is_some());
}

#[test]
fn library_string_literals_have_no_stray_whitespace() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.retain(|p| p.components().any(|c| c.as_os_str() == "src"));
    assert!(files.len() > 20, "{} files", files.len());
    let mut bad = Vec::new();
    for f in &files {
        let src = std::fs::read_to_string(f).unwrap();
        for (line, s) in string_literals(&src) {
            if let Some(why) = stray_whitespace(&s) {
                bad.push(format!(
                    "{}:{line}: {why}: {s:?}",
                    f.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn http_error_messages_have_no_stray_whitespace() {
    let server = start("error-text", &["--max-body-bytes", "100000"]);
    let a = &server.addr;
    let cases: [(&str, &str, Option<&str>, &[u8]); 8] = [
        ("POST", "/v1/image-to-video", Some("application/json"), b"{"),
        (
            "POST",
            "/v1/image-to-video",
            Some("application/json"),
            b"{}",
        ),
        ("POST", "/v1/image-to-video", Some("text/plain"), b"x"),
        (
            "POST",
            "/v1/image-to-video",
            Some("application/json"),
            br#"{"image":"!!","prompt":"x","width":100}"#,
        ),
        ("GET", "/v1/jobs/nope", None, b""),
        ("GET", "/nope", None, b""),
        ("POST", "/v1/models/nope/unload", None, b""),
        ("POST", "/i2v", Some("application/json"), b"{}"),
    ];
    for (method, path, ctype, body) in cases {
        let r = request(a, method, path, ctype, body);
        assert!(
            (400..500).contains(&r.status),
            "{method} {path}: {}",
            r.status
        );
        let message = r.json()["message"].as_str().unwrap().to_string();
        assert_eq!(
            stray_whitespace(&message),
            None,
            "{method} {path}: {message:?}"
        );
    }
}
