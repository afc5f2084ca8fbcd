//! What a study's `sizes` entry names: a preset the study pretrains from scratch, or a
//! pretrained model, as a Hugging Face folder or a GGUF file (converted once, into the study
//! folder), with the prompts its inits use.

use crate::error::{Error, Result};
use crate::prompt::{PromptConfig, PromptFormat};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    Preset(String),
    Folder(PathBuf),
    Gguf(PathBuf),
}

impl ModelSource {
    /// A preset's name, a model folder, or a `.gguf` file; anything else is refused, naming it.
    pub fn parse(size: &str) -> Result<ModelSource> {
        if crate::model::presets::PRESETS.iter().any(|p| p.0 == size) {
            return Ok(ModelSource::Preset(size.into()));
        }
        let path = Path::new(size);
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) && path.is_file() {
            return Ok(ModelSource::Gguf(path.into()));
        }
        if path.join("config.json").is_file() {
            return Ok(ModelSource::Folder(path.into()));
        }
        let presets: Vec<&str> = crate::model::presets::PRESETS.iter().map(|p| p.0).collect();
        Err(Error::Invalid(format!(
            "study: sizes entry `{size}` is neither a preset ({}) nor a model folder (with config.json) nor a .gguf file",
            presets.join(", ")
        )))
    }

    /// The folder of its jobs in the study: the preset's name, or the model's file or folder
    /// name (`SmolLM2-135M-Instruct.Q8_0.gguf` -> `SmolLM2-135M-Instruct.Q8_0`).
    pub fn name(&self) -> String {
        match self {
            ModelSource::Preset(name) => name.clone(),
            ModelSource::Folder(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            ModelSource::Gguf(path) => path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        }
    }

    /// Whether the model comes with a chat template (a preset never does).
    fn chat(&self) -> Result<bool> {
        Ok(match self {
            ModelSource::Preset(_) => false,
            ModelSource::Folder(dir) => crate::tokenizer::Tokenizer::load(dir)?.chat_template().is_some(),
            ModelSource::Gguf(path) => {
                crate::model::gguf_import::chat_template(&crate::model::gguf::Gguf::read(path)?).is_some()
            }
        })
    }

    /// The prompts of its two inits: the fine-tuned model is asked as it was fine-tuned (plain,
    /// or in its chat template), the pretrained one with solved examples first (as earlier chat
    /// turns where it has a template).
    pub fn prompts(&self) -> Result<(PromptConfig, PromptConfig)> {
        let (sft, pretrained) = match self.chat()? {
            true => (PromptConfig { shots: 0, ..chat() }, chat()),
            false => {
                (PromptConfig::default(), PromptConfig { format: PromptFormat::FewShot, ..PromptConfig::default() })
            }
        };
        Ok((sft, pretrained))
    }
}

fn chat() -> PromptConfig {
    PromptConfig { format: PromptFormat::Chat, ..PromptConfig::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_name_presets_folders_and_gguf_files() {
        assert_eq!(ModelSource::parse("tiny").unwrap(), ModelSource::Preset("tiny".into()));
        let dir = tempfile::tempdir().unwrap();
        let err = ModelSource::parse(&dir.path().display().to_string()).unwrap_err().to_string();
        assert!(err.contains("neither a preset (tiny, small, medium)"), "{err}");
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let folder = ModelSource::parse(&dir.path().display().to_string()).unwrap();
        assert_eq!(folder, ModelSource::Folder(dir.path().into()));
        let gguf = dir.path().join("Some-Model.Q8_0.gguf");
        std::fs::write(&gguf, "").unwrap();
        assert_eq!(ModelSource::parse(&gguf.display().to_string()).unwrap().name(), "Some-Model.Q8_0");
        let (sft, pretrained) = ModelSource::Preset("tiny".into()).prompts().unwrap();
        assert_eq!((sft.format, pretrained.format), (PromptFormat::Plain, PromptFormat::FewShot));
    }
}
