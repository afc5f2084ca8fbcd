//! The `reasonrl` command line: parse, dispatch, report errors. The work lives in the library.

mod commands;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use reasonrl::prompt::PromptFormat;
use reasonrl::sample::Sampling;
use reasonrl::task::Split;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "reasonrl", version, about = "Teach language models to reason with reinforcement learning")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Math word problem data sets.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Create and inspect models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Sample solutions from a model and check their answers.
    Sample(SampleArgs),
    /// Pretrain a from-scratch model on a domain corpus (the "pretrained" init).
    Pretrain(RunArgs),
    /// Supervised fine-tuning on a task's reference solutions.
    Sft(RunArgs),
    /// Expert Iteration: sample, keep the correct solutions, fine-tune on them; for several rounds.
    Ei(RunArgs),
    /// Train an Outcome Reward Model on a policy's own solutions, labelled by final answer.
    Orm(RunArgs),
    /// Return-Conditioned RL: learn from [GOOD]/[BAD]-labelled solutions, sample as [GOOD].
    Rcrl(RunArgs),
    /// PPO: value head, GAE, clipped losses, KL penalty to the initial policy.
    Ppo(RunArgs),
    /// GRPO or RLOO: group-relative advantages, no critic.
    Grpo(GrpoArgs),
    /// The paper's comparison: a grid of runs, then report.md with the table, plots and findings.
    Study(ConfigArgs),
    /// Evaluate a model: maj@1, maj@k, pass@k, rerank@k, wmaj@k with 95% intervals.
    Eval(EvalArgs),
    /// Grade responses in a JSON-lines file against their reference answers with this checker.
    Grade(commands::GradeArgs),
    /// Line charts (PNG and SVG) from runs' metrics.jsonl.
    Plot(PlotArgs),
    /// Measure training and sampling throughput of the presets on this machine.
    Bench(BenchArgs),
    /// Run a command as N data-parallel ranks (torchrun's variables), e.g. `launch --nproc 2 -- sft
    /// --config configs/sft.toml`.
    Launch(LaunchArgs),
}

/// `reasonrl launch`: this node's ranks of a data-parallel run.
#[derive(Args)]
struct LaunchArgs {
    /// Ranks on this node (one per GPU, or a few on CPU).
    #[arg(long, default_value_t = 1)]
    nproc: usize,
    /// Nodes in the run; each runs `launch` with its own --node-rank.
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Address of node 0, where rank 0 holds the rendezvous store.
    #[arg(long, default_value = "127.0.0.1")]
    master_addr: String,
    /// Port of the rendezvous store (default: a free one; several nodes must name one).
    #[arg(long, default_value_t = 0)]
    master_port: u16,
    /// The reasonrl command each rank runs, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// A config file and overrides.
#[derive(Args)]
struct ConfigArgs {
    /// TOML config (see configs/); without one, the defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. --set train.lr=3e-4 --set run.name=try2 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Overwrite existing outputs.
    #[arg(long)]
    force: bool,
}

/// A training run: config, overrides, and how to treat an existing run folder.
#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Continue the run from its newest valid checkpoint.
    #[arg(long, conflicts_with = "force")]
    resume: bool,
}

/// `reasonrl eval`: a config and overrides, plus the reranking scorer.
#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Score samples (rerank@k, wmaj@k): `mean-logprob`, or `orm` with --orm.
    #[arg(long, value_enum)]
    scorer: Option<reasonrl::eval::run::ScorerKind>,
    /// The ORM folder of `--scorer orm`.
    #[arg(long)]
    orm: Option<PathBuf>,
}

/// `reasonrl grpo`: a run's arguments, plus the advantage estimator.
#[derive(Args)]
struct GrpoArgs {
    #[command(flatten)]
    run: RunArgs,
    /// grpo ((R - mean) / std in the group) or rloo (leave-one-out baseline).
    #[arg(long, value_enum)]
    estimator: Option<reasonrl::train::grpo::Estimator>,
}

