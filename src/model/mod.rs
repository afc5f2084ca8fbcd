//! The Llama-family model: its config, the network, HF folders and from-scratch presets.

pub mod config;
pub mod hf;
pub mod llama;
pub mod presets;

pub use config::ModelConfig;
pub use hf::CausalLm;
pub use llama::{KvCache, Llama};
