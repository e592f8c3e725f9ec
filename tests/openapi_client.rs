//! A Python client generated from the served `/openapi.json` by `openapi-python-client` (pinned
//! in `.ci/run`, which installs it into a throwaway venv and sets `LTX_OPENAPI_PYTHON_CLIENT`)
//! submits a JSON and a multipart video job and a JSON portrait job, follows their status to
//! `done` and downloads the results, which must be byte for byte the MP4s and the PNG the
//! server wrote. Without the generator
//! (`LTX_OPENAPI_PYTHON_CLIENT` unset and none at the known path) the test says it is skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ffprobe, request, start};

/// Where `.ci/run` puts the generator when `LTX_OPENAPI_PYTHON_CLIENT` is not set.
const KNOWN_PATH: &str = "/tmp/ltx-oapi-venv/bin/openapi-python-client";

fn generator() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LTX_OPENAPI_PYTHON_CLIENT") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "LTX_OPENAPI_PYTHON_CLIENT={} does not exist",
            p.display()
        );
        return Some(p);
    }
    Some(PathBuf::from(KNOWN_PATH)).filter(|p| p.is_file())
}

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(96, 64, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, 90])
    });
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    bytes
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn a_generated_python_client_submits_follows_and_downloads() {
    let Some(generator) = generator() else {
        println!(
            "skipped: openapi-python-client not found (set LTX_OPENAPI_PYTHON_CLIENT, or run \
             .ci/run, which installs it at {KNOWN_PATH})"
        );
        return;
    };
    let python = generator.with_file_name("python");
    println!("{}", run(Command::new(&generator).arg("--version")).trim());
    let server = start("oapi-client", &[]);
    let work = std::env::temp_dir().join(format!("ltx-oapi-client-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("out")).unwrap();

    let doc = request(&server.addr, "GET", "/openapi.json", None, b"");
    assert_eq!(doc.status, 200);
    std::fs::write(work.join("openapi.json"), &doc.body).unwrap();
    // The generator reads files only as application/octet-stream; video/mp4 and image/png are
    // such files (its documented override for binary media types).
    std::fs::write(
        work.join("config.yml"),
        "content_type_overrides:\n  video/mp4: application/octet-stream\n  image/png: application/octet-stream\npost_hooks: []\n",
    )
    .unwrap();
    let log = run(Command::new(&generator)
        .args(["generate", "--meta", "none", "--path"])
        .arg(work.join("openapi.json"))
        .arg("--output-path")
        .arg(work.join("ltx_client"))
        .arg("--config")
        .arg(work.join("config.yml")));
    assert!(
        !log.contains("WARNING"),
        "the generator could not use part of the document:\n{log}"
    );

    std::fs::write(work.join("first.png"), png()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi_client.py");
    let out = run(Command::new(&python)
        .arg(script)
        .arg(&work)
        .arg(format!("http://{}", server.addr))
        .arg(work.join("first.png"))
        .arg(work.join("out")));
    let jobs: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.strip_prefix("job "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, id)| (k.to_string(), id.to_string()))
        .collect();
    assert_eq!(
        jobs.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["json", "multipart", "portrait"],
        "{out}"
    );
    for (kind, id) in &jobs {
        let ext = if kind == "portrait" { "png" } else { "mp4" };
        let file = format!("{id}.{ext}");
        let downloaded = std::fs::read(work.join("out").join(&file)).unwrap();
        let written = std::fs::read(server.dir.join(&file)).unwrap();
        assert!(
            downloaded == written,
            "{kind}: the client's {} bytes differ from the server's {}-byte {ext}",
            downloaded.len(),
            written.len()
        );
        if kind == "portrait" {
            let img =
                image::load_from_memory_with_format(&downloaded, image::ImageFormat::Png).unwrap();
            assert_eq!((img.width(), img.height()), (64, 48));
            continue;
        }
        assert_eq!(&downloaded[4..8], b"ftyp", "{kind}");
        let s = ffprobe(&work.join("out").join(&file));
        assert_eq!(s["nb_read_frames"], "9", "{kind}: {s}");
    }
    let _ = std::fs::remove_dir_all(&work);
}
