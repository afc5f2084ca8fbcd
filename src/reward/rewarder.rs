//! Which reward a run trains on (`[reward]`: a kind, its settings and weighted terms) and the
//! [`Rewarder`] that turns episodes into per-token rewards, asking the verifiers it started.

use super::verifier::{CommandVerifier, HttpVerifier, Reply, Request, Verifier};
use super::{heuristic_step_rewards, orm_step_rewards, sparse, split_steps, token_rewards, Orm, OrmDense};
use crate::error::{Error, Result};
use crate::rollout::Episode;
use crate::task::Problem;
use crate::tokenizer::Tokenizer;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tch::Device;

/// Which reward a policy is trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardKind {
    /// 1 for a right final answer, on the last token.
    Sparse,
    /// Sparse plus `dense_coef` per step whose intermediate result the reference also computes.
    Heuristic,
    /// Sparse plus `dense_coef` times the ORM's per-step reward.
    Orm,
    /// The `reward.command` verifier's reward on the last token, plus `dense_coef` times its
    /// `step_rewards` when it sends them.
    Command,
    /// The reward service's at `reward.url`, on the last token.
    Http,
}

/// Which reward the policy is trained on (`[reward]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardConfig {
    pub kind: RewardKind,
    pub dense_coef: f64,
    /// The ORM folder, for kind = "orm".
    pub orm: PathBuf,
    /// The ORM's per-step reward: its probability, or its change from the step before.
    pub orm_dense: OrmDense,
    /// The verifier's shell command line, for kind = "command" (e.g. `python3 my_verifier.py`);
    /// started once per run, its stderr in `RUN/reward-RANK.log`. The protocol is in
    /// `reward::verifier`.
    pub command: String,
    /// The reward service's URL, for kind = "http" (e.g. `http://127.0.0.1:5000/get_reward`).
    pub url: String,
    /// Samples per request batch, and the seconds a batch may take before the verifier is
    /// declared hung.
    pub batch_size: usize,
    pub timeout_s: f64,
    /// The service's batches in flight at once, and the retries of one after a failure to
    /// connect or a 5xx answer.
    pub concurrency: usize,
    pub retries: usize,
    /// With a verifier or terms, a solution counts as correct (EI's filter) when its outcome
    /// reward, terms included, reaches this.
    pub threshold: f64,
    /// More outcome rewards, each weighted and added to the last token's (TRL's reward_funcs
    /// and reward_weights), each logged as `reward/term/NAME`:
    /// `terms = [{ name = "format", weight = 0.1, kind = "command", command = "python3 format.py" }]`.
    /// A verifier term shares `[reward]`'s timeout, batch size, concurrency and retries.
    pub terms: Vec<RewardTerm>,
}

impl RewardConfig {
    /// The rules of a `[reward]` that judges whole solutions (EI, RCRL, the ORM, `eval`): no
    /// dense kind.
    pub fn check_outcome(&self, prefix: &str) -> std::result::Result<(), String> {
        self.check(prefix)?;
        match self.kind {
            RewardKind::Heuristic | RewardKind::Orm => {
                Err(format!("`{prefix}kind`: here a reward judges whole solutions: use sparse, command or http"))
            }
            _ => Ok(()),
        }
    }
}

/// One weighted term of the outcome reward.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardTerm {
    pub name: String,
    pub weight: f64,
    /// `sparse` (the built-in check), `command` or `http`.
    pub kind: RewardKind,
    pub command: String,
    pub url: String,
}

impl Default for RewardTerm {
    fn default() -> Self {
        RewardTerm {
            name: String::new(),
            weight: 1.0,
            kind: RewardKind::Sparse,
            command: String::new(),
            url: String::new(),
        }
    }
}

impl Default for RewardConfig {
    fn default() -> Self {
        RewardConfig {
            kind: RewardKind::Sparse,
            dense_coef: 0.1,
            orm: PathBuf::new(),
            orm_dense: OrmDense::Change,
            command: String::new(),
            url: String::new(),
            batch_size: 64,
            timeout_s: 60.0,
            concurrency: 4,
            retries: 2,
            threshold: 1.0,
            terms: Vec::new(),
        }
    }
}

