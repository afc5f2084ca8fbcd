//! The Llama-family model: its config, the network, LoRA adapters, HF folders, from-scratch
//! presets and GGUF conversion.

pub mod adapters;
pub mod config;
pub mod ggml;
pub mod gguf;
pub mod gguf_export;
pub mod gguf_import;
pub mod gguf_tokenizer;
pub mod hf;
pub mod llama;
pub mod lora;
pub mod presets;

pub use config::ModelConfig;
pub use hf::CausalLm;
pub use llama::{CacheWrite, KvCache, Llama};
