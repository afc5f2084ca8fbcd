//! The bodies of the commands that are not a single library call: `task`, `model`, `sample`,
//! `grade` and `bench`.

use crate::{
    load_config, BenchArgs, BenchDtype, BenchEngine, ConfigArgs, ModelCommand, SampleArgs, TaskCommand, Workload,
};
use anyhow::{bail, Context, Result};
use clap::Args;
use reasonrl::engine::{Engine, EngineKind, RolloutConfig, SyncMode};
use reasonrl::model::{presets, CausalLm};
use reasonrl::rollout::{rollout_with, Episode};
use reasonrl::task::{Split, TaskSpec};
use reasonrl::{bench, fsutil, parse_device};
use std::path::PathBuf;

/// `reasonrl study`: runs what is not done yet, then prints the table and where the report is.
pub fn study(args: &ConfigArgs) -> Result<()> {
    if args.force {
        bail!("study: --force is not supported; delete the study folder to start over");
    }
    let cfg: reasonrl::study::StudyConfig = load_config(args)?;
    let outcome = reasonrl::study::run(&cfg, &reasonrl::config::to_toml(&cfg))?;
    println!("{}", outcome.table);
    println!(
        "report: {} ({} jobs run, {} already done, {} failed)",
        outcome.report.display(),
        outcome.done,
        outcome.skipped,
        outcome.failed
    );
    if outcome.interrupted {
        bail!("interrupted: rerun the same command to continue where it stopped");
    }
    if outcome.failed > 0 {
        bail!("{} jobs failed (see the report); rerunning retries them", outcome.failed);
    }
    Ok(())
}

/// `reasonrl task ...`.
pub fn task(cmd: TaskCommand) -> Result<()> {
    match cmd {
        TaskCommand::Make { task, out, train, test, force } => {
            let spec = TaskSpec::parse(&task)?;
            let path = |split: Split| out.join(format!("{split}.jsonl"));
            let splits = spec.splits();
            for &split in &splits {
                fsutil::check_overwrite(&path(split), force)?; // all, before writing any
            }
            if splits.len() == 1 {
                println!("{task} is one file, which holds the {} split only", splits[0]);
            }
            for split in splits {
                let limit = if split == Split::Train { train } else { test };
                let problems = spec.load(split, limit)?;
                let path = path(split);
                reasonrl::task::write_jsonl(&path, &problems, force)?;
                println!("wrote {} {split} problems to {}", problems.len(), path.display());
            }
        }
    }
    Ok(())
}

/// `reasonrl model ...`.
pub fn model(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Init { preset, task, vocab_size, max_positions, seed, out, force } => {
            fsutil::check_overwrite(&out, force)?;
            let problems = TaskSpec::parse(&task)?.load(Split::Train, None)?;
            let corpus =
                problems.iter().map(|p| format!("{}\n{}", reasonrl::prompt::plain(&p.question), p.reference_solution));
            let (model, tokenizer) =
                presets::init_from_scratch(&preset, corpus, vocab_size, max_positions, seed, tch::Device::Cpu)?;
            model.save_with_tokenizer(&tokenizer, &out, force)?;
            println!(
                "initialised preset `{preset}`: {} parameters, {} tokens, saved to {}",
                model.num_parameters(),
                tokenizer.vocab_size(),
                out.display()
            );
        }
        ModelCommand::MergeLora { base, adapter, out, force } => {
            let model = CausalLm::load_adapter(&base, &adapter, tch::Device::Cpu, false)?;
            let tokenizer_dir = if adapter.join("tokenizer.json").exists() { &adapter } else { &base };
            let tokenizer = reasonrl::tokenizer::Tokenizer::load(tokenizer_dir)?;
            model.merged()?.save_with_tokenizer(&tokenizer, &out, force)?;
            let adapters = model.lora.as_ref().map_or(0, |l| l.config.target_modules.len())
                * model.config().num_hidden_layers as usize;
            println!(
                "merged {} adapters of {} into {}, saved to {}",
                adapters,
                adapter.display(),
                base.display(),
                out.display()
            );
        }
        ModelCommand::ExportGguf { dir, out, dtype, force } => {
            reasonrl::model::gguf_export::export_dir(&dir, &out, dtype, force)?;
            println!("exported {} to {} ({dtype:?})", dir.display(), out.display());
        }
        ModelCommand::ConvertGguf { file, out, force } => {
            let config = reasonrl::model::gguf_import::convert(&file, &out, force)?;
            println!(
                "converted {} ({} layers, hidden {}, vocabulary {}) to {}",
                file.display(),
                config.num_hidden_layers,
                config.hidden_size,
                config.vocab_size,
                out.display()
            );
            info(&out)?;
        }
        ModelCommand::Info { path } => info(&path)?,
    }
    Ok(())
}