#[derive(Args)]
struct PlotArgs {
    /// Run folders (each with a metrics.jsonl).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Metrics to draw, comma-separated (e.g. loss or eval/maj@1).
    #[arg(long, default_value = "loss", value_delimiter = ',')]
    metrics: Vec<String>,
    /// The x axis: step, samples_seen or tokens_seen.
    #[arg(long, default_value = "step")]
    x: String,
    /// Output path without extension; writes OUT.png and OUT.svg.
    #[arg(long)]
    out: PathBuf,
    /// Chart title.
    #[arg(long)]
    title: Option<String>,
    /// Logarithmic y axis.
    #[arg(long)]
    log_y: bool,
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Write a task's train and test splits as JSONL (GSM8K format plus an `id` field).
    Make {
        /// Task: builtin[:LEVEL[:SEED]], gsm8k:PATH, svamp:FILE, jsonl:FILE[:QFIELDS:AFIELD[:SFIELD]] (or json:) or
        /// math:FILE[:PFIELD:SFIELD] (KIND+skip: leaves out unusable records); a single file holds one split
        /// (train if its name says so, else test), a folder both (train.jsonl, test.jsonl).
        #[arg(long, default_value = "builtin")]
        task: String,
        /// Output folder; receives train.jsonl and test.jsonl.
        #[arg(long)]
        out: PathBuf,
        /// Problems in the train split (default: the task's own size).
        #[arg(long)]
        train: Option<usize>,
        /// Problems in the test split (default: the task's own size).
        #[arg(long)]
        test: Option<usize>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Create a fresh from-scratch model and a BPE tokenizer trained on a task's text.
    Init {
        /// Model size: tiny (~0.9M parameters), small (~4.7M) or medium (~24M).
        #[arg(long, default_value = "small")]
        preset: String,
        /// Task whose train split the tokenizer learns from.
        #[arg(long, default_value = "builtin")]
        task: String,
        /// Tokenizer vocabulary size (special tokens included).
        #[arg(long, default_value_t = 1024)]
        vocab_size: usize,
        /// Longest sequence (prompt + response) the model handles.
        #[arg(long, default_value_t = 512)]
        max_positions: i64,
        /// Seed of the weight initialisation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output model folder (Hugging Face layout).
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing folder.
        #[arg(long)]
        force: bool,
    },
    /// Convert a llama.cpp GGUF file (llama, qwen2, qwen3 or gemma3) into a Hugging Face model folder.
    ConvertGguf {
        /// The .gguf file.
        file: PathBuf,
        /// Output model folder.
        out: PathBuf,
        /// Replace an existing folder.
        #[arg(long)]
        force: bool,
    },
    /// Export a model folder as a llama.cpp GGUF file (Llama, Mistral, Qwen2, Qwen3 or Gemma 3).
    ExportGguf {
        /// Model folder (config.json, safetensors, tokenizer.json).
        dir: PathBuf,
        /// The .gguf file to write.
        out: PathBuf,
        /// How matrices are stored (norms stay f32).
        #[arg(long, value_enum, default_value = "f16")]
        dtype: reasonrl::model::gguf_export::GgufDtype,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Fold a LoRA adapter (PEFT folder) into its base model: a plain model folder, as
    /// PEFT's `merge_and_unload` writes.
    MergeLora {
        /// The base model folder.
        base: PathBuf,
        /// The adapter folder (adapter_config.json, adapter_model.safetensors).
        adapter: PathBuf,
        /// Output model folder.
        out: PathBuf,
        /// Replace an existing folder.
        #[arg(long)]
        force: bool,
    },
    /// Describe a model folder and check that its files agree.
    Info {
        /// Model folder (config.json, safetensors, tokenizer.json).
        path: PathBuf,
    },
}

#[derive(Args)]
struct SampleArgs {
    /// Model folder.
    #[arg(long)]
    model: PathBuf,
    /// Task to draw questions from.
    #[arg(long, default_value = "builtin")]
    task: String,
    /// Split to draw questions from.
    #[arg(long, value_enum, default_value = "test")]
    split: Split,
    /// Number of questions (the first N of the split).
    #[arg(long, default_value_t = 8)]
    limit: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Stop strings (repeatable); generation also stops at EOS and after a complete "#### N" line.
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The sampling copy's dtype, as `[rollout] dtype`: auto is bf16 for hidden size >= 512 on a
    /// CPU with AVX512-BF16.
    #[arg(long, value_enum, default_value = "auto")]
    sampling_dtype: reasonrl::engine::SamplingDtype,
    /// Write the episodes as JSONL here instead of printing a summary of each.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Overwrite an existing output file.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Presets to measure, comma-separated.
    #[arg(long, default_value = "tiny,small,medium", value_delimiter = ',')]
    presets: Vec<String>,
    /// Measure this model folder instead of the presets.
    #[arg(long)]
    model: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Parameter type: of training, and of sampling unless `--sampling-dtype` picks another.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: BenchDtype,
    /// The sampling copy's dtype, as `[rollout] dtype`: auto is bf16 for hidden size >= 512 on a
    /// CPU with AVX512-BF16.
    #[arg(long, value_enum, default_value = "auto")]
    sampling_dtype: reasonrl::engine::SamplingDtype,
    /// Timed training steps per preset.
    #[arg(long, default_value_t = 5)]
    train_steps: usize,
    /// Sampling batch sizes, comma-separated.
    #[arg(long, default_value = "16,64", value_delimiter = ',')]
    sample_batches: Vec<usize>,
    /// New tokens per sampled row.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// `fixed`: random prompts, every row runs to --new-tokens (the sampler's best case);
    /// `eval`: -k samples of each of --problems test problems with real prompts and early stops.
    #[arg(long, value_enum, default_value = "fixed")]
    workload: Workload,
    /// Task of the eval workload (its test split).
    #[arg(long, default_value = "builtin:1")]
    task: String,
    /// Problems of the eval workload.
    #[arg(long, default_value_t = 256)]
    problems: usize,
    /// How the eval workload samples.
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Prompt format of the eval workload (see configs/eval.toml).
    #[arg(long, value_enum, default_value = "plain")]
    prompt: PromptFormat,
    /// Where the eval workload samples: `local` (this process) or `openai` (a server at
    /// --base-url; needs --model).
    #[arg(long, value_enum, default_value = "local")]
    engine: BenchEngine,
    /// OpenAI-compatible servers of `--engine openai`, comma-separated.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_delimiter = ',')]
    base_url: Vec<String>,
    /// Start each server with this command (as `[rollout] command`: `{gguf}`, `{hf_dir}`,
    /// `{host}`, `{port}`) serving --model, and stop it at the end; without it the servers must
    /// already serve --model.
    #[arg(long)]
    engine_command: Option<String>,
    /// Requests in flight at once with `--engine openai`.
    #[arg(long, default_value_t = 64)]
    max_concurrency: usize,
    /// Write the eval workload's prompts (token ids, a JSON array per line) here, so another
    /// sampler can be timed on the same ones (scripts/bench-vs-pytorch.sh).
    #[arg(long)]
    prompts_out: Option<PathBuf>,
}

/// The sampling flags of `sample` and `bench`: `[sampling]`'s keys, with its defaults.
#[derive(Args)]
struct SamplingArgs {
    /// K: samples per prompt.
    #[arg(short = 'k', long, default_value_t = Sampling::default().samples_per_prompt)]
    samples_per_prompt: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = Sampling::default().temperature, allow_negative_numbers = true)]
    temperature: f64,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = Sampling::default().top_p)]
    top_p: f64,
    /// Maximum new tokens per solution.
    #[arg(long, default_value_t = Sampling::default().max_new_tokens)]
    max_new_tokens: usize,
    /// Rows decoded together.
    #[arg(long, default_value_t = Sampling::default().batch_size)]
    batch_size: usize,
}

