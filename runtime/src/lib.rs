//! # lowbit-runtime
//!
//! A minimal Mistral / Llama-family / Qwen2 forward pass over a lowbit file's mmapped weights:
//! embedding, RMSNorm, rotary embedding (rotate_half layout), grouped-query attention with an
//! optional sliding window, SwiGLU MLP, lm_head — plus a KV cache, sampling, the tokenizer and
//! chat template, and a generation loop. Opening a model validates the file and builds views;
//! no weight matrix is copied.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod attention;
pub mod batch;
pub mod config;
pub mod conversation;
pub mod engine;
mod error;
pub mod generate;
mod imatrix;
pub mod kv_cache;
pub mod lora;
pub mod model;
pub mod ops;
pub mod profile;
pub mod sampler;
pub mod score;
pub mod text;
pub mod weights;

pub use config::ModelConfig;
pub use conversation::Conversation;
pub use engine::{Engine, RuntimeOptions};
pub use error::{Result, RuntimeError};
pub use generate::{generate, generate_with_progress, GenStats, TextStream};
pub use kv_cache::{KvCache, KvType};
pub use model::{Logits, Model};
pub use profile::{Phase, ProfileReport};
pub use sampler::{Sampler, SamplerConfig};
pub use text::{Message, TextCodec};