pub fn info(path: &std::path::Path) -> Result<()> {
    let (model, tokenizer) = CausalLm::load_with_tokenizer(path, tch::Device::Cpu, false)?;
    let c = model.config();
    let name = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i)).unwrap_or_else(|| "-".into());
    println!("model        {}", path.display());
    println!("architecture {} ({})", c.architectures[0], c.model_type);
    println!("parameters   {}", model.num_parameters());
    println!(
        "shape        {} layers, hidden {}, mlp {}, {} heads / {} kv heads of {}",
        c.num_hidden_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_attention_heads,
        c.kv_heads(),
        c.head_dim()
    );
    let scaling = match c.rope_scaling().map_err(anyhow::Error::msg)? {
        reasonrl::model::config::RopeScaling::Default => String::new(),
        reasonrl::model::config::RopeScaling::Linear { factor } => format!(", linear scaling x{factor}"),
        reasonrl::model::config::RopeScaling::Llama3 { factor, original_max_position_embeddings: from, .. } => {
            format!(", Llama 3 scaling x{factor} from {from} positions")
        }
    };
    println!("positions    {} (rope theta {}{scaling})", c.max_position_embeddings, c.rope_theta);
    println!("vocabulary   {} embeddings, {} tokenizer tokens", c.vocab_size, tokenizer.vocab_size());
    println!(
        "special      bos {} eos {} pad {}",
        name(tokenizer.bos_id()),
        name(Some(tokenizer.eos_id())),
        name(Some(tokenizer.pad_id()))
    );
    println!("tied         {}", c.tie_word_embeddings);
    println!("scalar head  {}", if model.has_head() { "yes" } else { "no" });
    if let Some(lora) = &model.lora {
        let modules: Vec<&str> = lora.config.target_modules.iter().map(|t| t.name()).collect();
        let trained: i64 =
            model.vs.variables().iter().filter(|(n, _)| model.trains(n)).map(|(_, t)| t.numel() as i64).sum();
        println!(
            "lora         r {} alpha {} on {} ({trained} trained parameters) over {}",
            lora.config.rank,
            lora.config.alpha,
            modules.join(","),
            lora.base.display()
        );
    }
    println!("chat         {}", if tokenizer.chat_template().is_some() { "template" } else { "none" });
    Ok(())
}

pub fn sample(args: SampleArgs) -> Result<()> {
    let spec = args.sampling.spec()?;
    if let Some(out) = &args.out {
        fsutil::check_overwrite(out, args.force)?;
    }
    let device = parse_device(&args.device)?;
    let (model, tokenizer) = CausalLm::load_with_tokenizer(&args.model, device, false)?;
    let problems = TaskSpec::parse(&args.task)?.load(args.split, Some(args.limit))?;
    let cfg = reasonrl::sample::SamplingConfig { stop_strings: args.stop, ..spec.with_seed(args.seed) };
    let start = std::time::Instant::now();
    let engine = Engine::Local(args.sampling_dtype);
    let episodes = rollout_with(&engine, &model, &tokenizer, &reasonrl::prompt::Prompter::plain(), &problems, &cfg)?;
    let seconds = start.elapsed().as_secs_f64();
    let tokens: usize = episodes.iter().map(|e| e.response_tokens.len()).sum();
    let correct = episodes.iter().filter(|e| e.correct).count();
    match &args.out {
        Some(out) => {
            fsutil::write_jsonl(out, &episodes)?;
            println!("wrote {} samples to {}", episodes.len(), out.display());
        }
        None => episodes.iter().for_each(print_episode),
    }
    println!(
        "{correct}/{} correct; {tokens} tokens in {seconds:.1}s ({:.0} tokens/s)",
        episodes.len(),
        tokens as f64 / seconds
    );
    Ok(())
}

fn print_episode(e: &Episode) {
    let mark = if e.correct { "correct" } else { "wrong" };
    println!(
        "--- {} #{} ({mark}; answer {}, reference {})",
        e.problem_id,
        e.sample_index,
        e.extracted_answer.as_deref().unwrap_or("none"),
        e.reference_answer
    );
    println!("{}", e.text.trim_end());
}

