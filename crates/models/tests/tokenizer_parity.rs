//! The T5 tokenizer against transformers 5 on prompts chosen to break tokenizers (empty,
//! punctuation, numbers, accents/NFKC/emoji, whitespace runs, unknown words, truncation), from
//! the folder as shipped with only `spiece.model` and from a `tokenizer.json`.

mod common;

use ltx_models::t5_tokenizer::T5Tokenizer;

fn check(dir: &std::path::Path) {
    let r = common::refs("tokenizer.safetensors");
    let meta = common::json("tokenizer.json");
    let prompts: Vec<&str> = meta["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let tok = T5Tokenizer::from_dir(dir, 128).unwrap();
    let got = tok.encode(&prompts).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let row = |t: &tch::Tensor| Vec::<i64>::try_from(t.get(i as i64)).unwrap();
        assert_eq!(
            row(&got.input_ids),
            row(&r["input_ids"]),
            "ids of prompt {i}: {p:?}"
        );
        assert_eq!(
            row(&got.attention_mask),
            row(&r["attention_mask"]),
            "mask of prompt {i}: {p:?}"
        );
    }
}

#[test]
fn ids_match_transformers_from_spiece_model() {
    let dir = common::model_dir("0.9.1").join("tokenizer");
    assert!(
        !dir.join("tokenizer.json").exists(),
        "this case must exercise the spiece.model path"
    );
    check(&dir);
}

#[test]
fn ids_match_transformers_from_tokenizer_json() {
    check(&common::fixtures().join("tokenizer"));
}
