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
    /// Passed to a chat template as `enable_thinking` (Qwen3: false opens the answer with an
    /// empty `<think></think>`); unset leaves the template's default (thinking on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_thinking: Option<bool>,
}

impl Default for PromptConfig {
    fn default() -> Self {
        PromptConfig {
            format: PromptFormat::Plain,
            instruction: String::new(),
            shots: 4,
            condition: String::new(),
            condition_every_step: false,
            enable_thinking: None,
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
    enable_thinking: Option<bool>,
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
                enable_thinking: cfg.enable_thinking,
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
                let bos = tokenizer.bos_id().and_then(|b| tokenizer.id_to_token(b));
                let text = render_chat(template, &messages, bos, self.enable_thinking)?;
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
/// opening of the assistant's turn (`add_generation_prompt`), as transformers does: Python's
/// string methods (`.strip()`, `.startswith()`, `.split()`), `raise_exception` and
/// `strftime_now` (Llama 3's "Today Date", in UTC) are there, and `enable_thinking` when set.
pub fn render_chat(
    template: &str,
    messages: &[(&str, String)],
    bos_token: Option<String>,
    enable_thinking: Option<bool>,
) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |format: String| strftime(&format, std::time::SystemTime::now()));
    let bad = |e: minijinja::Error| Error::Invalid(format!("chat template: {e}"));
    env.add_template("chat", template).map_err(bad)?;
    let messages: Vec<_> = messages.iter().map(|(role, content)| minijinja::context! { role, content }).collect();
    let mut ctx = std::collections::BTreeMap::from([
        ("messages", minijinja::Value::from_serialize(&messages)),
        ("add_generation_prompt", true.into()),
        ("bos_token", bos_token.unwrap_or_default().into()),
        ("eos_token", "".into()),
    ]);
    if let Some(on) = enable_thinking {
        ctx.insert("enable_thinking", on.into());
    }
    env.get_template("chat").and_then(|t| t.render(ctx)).map_err(bad)
}

/// `time` (UTC) formatted by the strftime codes chat templates use: %d %m %Y %y %b %B %a %A
/// %H %M %S %%; any other code is kept as written.
fn strftime(format: &str, time: std::time::SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let secs = time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days: days since 1970-01-01 to year, month, day.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    let (month_name, weekday) = (MONTHS[month as usize - 1], DAYS[days.rem_euclid(7) as usize]);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('H') => out.push_str(&format!("{:02}", rest / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rest / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rest % 60)),
            Some('%') => out.push('%'),
            Some(other) => out.extend(['%', other]),
            None => out.push('%'),
        }
    }
    out
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
            render_chat(template, &messages, None, None).unwrap(),
            "<|user|>2+2?\n<|assistant|>4\n<|user|>3+3?\n<|assistant|>"
        );
        let failing = "{{ raise_exception('roles must alternate') }}";
        assert!(render_chat(failing, &messages, None, None).unwrap_err().to_string().contains("roles must alternate"));
    }

    #[test]
    fn strftime_matches_python() {
        let at = |secs: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let all = "%d %b %Y %A %H:%M:%S %y %B %m %a %% %q";
        // Python: datetime.fromtimestamp(t, timezone.utc).strftime(...)
        assert_eq!(strftime(all, at(1_721_952_000)), "26 Jul 2024 Friday 00:00:00 24 July 07 Fri % %q");
        assert_eq!(strftime(all, at(951_825_600 + 3723)), "29 Feb 2000 Tuesday 13:02:03 00 February 02 Tue % %q");
    }

    /// What Llama 3.x and Qwen3 templates call: `strftime_now`, Python string methods, reversed
    /// slices, namespaces, and `enable_thinking` (defined only when set).
    #[test]
    fn chat_templates_get_what_llama3_and_qwen3_templates_call() {
        let llama = "{%- if strftime_now is defined %}{%- set date_string = strftime_now('%d %b %Y') %}{%- endif %}\
                     Today Date: {{ date_string }}|{{ messages[0]['content'] | trim }}";
        let messages = [("user", "  2+2?  ".to_string())];
        let today = strftime("%d %b %Y", std::time::SystemTime::now());
        assert_eq!(render_chat(llama, &messages, None, None).unwrap(), format!("Today Date: {today}|2+2?"));
        let qwen = "{%- set ns = namespace(last=-1) %}{%- for m in messages[::-1] %}\
                    {%- if ns.last < 0 and m.role == 'user' and not m.content.startswith('<tool') %}\
                    {%- set ns.last = loop.index0 %}{%- endif %}{%- endfor %}\
                    {%- for m in messages %}{{ m.content.split('</think>')[-1].lstrip('\n').rstrip() }};{%- endfor %}\
                    {{ ns.last }}{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>{%- endif %}";
        let turns = [
            ("user", "q1".to_string()),
            ("assistant", "<think>\nhm\n</think>\n\n4 ".to_string()),
            ("user", "q2".into()),
        ];
        assert_eq!(render_chat(qwen, &turns, None, None).unwrap(), "q1;4;q2;0");
        assert_eq!(render_chat(qwen, &turns, None, Some(true)).unwrap(), "q1;4;q2;0");
        assert_eq!(render_chat(qwen, &turns, None, Some(false)).unwrap(), "q1;4;q2;0<think>\n\n</think>");
    }
}