/// The presets' tokenizer in `bench`: 1,024 BPE tokens trained on the task's train split.
fn bench_tokenizer(spec: &TaskSpec) -> Result<reasonrl::tokenizer::Tokenizer> {
    let problems = spec.load(Split::Train, Some(2000))?;
    let corpus = problems.iter().map(|p| format!("{}\n{}", p.question, p.reference_solution));
    Ok(reasonrl::tokenizer::Tokenizer::train_bpe(corpus, 1024)?)
}

/// `bench --workload eval`: one realistic rollout per model.
fn run_bench_workload(args: BenchArgs, device: tch::Device, kind: tch::Kind) -> Result<()> {
    let spec = TaskSpec::parse(&args.task)?;
    let problems = spec.load(Split::Test, Some(args.problems))?;
    let prompt = reasonrl::prompt::PromptConfig { format: args.prompt, ..Default::default() };
    let prompter = reasonrl::prompt::Prompter::for_task(&prompt, &spec)?;
    let spec_sampling = args.sampling.spec()?;
    let sampling = spec_sampling.with_seed(0);
    let models: Vec<(String, CausalLm, reasonrl::tokenizer::Tokenizer)> = match &args.model {
        Some(dir) => vec![(
            dir.display().to_string(),
            CausalLm::load(dir, device, false)?,
            reasonrl::tokenizer::Tokenizer::load(dir)?,
        )],
        None => {
            eprintln!(
                "note: presets have random weights, so rows rarely stop early; pass --model for a trained policy"
            );
            let tokenizer = bench_tokenizer(&spec)?;
            let mut models = Vec::new();
            for preset in &args.presets {
                let config = reasonrl::model::presets::preset(preset, tokenizer.vocab_size() as i64, 1024)?;
                models.push((preset.clone(), CausalLm::new(&config, device, false)?, tokenizer.clone()));
            }
            models
        }
    };
    if let Some(path) = &args.prompts_out {
        let (_, _, tokenizer) = &models[0];
        let lines = problems.iter().map(|p| prompter.encode(tokenizer, &p.question)).collect::<Result<Vec<_>, _>>()?;
        fsutil::write_jsonl(path, &lines)?;
    }
    let on = match args.engine {
        BenchEngine::Local => format!("device {device:?}"),
        BenchEngine::Openai => format!("engine {}", args.base_url.join(", ")),
    };
    println!(
        "{on}, dtype {:?} (sampling {:?}), threads {}; {} problems x {} samples of {}, temperature {}, batch {}",
        args.dtype,
        args.sampling_dtype,
        tch::get_num_threads(),
        problems.len(),
        spec_sampling.samples_per_prompt,
        args.task,
        spec_sampling.temperature,
        spec_sampling.batch_size
    );
    println!(
        "{:<24} {:>9} {:>10} {:>8} {:>10} {:>10} {:>11} {:>9} {:>9}",
        "model", "samples", "new tok", "s", "tok/s", "samples/s", "problems/s", "early", "correct"
    );
    let engine_dir = tempfile::tempdir()?;
    let rollout = match args.engine {
        BenchEngine::Local => RolloutConfig { dtype: args.sampling_dtype, ..RolloutConfig::default() },
        BenchEngine::Openai if args.model.is_none() => bail!("--engine openai needs --model (the served model)"),
        BenchEngine::Openai => RolloutConfig {
            engine: EngineKind::Openai,
            base_url: args.base_url.clone(),
            max_concurrency: args.max_concurrency,
            sync: if args.engine_command.is_some() { SyncMode::Restart } else { SyncMode::None },
            command: args.engine_command.clone().unwrap_or_default(),
            ..RolloutConfig::default()
        },
    };
    let mut results = Vec::new();
    for (name, mut model, tokenizer) in models {
        model.vs.set_kind(kind);
        let mut engine = Engine::new(&rollout, engine_dir.path(), false)?;
        engine.sync(&model, &tokenizer)?;
        let r = reasonrl::bench::bench_workload(&name, &engine, &model, &tokenizer, &prompter, &problems, &sampling)?;
        println!(
            "{:<24} {:>9} {:>10} {:>8.1} {:>10.0} {:>10.1} {:>11.2} {:>8.0}% {:>8.1}%",
            r.model,
            r.samples,
            r.new_tokens,
            r.seconds,
            r.tokens_per_s,
            r.samples_per_s,
            r.problems_per_s,
            r.stopped_early * 100.0,
            r.accuracy * 100.0
        );
        results.push(r);
    }
    if let Some(path) = args.json {
        let text = serde_json::to_string_pretty(&results)?;
        fsutil::write_atomic(&path, |w| w.write_all(text.as_bytes()))?;
    }
    Ok(())
}

