//! The face service on the committed fixture graphs (`tests/fixtures/face/antelopev2`, whose
//! tiny detector finds the fixture portraits' faces and nothing in a black or flat image) and
//! on the demo family's graphs.

use std::path::{Path, PathBuf};

use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/face")
}

fn photo(name: &str) -> RgbImage {
    let bytes = std::fs::read(fixtures().join("images").join(name)).unwrap();
    ltx_face::decode_image(&bytes, 1 << 26).unwrap().into()
}

fn flat(w: usize, h: usize, v: u8) -> RgbImage {
    RgbImage {
        width: w,
        height: h,
        data: vec![v; w * h * 3],
    }
}

fn service(models: FaceModels) -> FaceService {
    FaceService::new(FaceSettings {
        models,
        options: AnalysisOptions::default(),
    })
}

fn fixture_service() -> FaceService {
    service(FaceModels::Folder(fixtures().join("antelopev2")))
}

/// The field and message of a `no_face` answer.
fn no_face(r: Result<AnalyzedFaces, ApiError>) -> (&'static str, String) {
    match r {
        Err(ApiError::NoFace { field, message }) => (field, message),
        Err(other) => panic!("not no_face: {other}"),
        Ok(a) => panic!("found {} face(s)", a.conditioning.faces_found),
    }
}

#[tokio::test]
async fn a_portrait_gives_its_embedding_and_keypoints_at_its_size() {
    let s = fixture_service();
    assert!(!s.is_open(), "opened lazily");
    let face = photo("portrait.png");
    let (w, h) = (face.width, face.height);
    let a = s.analyze(face.clone(), None, vec![]).await.unwrap();
    assert!(s.is_open());
    let c = &a.conditioning;
    assert_eq!(c.embedding.len(), 512);
    assert!(c.embedding.iter().all(|v| v.is_finite()));
    assert!(c.faces_found >= 1);
    assert_eq!((c.keypoints.width, c.keypoints.height), (w, h));
    assert!(a.seconds >= 0.0);
    // The same as the pipeline's own function on a directly opened analysis.
    let mut fa =
        FaceAnalysis::new(&fixtures().join("antelopev2"), AnalysisOptions::default()).unwrap();
    let direct = analyze_faces(&mut fa, &face, None, &[]).unwrap();
    assert_eq!(&direct, c);
}

#[tokio::test]
async fn no_face_names_the_image_it_is_missing_from() {
    let s = fixture_service();
    let (field, m) = no_face(s.analyze(flat(64, 48, 0), None, vec![]).await);
    assert_eq!(field, "face_image");
    assert!(m.contains("no face found in the face image"), "{m}");
    let (field, _) = no_face(s.analyze(photo("noface.png"), None, vec![]).await);
    assert_eq!(field, "face_image");
    let (field, m) = no_face(
        s.analyze(photo("portrait.png"), Some(flat(32, 32, 0)), vec![])
            .await,
    );
    assert_eq!(field, "pose_image");
    assert!(m.contains("the pose image"), "{m}");
    let (field, m) = no_face(
        s.analyze(
            photo("portrait.png"),
            None,
            vec![photo("portrait.png"), photo("noface.png")],
        )
        .await,
    );
    assert_eq!(field, "reference_images");
    assert!(m.contains("reference image 2"), "{m}");
}

#[tokio::test]
async fn degenerate_images_are_4xx_not_a_server_error() {
    let s = fixture_service();
    for (w, h) in [(1, 1), (2, 1000), (1000, 2), (3, 700), (640, 640)] {
        for v in [0, 255] {
            let (field, _) = no_face(s.analyze(flat(w, h, v), None, vec![]).await);
            assert_eq!(field, "face_image", "{w}x{h} of {v}");
        }
    }
    // Over 640:1 the detector's letterbox has a zero side (insightface's cv2.resize fails).
    let refused = |r: Result<AnalyzedFaces, ApiError>| match r {
        Err(ApiError::Invalid { field, message }) => (field, message),
        other => panic!("{:?}", other.map(|a| a.conditioning.faces_found)),
    };
    let (field, m) = refused(s.analyze(flat(1, 2000, 0), None, vec![]).await);
    assert_eq!(field, "face_image");
    assert!(m.contains("1x2000 is too narrow"), "{m}");
    let (field, _) = refused(
        s.analyze(photo("portrait.png"), Some(flat(2000, 1, 0)), vec![])
            .await,
    );
    assert_eq!(field, "pose_image");
    let (field, _) = refused(
        s.analyze(photo("portrait.png"), None, vec![flat(3000, 2, 9)])
            .await,
    );
    assert_eq!(field, "reference_images");
}

