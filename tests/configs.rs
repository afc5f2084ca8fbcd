//! Every shipped config parses into its command's settings (unknown keys are errors).

use reasonrl::config::load;
use std::path::Path;

fn config(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs").join(name)
}

#[test]
fn shipped_configs_parse() {
    let p: reasonrl::train::pretrain::PretrainConfig = load(Some(&config("pretrain.toml")), &[]).unwrap();
    assert_eq!((p.corpus.level, p.prompt.format.as_str()), (1, "few-shot"));
    for name in ["sft.toml", "sft-gsm8k.toml"] {
        let s: reasonrl::train::sft::SftConfig = load(Some(&config(name)), &[]).unwrap();
        assert!(s.train.lr > 0.0, "{name}");
    }
    for name in ["eval.toml", "eval-gsm8k.toml"] {
        let e: reasonrl::eval::run::EvalConfig = load(Some(&config(name)), &[]).unwrap();
        assert!(e.ks.iter().all(|&k| k <= e.samples) || e.samples == 0, "{name}: every k needs k <= samples");
    }
    let ei: reasonrl::train::ei::EiConfig = load(Some(&config("ei.toml")), &["rounds=1".into()]).unwrap();
    assert_eq!((ei.rounds, ei.run.name.as_str()), (1, "ei"));
    let ei: reasonrl::train::ei::EiConfig = load(Some(&config("ei-smollm2.toml")), &[]).unwrap();
    assert_eq!(ei.prompt.format, "chat");
    let orm: reasonrl::train::orm::OrmConfig = load(Some(&config("orm.toml")), &[]).unwrap();
    assert!(orm.balance && orm.holdout > 0.0);
    let rcrl: reasonrl::train::rcrl::RcrlConfig = load(Some(&config("rcrl.toml")), &[]).unwrap();
    assert_eq!(rcrl.labels, "outcome");
    let ppo: reasonrl::train::ppo::PpoConfig = load(Some(&config("ppo.toml")), &[]).unwrap();
    assert_eq!((ppo.kl_coef, ppo.gamma, ppo.lambda, ppo.reward.kind.as_str()), (0.05, 1.0, 0.95, "sparse"));
    let grpo: reasonrl::train::grpo::GrpoConfig = load(Some(&config("grpo.toml")), &[]).unwrap();
    assert_eq!(grpo.estimator, "grpo");
    for name in ["study.toml", "study-full.toml"] {
        let s: reasonrl::study::StudyConfig = load(Some(&config(name)), &[]).unwrap();
        // Stage configs are relative to the repository root, where cargo runs tests.
        reasonrl::study::check_stages(&s).unwrap_or_else(|e| panic!("{name}: {e}"));
        let plan = reasonrl::study::plan(&s).unwrap();
        assert!(plan.rows.iter().any(|r| r.algorithm == "ei"), "{name}");
    }
    let names: Vec<_> = std::fs::read_dir(config("")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names.len(), 13, "a new config file needs a line here: {names:?}");
}
