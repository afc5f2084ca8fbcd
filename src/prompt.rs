//! How a question is put to the model: the plain `Question: ...\nAnswer:\n` template (what SFT
//! trains on) or a few-shot prompt of solved training examples (for pretrained inits).

use crate::error::{Error, Result};
use crate::task::Problem;
use crate::tokenizer::Tokenizer;

/// How a question is put to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PromptFormat {
    /// "Question: ...\nAnswer:\n".
    #[default]
    Plain,
    /// Solved examples first.
    FewShot,
    /// The tokenizer's chat template, as instruct models were trained; with `shots`, the
    /// examples are earlier user/assistant turns.
    Chat,
}

/// Prompt settings (`[prompt]` in configs).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptConfig {
    pub format: PromptFormat,
    /// Text after the question in a chat prompt, e.g. how to state the answer ("" for none).
    pub instruction: String,
    /// Solved examples in a few-shot prompt (taken from the start of the train split).
    pub shots: usize,
    /// A control token that opens the response, e.g. "[GOOD]" to sample a return-conditioned
    /// (RCRL) model as a good solver; "" for none.
    pub condition: String,
    /// Open every line (step) of the response with the control token too (per-step RCRL).
    pub condition_every_step: bool,
}

impl Default for PromptConfig {
    fn default() -> Self {
        PromptConfig {
            format: PromptFormat::Plain,
            instruction: String::new(),
            shots: 4,
            condition: String::new(),
            condition_every_step: false,
        }
    }
}

/// Turns questions into prompts.
#[derive(Debug, Clone, Default)]
pub struct Prompter {
    examples: Vec<Problem>,
    /// Render through the tokenizer's chat template, with this instruction after the question.
    chat: Option<String>,
    condition: Option<String>,
    condition_every_step: bool,
}

impl Prompter {
    /// The plain template.
    pub fn plain() -> Self {
        Prompter::default()
    }

    /// From a config; few-shot examples come from `train` (the first `shots` problems).
    /// The prompter of `cfg` for a task, loading its train split only when the format shows
    /// solved examples (so a plain prompt works on a one-file test set too).
    pub fn for_task(cfg: &PromptConfig, task: &crate::task::TaskSpec) -> Result<Self> {
        let shots = if cfg.format == PromptFormat::Plain { 0 } else { cfg.shots };
        let train = if shots > 0 { task.load(crate::task::Split::Train, Some(shots))? } else { Vec::new() };
        Self::new(cfg, &train)
    }

