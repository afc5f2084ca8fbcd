//! Prints a model's logits for given token ids as JSON, to compare against another
//! implementation (e.g. Python `transformers`, see scripts/gpu-check.sh).
//!
//!     cargo run --release --example logits -- MODEL_DIR DEVICE 1,2,3 [f32|bf16]

use reasonrl::model::CausalLm;
use tch::{Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, device, ids, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: logits MODEL_DIR DEVICE IDS [f32|bf16]");
    };
    let device = reasonrl::parse_device(device)?;
    let mut model = CausalLm::load(std::path::Path::new(dir), device, false)?;
    if rest.first().map(String::as_str) == Some("bf16") {
        model.vs.bfloat16();
    }
    let ids: Vec<i64> = ids.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?;
    let logits = tch::no_grad(|| model.forward_logits(&Tensor::from_slice(&ids).to_device(device).unsqueeze(0)));
    let logits = logits.squeeze_dim(0).to_kind(Kind::Float).to_device(tch::Device::Cpu);
    let rows: Vec<Vec<f32>> = (0..ids.len() as i64).map(|i| Vec::<f32>::try_from(logits.get(i)).unwrap()).collect();
    println!("{}", serde_json::json!({ "ids": ids, "logits": rows }));
    Ok(())
}
