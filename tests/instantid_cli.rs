//! `ltx-i2v instantid` with the demo model: a PNG of the requested size, the same bytes for
//! the same seed; bad inputs refused, naming the flag, before any model loads.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_ltx-i2v");

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ltx-iid-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/face")
}

fn face_png(dir: &Path) -> PathBuf {
    let img = image::RgbImage::from_fn(72, 90, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 2) as u8, 60])
    });
    let p = dir.join("face.png");
    img.save(&p).unwrap();
    p
}

fn instantid(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("instantid")
        .args(["--device", "cpu"])
        .args(args)
        .env_remove("INSTANTID_MODEL")
        .env_remove("INSTANTID_CONTROLNET")
        .env_remove("INSTANTID_IP_ADAPTER")
        .env_remove("INSTANTID_FACE_MODELS")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_demo_writes_a_png_of_the_requested_size_the_same_for_the_same_seed() {
    let dir = tempdir("demo");
    let face = face_png(&dir);
    let run = |out: &Path, seed: &str| {
        let o = instantid(&[
            "--face-image",
            face.to_str().unwrap(),
            "--prompt",
            "a portrait",
            "--width",
            "64",
            "--height",
            "48",
            "--steps",
            "2",
            "--seed",
            seed,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("noise"), "the demo says so: {}", text(&o));
        std::fs::read(out).unwrap()
    };
    let a = run(&dir.join("a.png"), "3");
    let img = image::load_from_memory_with_format(&a, image::ImageFormat::Png).unwrap();
    assert_eq!((img.width(), img.height()), (64, 48));
    assert_eq!(run(&dir.join("b.png"), "3"), a, "same seed, other bytes");
    assert_ne!(run(&dir.join("c.png"), "4"), a, "another seed, same bytes");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_are_refused_naming_the_flag_before_loading() {
    let dir = tempdir("bad");
    let face = face_png(&dir);
    let face = face.to_str().unwrap();
    let out = dir.join("out.png");
    let out = out.to_str().unwrap();
    let noface = fixtures().join("images/noface.png");
    let models = fixtures().join("antelopev2");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--face-image", "/nonexistent/face.png", "-o", out],
            "--face-image",
        ),
        (
            vec!["--face-image", face, "--width", "63", "-o", out],
            "--width",
        ),
        (
            vec!["--face-image", face, "--steps", "0", "-o", out],
            "steps",
        ),
        (
            vec!["--face-image", face, "--scheduler", "PNDM", "-o", out],
            "--scheduler",
        ),
        (vec!["--face-image", face, "-o", "/tmp/x.jpg"], "PNG"),
        (
            vec!["--face-image", face, "-o", "/nonexistent/dir/x.png"],
            "does not exist",
        ),
        (
            vec!["--face-image", face, "--controlnet", "/tmp", "-o", out],
            "--controlnet",
        ),
        (
            vec!["--face-image", face, "--model", "/nonexistent", "-o", out],
            "--model",
        ),
        (
            vec![
                "--face-image",
                noface.to_str().unwrap(),
                "--face-models",
                models.to_str().unwrap(),
                "-o",
                out,
            ],
            "face",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["--prompt", "p"];
        all.extend(&args);
        let o = instantid(&all);
        let t = text(&o);
        assert!(!o.status.success(), "{args:?} succeeded: {t}");
        assert!(t.contains(needle), "{args:?}: {needle:?} not in {t}");
        assert!(
            !t.contains("loading InstantID"),
            "{args:?} loaded a model: {t}"
        );
        assert!(!Path::new(out).exists());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