#[tokio::test]
async fn concurrent_requests_take_turns_and_agree() {
    let s = Arc::new(fixture_service());
    let one = s
        .analyze(photo("portrait.png"), None, vec![])
        .await
        .unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.analyze(photo("portrait.png"), None, vec![]).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().conditioning, one.conditioning);
    }
}

#[tokio::test]
async fn model_folder_problems_are_503_not_configured_with_the_reason() {
    let missing = PathBuf::from("/nonexistent/antelopev2");
    match service(FaceModels::Folder(missing))
        .analyze(flat(8, 8, 0), None, vec![])
        .await
    {
        Err(ApiError::NotConfigured(m)) => {
            assert!(m.contains("/nonexistent/antelopev2"), "{m}");
            assert!(m.contains("INSTANTID_FACE_MODELS"), "{m}");
        }
        other => panic!("{:?}", other.map(|a| a.conditioning.faces_found)),
    }
    let empty = std::env::temp_dir().join(format!("ltx-face-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let r = service(FaceModels::Folder(empty.clone()))
        .analyze(flat(8, 8, 0), None, vec![])
        .await;
    let _ = std::fs::remove_dir_all(&empty);
    assert!(
        matches!(r, Err(ApiError::NotConfigured(_))),
        "{:?}",
        r.err()
    );
    let reason = "INSTANTID_MODEL is set and INSTANTID_FACE_MODELS is not".to_string();
    match service(FaceModels::Missing {
        reason: reason.clone(),
    })
    .analyze(flat(8, 8, 0), None, vec![])
    .await
    {
        Err(ApiError::NotConfigured(m)) => assert_eq!(m, reason),
        other => panic!("{:?}", other.err()),
    }
    let bad = FaceService::new(FaceSettings {
        models: FaceModels::Folder(fixtures().join("antelopev2")),
        options: AnalysisOptions {
            det_size: 8,
            ..Default::default()
        },
    });
    match bad.analyze(flat(8, 8, 0), None, vec![]).await {
        Err(ApiError::NotConfigured(m)) => assert!(m.contains("det_size 8"), "{m}"),
        other => panic!("{:?}", other.err()),
    }
    assert!(!bad.is_open(), "a failed open is not kept");
}

#[tokio::test]
async fn the_demo_graphs_find_one_face_in_any_image() {
    let s = service(FaceModels::Demo);
    let a = s.analyze(flat(64, 64, 0), None, vec![]).await.unwrap();
    assert_eq!(a.conditioning.faces_found, 1);
    assert_eq!(a.conditioning.embedding.len(), 512);
}

#[test]
fn settings_come_from_the_instantid_config() {
    use clap::Parser;
    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        c: InstantIdConfig,
    }
    let parse = |args: &[&str]| {
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        P::try_parse_from(all).unwrap().c
    };
    let s = FaceService::from_config(&parse(&[])).unwrap();
    assert_eq!(s.settings().models, FaceModels::Demo);
    let dir = fixtures().join("antelopev2");
    let c = parse(&[
        "--instantid-face-models",
        dir.to_str().unwrap(),
        "--instantid-face-det-size",
        "320",
        "--instantid-face-det-thresh",
        "0.3",
        "--instantid-face-threads",
        "1",
    ]);
    let s = FaceService::from_config(&c).unwrap();
    assert_eq!(s.settings().models, FaceModels::Folder(dir));
    let o = s.settings().options;
    assert_eq!((o.det_size, o.det_thresh, o.session.threads), (320, 0.3, 1));
    let c = parse(&["--instantid-model", "/some/sdxl"]);
    assert!(matches!(
        FaceService::from_config(&c).unwrap().settings().models,
        FaceModels::Missing { .. }
    ));
    let c = parse(&["--instantid-face-device", "tpu"]);
    assert!(FaceService::from_config(&c).is_err());
}