impl SamplingArgs {
    /// The flags as a sampling spec, range-checked, a bad value named by its flag.
    fn spec(&self) -> Result<Sampling> {
        let spec = Sampling {
            samples_per_prompt: self.samples_per_prompt,
            temperature: self.temperature,
            top_p: self.top_p,
            max_new_tokens: self.max_new_tokens,
            batch_size: self.batch_size,
        };
        spec.check("--", 1).map_err(|e| anyhow::anyhow!(e.replace('_', "-")))?;
        Ok(spec)
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum BenchDtype {
    F32,
    Bf16,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum BenchEngine {
    Local,
    Openai,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Workload {
    Fixed,
    Eval,
}

fn main() {
    keep_freed_memory();
    if let Err(err) = run(Cli::parse()) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

/// glibc hands large freed blocks back to the kernel, so each training step's activations came
/// back as fresh zeroed pages (page faults were ~5% of a step). Keep them in the heap instead, as
/// PyTorch's CPU tuning guide gets with jemalloc or tcmalloc.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

fn run(cli: Cli) -> Result<()> {
    reasonrl::progress::install_ctrl_c()?;
    if let Command::Launch(args) = cli.command {
        let launch = reasonrl::launch::Launch {
            nproc: args.nproc,
            nnodes: args.nnodes,
            node_rank: args.node_rank,
            master_addr: args.master_addr,
            master_port: args.master_port,
        };
        std::process::exit(launch.run(&args.command)?);
    }
    let world = reasonrl::dist::init_from_env()?;
    match cli.command {
        Command::Task(cmd) => commands::task(cmd)?,
        Command::Model(cmd) => commands::model(cmd)?,
        Command::Sample(args) => commands::sample(args)?,
        Command::Pretrain(args) => {
            let cfg: reasonrl::train::pretrain::PretrainConfig = load_config(&args.config)?;
            let out = reasonrl::train::pretrain::run(&cfg, args.resume, args.config.force)?;
            println!("pretrained model saved to {}", out.display());
        }
        Command::Sft(args) => {
            let cfg: reasonrl::train::sft::SftConfig = load_config(&args.config)?;
            let out = reasonrl::train::sft::run(&cfg, args.resume, args.config.force)?;
            println!(
                "fine-tuned model saved to {} (best by validation maj@1 in {})",
                out.display(),
                cfg.common.run.dir().join("best").display()
            );
        }
        Command::Ei(args) => {
            let cfg: reasonrl::train::ei::EiConfig = load_config(&args.config)?;
            let out = reasonrl::train::ei::run(&cfg, args.resume, args.config.force)?;
            println!("expert-iteration policy saved to {}", out.display());
        }
        Command::Orm(args) => {
            let cfg: reasonrl::train::orm::OrmConfig = load_config(&args.config)?;
            let out = reasonrl::train::orm::run(&cfg, args.resume, args.config.force)?;
            println!(
                "outcome reward model saved to {} (best by held-out AUROC in {})",
                out.display(),
                cfg.common.run.dir().join("best").display()
            );
        }
        Command::Rcrl(args) => {
            let cfg: reasonrl::train::rcrl::RcrlConfig = load_config(&args.config)?;
            let out = reasonrl::train::rcrl::run(&cfg, args.resume, args.config.force)?;
            println!("return-conditioned policy saved to {} (sample it with prompt.condition=[GOOD])", out.display());
        }
        Command::Ppo(args) => {
            let cfg: reasonrl::train::ppo::PpoConfig = load_config(&args.config)?;
            let out = reasonrl::train::ppo::run(&cfg, args.resume, args.config.force)?;
            println!("PPO policy saved to {}", out.display());
        }
        Command::Grpo(args) => {
            let mut cfg: reasonrl::train::grpo::GrpoConfig = load_config(&args.run.config)?;
            if let Some(estimator) = args.estimator {
                cfg.estimator = estimator;
            }
            let out = reasonrl::train::grpo::run(&cfg, args.run.resume, args.run.config.force)?;
            println!("{:?} policy saved to {}", cfg.estimator, out.display());
        }
        Command::Study(args) => commands::study(&args)?,
        Command::Eval(args) => {
            let mut cfg: reasonrl::eval::run::EvalConfig = load_config(&args.config)?;
            if let Some(orm) = args.orm {
                cfg.orm = orm;
                cfg.scorer = reasonrl::eval::run::ScorerKind::Orm;
            }
            if let Some(scorer) = args.scorer {
                cfg.scorer = scorer;
            }
            reasonrl::eval::run::run(&cfg, args.config.force)?;
        }
        Command::Grade(args) => commands::grade(&args)?,
        Command::Plot(args) => {
            let request = reasonrl::plot::PlotRequest {
                runs: args.runs,
                metrics: args.metrics,
                x: args.x,
                out: args.out,
                title: args.title,
                log_y: args.log_y,
            };
            for path in reasonrl::plot::plot(&request)? {
                println!("wrote {}", path.display());
            }
        }
        Command::Bench(args) => commands::run_bench(args)?,
        Command::Launch(_) => unreachable!("handled above"),
    }
    world.barrier()?; // no rank leaves while rank 0 still writes what all of them made
    Ok(())
}

fn load_config<T: reasonrl::config::Config>(args: &ConfigArgs) -> Result<T> {
    Ok(reasonrl::config::load(args.config.as_deref(), &args.set)?)
}
