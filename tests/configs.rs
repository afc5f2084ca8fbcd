//! Every shipped config parses into its command's settings (unknown keys are errors).

use reasonrl::config::load;
use std::path::Path;

fn config(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs").join(name)
}

#[test]
fn shipped_configs_parse() {
    let p: reasonrl::train::pretrain::PretrainConfig = load(Some(&config("pretrain.toml")), &[]).unwrap();
    assert_eq!((p.corpus.level, p.common.prompt.format), (1, reasonrl::prompt::PromptFormat::FewShot));
    for name in ["sft.toml", "sft-gsm8k.toml"] {
        let s: reasonrl::train::sft::SftConfig = load(Some(&config(name)), &[]).unwrap();
        assert!(s.train.lr > 0.0, "{name}");
    }
    for name in ["eval.toml", "eval-gsm8k.toml"] {
        let e: reasonrl::eval::run::EvalConfig = load(Some(&config(name)), &[]).unwrap();
        assert!(e.eval.check("").is_ok(), "{name}: every k needs k <= samples_per_prompt");
    }
    let ei: reasonrl::train::ei::EiConfig = load(Some(&config("ei.toml")), &["rounds=1".into()]).unwrap();
    assert_eq!((ei.rounds, ei.common.run.name.as_str()), (1, "ei"));
    let ei: reasonrl::train::ei::EiConfig = load(Some(&config("ei-smollm2.toml")), &[]).unwrap();
    assert_eq!(ei.common.prompt.format, reasonrl::prompt::PromptFormat::Chat);
    let orm: reasonrl::train::orm::OrmConfig = load(Some(&config("orm.toml")), &[]).unwrap();
    assert!(orm.balance && orm.holdout > 0.0);
    let rcrl: reasonrl::train::rcrl::RcrlConfig = load(Some(&config("rcrl.toml")), &[]).unwrap();
    assert_eq!(rcrl.labels, reasonrl::train::rcrl::Labels::Outcome);
    let ppo: reasonrl::train::ppo::PpoConfig = load(Some(&config("ppo.toml")), &[]).unwrap();
    assert_eq!(
        (ppo.pg.kl_coef, ppo.gamma, ppo.lambda, ppo.pg.reward.kind),
        (0.05, 1.0, 0.95, reasonrl::reward::RewardKind::Sparse)
    );
    let grpo: reasonrl::train::grpo::GrpoConfig = load(Some(&config("grpo.toml")), &[]).unwrap();
    assert_eq!(grpo.estimator, reasonrl::train::grpo::Estimator::Grpo);
    use reasonrl::train::pg::{Aggregation, RatioLevel};
    let dapo: reasonrl::train::grpo::GrpoConfig = load(Some(&config("dapo.toml")), &[]).unwrap();
    assert_eq!((dapo.aggregation, dapo.pg.clip, dapo.pg.clip_high), (Aggregation::TokenMean, 0.2, Some(0.28)));
    let dr: reasonrl::train::grpo::GrpoConfig = load(Some(&config("dr-grpo.toml")), &[]).unwrap();
    assert_eq!((dr.aggregation, dr.scale_by_std), (Aggregation::SeqMeanTokenSumNorm, false));
    let gspo: reasonrl::train::grpo::GrpoConfig = load(Some(&config("gspo.toml")), &[]).unwrap();
    assert_eq!(
        (gspo.ratio, gspo.aggregation, gspo.pg.clip_high),
        (RatioLevel::Sequence, Aggregation::SeqMeanTokenMean, Some(4e-4))
    );
    for (set, key) in [
        ("dual_clip=0.5", "dual_clip"),
        ("clip_high=0", "clip_high"),
        ("ratio=\"seq\"", "ratio"),
        ("engine_correction_cap=1", "engine_correction_cap"),
    ] {
        let bad = load::<reasonrl::train::grpo::GrpoConfig>(Some(&config("grpo.toml")), &[set.into()]);
        let err = bad.unwrap_err().to_string();
        assert!(err.contains(key), "{set}: {err}");
    }
    // study-real.toml leaves `sizes` to scripts/real.sh, which passes the fetched model.
    for (name, set) in [
        ("study.toml", None),
        ("study-full.toml", None),
        ("study-recipes.toml", None),
        ("study-real.toml", Some("sizes=[\"tiny\"]")),
    ] {
        let sets: Vec<String> = set.into_iter().map(String::from).collect();
        let s: reasonrl::study::StudyConfig = load(Some(&config(name)), &sets).unwrap();
        // Stage configs are relative to the repository root, where cargo runs tests.
        reasonrl::study::check_stages(&s).unwrap_or_else(|e| panic!("{name}: {e}"));
        let plan = reasonrl::study::plan(&s).unwrap();
        assert!(plan.rows.iter().any(|r| r.algorithm == "ei"), "{name}");
    }
    let names: Vec<_> = std::fs::read_dir(config("")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names.len(), 18, "a new config file needs a line here: {names:?}");
}