pub fn run_bench(args: BenchArgs) -> Result<()> {
    let kind = match args.dtype {
        BenchDtype::F32 => tch::Kind::Float,
        BenchDtype::Bf16 => tch::Kind::BFloat16,
    };
    let cfg = bench::BenchConfig {
        device: parse_device(&args.device)?,
        kind,
        train_batch: 16,
        train_seq: 128,
        train_steps: args.train_steps,
        sample_batches: args.sample_batches.clone(),
        prompt_tokens: 32,
        new_tokens: args.new_tokens,
        sampling_dtype: args.sampling_dtype,
    };
    if matches!(args.workload, Workload::Eval) || args.engine == BenchEngine::Openai {
        return run_bench_workload(args, cfg.device, kind);
    }
    let presets = if args.model.is_some() { vec![] } else { args.presets.clone() };
    let tokenizer = match &args.model {
        Some(dir) => reasonrl::tokenizer::Tokenizer::load(dir)?,
        None => bench_tokenizer(&TaskSpec::parse("builtin")?)?,
    };
    println!(
        "device {:?}, dtype {:?} (sampling {:?}), threads {}",
        cfg.device,
        args.dtype,
        args.sampling_dtype,
        tch::get_num_threads()
    );
    println!(
        "{:<8} {:>11} {:>14} {:>10} {:>20}",
        "preset", "parameters", "train tok/s", "step ms", "sample tok/s (batch)"
    );
    let mut results = Vec::new();
    if let Some(dir) = &args.model {
        let model = CausalLm::load(dir, cfg.device, false)?;
        results.push(bench::bench_model(&dir.display().to_string(), model, &tokenizer, &cfg)?);
    }
    for preset in &presets {
        results.push(bench::bench_preset(preset, &tokenizer, &cfg).with_context(|| format!("preset {preset}"))?);
    }
    for r in &results {
        let sampling: Vec<String> = r.sampling_tokens_per_s.iter().map(|(b, t)| format!("{t:.0} ({b})")).collect();
        println!(
            "{:<8} {:>11} {:>14.0} {:>10.1} {:>20}",
            r.preset,
            r.parameters,
            r.train_tokens_per_s,
            r.train_step_ms,
            sampling.join(", ")
        );
    }
    if let Some(path) = args.json {
        let text = serde_json::to_string_pretty(&results)?;
        fsutil::write_atomic(&path, |w| w.write_all(text.as_bytes()))?;
    }
    Ok(())
}

/// `reasonrl grade`: JSON lines with `response` and `answer` (the reference; optional `kind`:
/// `number` or `math`).
#[derive(Args)]
pub struct GradeArgs {
    /// The JSON-lines file (or JSON array).
    file: PathBuf,
    /// Write the graded lines here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Overwrite the --out file.
    #[arg(long)]
    force: bool,
    /// Count each value of this field apart (e.g. a model or a category).
    #[arg(long, value_name = "FIELD")]
    by: Option<String>,
    /// A boolean field of expected verdicts: report the checker's agreement with it.
    #[arg(long, value_name = "FIELD")]
    expect: Option<String>,
}

/// Grades every line, writes the lines with `extracted` and `correct` added, and prints the
/// counts (and agreement) on standard error.
pub fn grade(args: &GradeArgs) -> Result<()> {
    if let Some(path) = &args.out {
        fsutil::check_overwrite(path, args.force)?;
    }
    let (lines, grades) = reasonrl::task::grade::grade(&args.file, args.by.as_deref(), args.expect.as_deref())?;
    match &args.out {
        Some(path) => fsutil::write_atomic(path, |w| w.write_all(lines.as_bytes()))?,
        None => std::io::Write::write_all(&mut std::io::stdout().lock(), lines.as_bytes())?,
    }
    eprint!("{}", reasonrl::task::grade::table(&grades, args.expect.is_some()));
    Ok(())
}