    pub fn new(cfg: &PromptConfig, train: &[Problem]) -> Result<Self> {
        let mut prompter = Prompter::plain();
        if !cfg.condition.is_empty() {
            prompter = prompter.conditioned(&cfg.condition, cfg.condition_every_step);
        }
        match cfg.format {
            PromptFormat::Plain => Ok(prompter),
            PromptFormat::FewShot if cfg.shots <= train.len() => {
                Ok(Prompter { examples: train[..cfg.shots].to_vec(), ..prompter })
            }
            PromptFormat::Chat if cfg.shots == 0 || cfg.shots <= train.len() => Ok(Prompter {
                examples: train[..cfg.shots.min(train.len())].to_vec(),
                chat: Some(cfg.instruction.clone()),
                ..prompter
            }),
            PromptFormat::FewShot | PromptFormat::Chat => {
                Err(Error::Invalid(format!("prompt.shots = {} but the train split has {}", cfg.shots, train.len())))
            }
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

    /// The same prompts, with the response opened by the control token `token` (and, with
    /// `every_step`, each of its lines too).
    pub fn conditioned(self, token: &str, every_step: bool) -> Self {
        Prompter { condition: Some(token.to_string()), condition_every_step: every_step, ..self }
    }

    /// Without a control token.
    pub fn unconditioned(self) -> Self {
        Prompter { condition: None, condition_every_step: false, ..self }
    }

    /// Prompt token ids: BOS (if the tokenizer has one), the text, then the control token. A
    /// chat prompt is the rendered template alone (templates write their own BOS).
    pub fn encode(&self, tokenizer: &Tokenizer, question: &str) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = Vec::new();
        match &self.chat {
            Some(instruction) => {
                let template = tokenizer.chat_template().ok_or_else(|| {
                    Error::Invalid("prompt.format = \"chat\" but the tokenizer has no chat template".into())
                })?;
                let user =
                    |q: &str| if instruction.is_empty() { q.to_string() } else { format!("{q}\n\n{instruction}") };
                let mut messages = Vec::new();
                for e in &self.examples {
                    messages.push(("user", user(&e.question)));
                    messages.push(("assistant", e.reference_solution.trim_end().to_string()));
                }
                messages.push(("user", user(question)));
                let text = render_chat(template, &messages, tokenizer.bos_id().and_then(|b| tokenizer.id_to_token(b)))?;
                ids.extend(tokenizer.encode(&text)?);
            }
            None => {
                ids.extend(tokenizer.bos_id());
                ids.extend(tokenizer.encode(&self.text(question))?);
            }
        }
        ids.extend(self.condition_id(tokenizer)?);
        Ok(ids)
    }

    /// The control token to feed at the start of every new response line, if any.
    pub fn step_condition(&self, tokenizer: &Tokenizer) -> Result<Option<u32>> {
        if self.condition_every_step {
            self.condition_id(tokenizer)
        } else {
            Ok(None)
        }
    }

    fn condition_id(&self, tokenizer: &Tokenizer) -> Result<Option<u32>> {
        self.condition
            .as_deref()
            .map(|token| {
                tokenizer.token_to_id(token).ok_or_else(|| {
                    Error::Invalid(format!(
                        "prompt.condition: the tokenizer has no token `{token}` (not an RCRL model?)"
                    ))
                })
            })
            .transpose()
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

/// Renders a Hugging Face chat template (Jinja) for `messages` (role, content), ending with the
/// opening of the assistant's turn (`add_generation_prompt`).
pub fn render_chat(template: &str, messages: &[(&str, String)], bos_token: Option<String>) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    let bad = |e: minijinja::Error| Error::Invalid(format!("chat template: {e}"));
    env.add_template("chat", template).map_err(bad)?;
    let messages: Vec<_> = messages.iter().map(|(role, content)| minijinja::context! { role, content }).collect();
    let ctx = minijinja::context! {
        messages, add_generation_prompt => true, bos_token => bos_token.unwrap_or_default(), eos_token => "",
    };
    env.get_template("chat").and_then(|t| t.render(ctx)).map_err(bad)
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
        let cfg = PromptConfig { format: PromptFormat::FewShot, shots: 2, ..PromptConfig::default() };
        let prompter = Prompter::new(&cfg, &ex).unwrap();
        assert_eq!(prompter.text(q), want);
        assert_eq!(Prompter::plain().text(q), format!("Question: {q}\nAnswer:\n"));
        assert!(prompter.stop_strings().contains(&"Question:".to_string()));
        assert!(Prompter::new(&PromptConfig { shots: 3, ..cfg }, &ex).is_err());
    }

    #[test]
    fn a_plain_prompt_needs_no_train_split() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("asdiv.jsonl");
        std::fs::write(&file, "{\"question\": \"Q?\", \"answer\": 3}\n").unwrap();
        let task = crate::task::TaskSpec::parse(&format!("jsonl:{}", file.display())).unwrap();
        Prompter::for_task(&PromptConfig { format: PromptFormat::Plain, ..PromptConfig::default() }, &task).unwrap();
        let few_shot = PromptConfig { format: PromptFormat::FewShot, shots: 2, ..PromptConfig::default() };
        let err = Prompter::for_task(&few_shot, &task).unwrap_err().to_string();
        assert!(err.contains("asdiv.jsonl") && err.contains("test split"), "{err}");
    }

    #[test]
    fn chat_templates_render_turns_and_the_generation_prompt() {
        let template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m.content }}\n{% endfor %}\
                        {% if add_generation_prompt %}<|assistant|>{% endif %}";
        let messages = [("user", "2+2?".to_string()), ("assistant", "4".to_string()), ("user", "3+3?".to_string())];
        assert_eq!(
            render_chat(template, &messages, None).unwrap(),
            "<|user|>2+2?\n<|assistant|>4\n<|user|>3+3?\n<|assistant|>"
        );
        let failing = "{{ raise_exception('roles must alternate') }}";
        assert!(render_chat(failing, &messages, None).unwrap_err().to_string().contains("roles must alternate"));
    }
}
