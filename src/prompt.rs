//! How a question is put to the model: the plain `Question: ...\nAnswer:\n` template (what SFT
//! trains on) or a few-shot prompt of solved training examples (for pretrained inits).

use crate::error::{Error, Result};
use crate::task::Problem;
use crate::tokenizer::Tokenizer;

/// Prompt settings (`[prompt]` in configs).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptConfig {
    /// "plain" or "few-shot". ("chat", through the tokenizer's chat template, is not built yet.)
    pub format: String,
    /// Solved examples in a few-shot prompt (taken from the start of the train split).
    pub shots: usize,
}

impl Default for PromptConfig {
    fn default() -> Self {
        PromptConfig { format: "plain".into(), shots: 4 }
    }
}

/// Turns questions into prompt text.
#[derive(Debug, Clone)]
pub struct Prompter {
    examples: Vec<Problem>,
}

impl Prompter {
    /// The plain template.
    pub fn plain() -> Self {
        Prompter { examples: Vec::new() }
    }

    /// From a config; few-shot examples come from `train` (the first `shots` problems).
    pub fn new(cfg: &PromptConfig, train: &[Problem]) -> Result<Self> {
        match cfg.format.as_str() {
            "plain" => Ok(Prompter::plain()),
            "few-shot" if cfg.shots <= train.len() => Ok(Prompter { examples: train[..cfg.shots].to_vec() }),
            "few-shot" => {
                Err(Error::Invalid(format!("prompt.shots = {} but the train split has {}", cfg.shots, train.len())))
            }
            other => Err(Error::Invalid(format!("prompt.format `{other}` is not supported (use plain or few-shot)"))),
        }
    }

    /// The prompt text for a question.
    pub fn text(&self, question: &str) -> String {
        let mut out = String::new();
        for e in &self.examples {
            out.push_str(&plain(&e.question));
            out.push_str(e.reference_solution.trim_end());
            out.push_str("\n\n");
        }
        out.push_str(&plain(question));
        out
    }

    /// Prompt token ids: BOS (if the tokenizer has one), then the text.
    pub fn encode(&self, tokenizer: &Tokenizer, question: &str) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = tokenizer.bos_id().into_iter().collect();
        ids.extend(tokenizer.encode(&self.text(question))?);
        Ok(ids)
    }

    /// Strings that end a response: a few-shot model goes on to invent the next question.
    pub fn stop_strings(&self) -> Vec<String> {
        if self.examples.is_empty() {
            Vec::new()
        } else {
            vec!["\n\n".into(), "Question:".into()]
        }
    }
}

/// The plain template.
pub fn plain(question: &str) -> String {
    format!("Question: {question}\nAnswer:\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{synth, Split};

    #[test]
    fn few_shot_prompt_format() {
        let ex = synth::generate(1, Split::Train, 2, 1);
        let q = "Tom has 3 pens. How many pens does Tom have?";
        let want = format!(
            "Question: {}\nAnswer:\n{}\n\nQuestion: {}\nAnswer:\n{}\n\nQuestion: {q}\nAnswer:\n",
            ex[0].question, ex[0].reference_solution, ex[1].question, ex[1].reference_solution
        );
        let cfg = PromptConfig { format: "few-shot".into(), shots: 2 };
        let prompter = Prompter::new(&cfg, &ex).unwrap();
        assert_eq!(prompter.text(q), want);
        assert_eq!(Prompter::plain().text(q), format!("Question: {q}\nAnswer:\n"));
        assert!(prompter.stop_strings().contains(&"Question:".to_string()));
        assert!(Prompter::new(&PromptConfig { shots: 3, ..cfg }, &ex).is_err());
    }
}