impl RewardConfig {
    /// The rules `[reward]` must keep (`prefix`: where it sits in its config).
    pub fn check(&self, prefix: &str) -> std::result::Result<(), String> {
        if self.kind == RewardKind::Command && self.command.trim().is_empty() {
            return Err(format!("`{prefix}kind = \"command\"` needs `{prefix}command` (the verifier to start)"));
        }
        if self.kind == RewardKind::Http && !self.url.starts_with("http") {
            return Err(format!(
                "`{prefix}kind = \"http\"` needs `{prefix}url` (http://HOST:PORT/PATH), not `{}`",
                self.url
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, term) in self.terms.iter().enumerate() {
            let at = format!("{prefix}terms[{i}]");
            if term.name.is_empty() || !term.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
                return Err(format!("`{at}.name` = `{}`: give it a name of letters, digits, `-` and `_`", term.name));
            }
            if !names.insert(&term.name) {
                return Err(format!("`{at}.name`: two terms are `{}`", term.name));
            }
            if !term.weight.is_finite() {
                return Err(format!("`{at}.weight` must be a finite number"));
            }
            match term.kind {
                RewardKind::Sparse => {}
                RewardKind::Command if !term.command.trim().is_empty() => {}
                RewardKind::Http if term.url.starts_with("http") => {}
                RewardKind::Command => return Err(format!("`{at}` of kind command needs a `command`")),
                RewardKind::Http => return Err(format!("`{at}` of kind http needs a `url` (http://HOST:PORT/PATH)")),
                _ => return Err(format!("`{at}.kind`: a term is an outcome reward: sparse, command or http")),
            }
        }
        if self.batch_size == 0 || self.concurrency == 0 || self.timeout_s.is_nan() || self.timeout_s <= 0.0 {
            return Err(format!(
                "`{prefix}batch_size`, `{prefix}concurrency` and `{prefix}timeout_s` must be positive"
            ));
        }
        Ok(())
    }
}

/// A verifier's rewards of each step of a response, when it sends them.
type StepRewards = Option<Vec<f64>>;

/// Per-token rewards of a batch of episodes, and what the verifier measured (means).
pub struct Rewards {
    pub per_token: Vec<Vec<f32>>,
    pub metrics: BTreeMap<String, f64>,
}

/// Turns episodes into per-token rewards.
pub struct Rewarder {
    cfg: RewardConfig,
    orm: Option<Orm>,
    verifier: Option<Verifier>,
    /// The weighted terms and the verifiers of those that have one.
    terms: Vec<(RewardTerm, Option<Verifier>)>,
    newlines: Vec<u8>,
}

impl Rewarder {
    /// Loads the ORM or starts the verifier the reward needs; a verifier's stderr goes to
    /// `DIR/reward-RANK.log`.
    pub fn new(cfg: &RewardConfig, tokenizer: &Tokenizer, device: Device, dir: &Path) -> Result<Self> {
        let orm = match cfg.kind {
            RewardKind::Orm => Some(Orm::load(&cfg.orm, device)?),
            _ => None,
        };
        let start = |kind: RewardKind, command: &str, url: &str, log: &str| -> Result<Option<Verifier>> {
            let timeout = std::time::Duration::from_secs_f64(cfg.timeout_s);
            Ok(match kind {
                RewardKind::Command => {
                    let log = dir.join(format!("{log}-{}.log", crate::dist::world().rank));
                    Some(Verifier::Command(Mutex::new(CommandVerifier::start(command, &log, timeout, cfg.batch_size)?)))
                }
                RewardKind::Http => {
                    Some(Verifier::Http(HttpVerifier::new(url, timeout, cfg.batch_size, cfg.concurrency, cfg.retries)))
                }
                _ => None,
            })
        };
        let verifier = start(cfg.kind, &cfg.command, &cfg.url, "reward")?;
        let terms = cfg
            .terms
            .iter()
            .map(|t| Ok((t.clone(), start(t.kind, &t.command, &t.url, &format!("reward-{}", t.name))?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Rewarder { cfg: cfg.clone(), orm, verifier, terms, newlines: tokenizer.newline_counts()? })
    }

    /// Each episode's outcome reward (the built-in sparse one, or the verifier's, plus the
    /// weighted terms) and the verifier's per-step rewards, if it sent any. The verifiers'
    /// metrics and each term's mean go into `metrics`.
    fn outcomes(
        &self,
        tokenizer: &Tokenizer,
        episodes: &[Episode],
        problems: &HashMap<&str, &Problem>,
        metrics: &mut BTreeMap<String, f64>,
    ) -> Result<(Vec<f64>, Vec<StepRewards>)> {
        let mut requests = None;
        let mut ask = |verifier: &Verifier| -> Result<Vec<Reply>> {
            if requests.is_none() {
                requests = Some(verifier_requests(tokenizer, episodes, problems)?);
            }
            let replies = verifier.score(requests.as_ref().expect("just made"))?;
            for reply in &replies {
                for (name, value) in &reply.metrics {
                    *metrics.entry(format!("reward/{name}")).or_default() += value / replies.len() as f64;
                }
            }
            Ok(replies)
        };
        let (mut outcome, steps): (Vec<f64>, Vec<StepRewards>) = match &self.verifier {
            Some(verifier) => ask(verifier)?.into_iter().map(|r| (r.reward, r.step_rewards)).unzip(),
            None => episodes.iter().map(|e| (sparse(e), None)).unzip(),
        };
        let mut means = Vec::new();
        for (term, verifier) in &self.terms {
            let values: Vec<f64> = match verifier {
                Some(verifier) => ask(verifier)?.into_iter().map(|r| r.reward).collect(),
                None => episodes.iter().map(sparse).collect(),
            };
            means.push((format!("reward/term/{}", term.name), values.iter().sum::<f64>() / values.len().max(1) as f64));
            for (o, v) in outcome.iter_mut().zip(values) {
                *o += term.weight * v;
            }
        }
        metrics.extend(means);
        Ok((outcome, steps))
    }

    /// With a verifier or terms, their verdict replaces the built-in check: an episode is
    /// correct when its outcome reward reaches `reward.threshold`. Returns the mean outcome
    /// reward (`reward/mean`) and the verifiers' and terms' metrics; otherwise nothing changes
    /// and nothing is returned.
    pub fn judge(
        &self,
        tokenizer: &Tokenizer,
        episodes: &mut [Episode],
        problems: &HashMap<&str, &Problem>,
    ) -> Result<BTreeMap<String, f64>> {
        let mut metrics = BTreeMap::new();
        if self.verifier.is_none() && self.terms.is_empty() {
            return Ok(metrics);
        }
        let (outcome, _) = self.outcomes(tokenizer, episodes, problems, &mut metrics)?;
        for (e, &reward) in episodes.iter_mut().zip(&outcome) {
            e.correct = reward >= self.cfg.threshold;
        }
        metrics.insert("reward/mean".into(), outcome.iter().sum::<f64>() / outcome.len().max(1) as f64);
        Ok(metrics)
    }

    /// One reward per response token: the outcome reward (sparse, or the verifier's) on the last
    /// token, plus the dense rewards on the last token of each step.
    pub fn token_rewards(
        &self,
        tokenizer: &Tokenizer,
        episodes: &[Episode],
        problems: &HashMap<&str, &Problem>,
    ) -> Result<Rewards> {
        let problem = |e: &Episode| problems[e.problem_id.as_str()];
        let mut metrics = BTreeMap::new();
        let (outcome, step_rewards) = self.outcomes(tokenizer, episodes, problems, &mut metrics)?;
        let orm_probabilities = match &self.orm {
            Some(orm) => Some(orm.probabilities(episodes)?),
            None => None,
        };
        let per_token = episodes
            .iter()
            .enumerate()
            .map(|(n, e)| {
                let len = e.response_tokens.len();
                let dense = match (self.cfg.kind, &step_rewards[n]) {
                    (RewardKind::Sparse, _) | (RewardKind::Command | RewardKind::Http, None) => None,
                    _ => Some(split_steps(tokenizer, &self.newlines, &e.response_tokens)?),
                };
                let mut rewards = vec![0f32; len];
                if let Some(steps) = dense {
                    let dense: Vec<f64> = match (&orm_probabilities, &step_rewards[n]) {
                        (_, Some(given)) if given.len() != steps.len() => {
                            return Err(Error::reward(
                                format!("command `{}`", self.cfg.command),
                                format!(
                                    "sample `{}/{}`: {} step_rewards for a response of {} steps (lines)",
                                    e.problem_id,
                                    e.sample_index,
                                    given.len(),
                                    steps.len()
                                ),
                            ));
                        }
                        (_, Some(given)) => given.clone(),
                        (Some(p), None) => orm_step_rewards(&p[n], &steps, self.cfg.orm_dense),
                        (None, None) => {
                            let p = problem(e);
                            let texts: Vec<&str> = steps.iter().map(|s| s.text.as_str()).collect();
                            let mut r = heuristic_step_rewards(&texts, &p.reference_solution, &p.answer);
                            // The answer line's reward is the sparse one, paid below.
                            for (r, t) in r.iter_mut().zip(&texts) {
                                if t.contains("####") {
                                    *r = 0.0;
                                }
                            }
                            r
                        }
                    };
                    let scaled: Vec<f64> = dense.iter().map(|r| r * self.cfg.dense_coef).collect();
                    rewards = token_rewards(&steps, &scaled, len);
                }
                if let Some(last) = rewards.last_mut() {
                    *last += outcome[n] as f32;
                }
                Ok(rewards)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Rewards { per_token, metrics })
    }
}

/// What a verifier is asked about each episode.
fn verifier_requests(
    tokenizer: &Tokenizer,
    episodes: &[Episode],
    problems: &HashMap<&str, &Problem>,
) -> Result<Vec<Request>> {
    episodes
        .iter()
        .map(|e| {
            let p = problems.get(e.problem_id.as_str()).ok_or_else(|| {
                Error::Invalid(format!("episode of problem `{}`: the task has no such problem", e.problem_id))
            })?;
            Ok(Request {
                id: format!("{}/{}", e.problem_id, e.sample_index),
                question: p.question.clone(),
                prompt: tokenizer.decode(&e.prompt_tokens, true)?,
                response: e.text.clone(),
                extracted: e.extracted_answer.clone(),
                answer: p.answer.clone(),
                solution: p.reference_solution.clone(),
            })
        })
        .collect()
}
