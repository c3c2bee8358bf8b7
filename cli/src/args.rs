//! Command-line arguments.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// lowbit: quantized Mistral/Llama models on a plain CPU.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    /// Worker threads (default: all cores).
    #[arg(short = 't', long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Convert a Hugging Face folder (safetensors, plain or bitsandbytes) or a GGUF file; or a
    /// PEFT LoRA adapter folder on its own, into an adapter file for --lora.
    Convert(ConvertArgs),
    /// Show a model file's metadata, tensors and memory needs.
    Inspect(InspectArgs),
    /// Check every tensor's checksum.
    Verify(VerifyArgs),
    /// Generate text from a prompt, streaming tokens.
    Run(RunArgs),
    /// Interactive multi-turn chat using the model's chat template.
    Chat(ChatArgs),
    /// Generate for a JSONL file of requests, many at once, results in input order.
    Batch(BatchArgs),
    /// Serve the model over HTTP with OpenAI's API (chat and completions, streaming).
    Serve(ServeArgs),
    /// Write the logits of every position to a .npy file.
    Logits(LogitsArgs),
    /// Perplexity of a text file (llama.cpp's scoring), optionally KL divergence against a base.
    Perplexity(PerplexityArgs),
    /// Measure how large each linear layer's input columns run on a calibration text, for
    /// `convert --imatrix`.
    Imatrix(ImatrixArgs),
    /// Show which instruction sets the kernels use and where their weight prefetches aim (and measure
    /// memory bandwidth).
    Cpu(CpuArgs),
    /// Write a synthetic checkpoint with a real model's names and shapes and random weights.
    Synth(SynthArgs),
}

#[derive(Args, Debug)]
pub struct ImatrixArgs {
    /// Model file (an f32 or f16 conversion measures the activations of the unquantized model).
    #[arg(short, long)]
    pub model: PathBuf,
    /// Calibration text.
    #[arg(short, long)]
    pub file: PathBuf,
    /// Output importance file.
    #[arg(short, long)]
    pub out: PathBuf,
    /// Chunk length in tokens (each chunk starts a fresh context).
    #[arg(short = 'c', long, visible_alias = "ctx-size", default_value_t = 512)]
    pub ctx: usize,
    /// Read at most this many chunks (0 = all).
    #[arg(long, default_value_t = 0)]
    pub chunks: usize,
}

#[derive(Args, Debug)]
pub struct CpuArgs {
    /// Also measure streaming-read bandwidth over a buffer of this many MiB.
    #[arg(long)]
    pub bandwidth: Option<usize>,
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// mistral-7b-v0.1, mistral-7b-v0.2, mistral-7b-v0.3, qwen2.5-14b, smollm2-135m or qwen2.5-0.5b.
    #[arg(long)]
    pub preset: String,
    /// Output folder.
    #[arg(short, long)]
    pub out: PathBuf,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Override the number of layers (quicker runs).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Shard size in MiB.
    #[arg(long, default_value_t = 4096)]
    pub shard_mib: u64,
    /// Write a PEFT LoRA adapter of this rank for the preset instead (all seven linears of
    /// every layer, alpha = 2·rank, bf16)
    #[arg(long, value_name = "RANK")]
    pub adapter_rank: Option<usize>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quant {
    /// NormalFloat4 in blocks of 64 with double-quantized scales (QLoRA's 4-bit), with v_proj and the last layer's MLP in block int8, k_proj and the MLPs of the first and second-to-last layers in block int5: better than llama.cpp's IQ4_NL at a smaller file
    Nf4,
    /// nf4 on every linear weight: the smallest 4-bit file
    #[value(name = "nf4-small")]
    Nf4Small,
    /// nf4 with the weights it hurts most in block int8 (v_proj, k_proj, the first and last layers' MLPs, the other layers' down_proj but the middle four): Q4_K_M's size
    #[value(name = "nf4-mix")]
    Nf4Mix,
    /// nf4 in blocks of 32 with v_proj in block int8: better than llama.cpp's IQ4_NL at its size
    #[value(name = "nf4-plus")]
    Nf4Plus,
    /// Block int5: 5-bit integers with one f16 scale per 32 weights (5.5 bits a weight) on every linear weight
    Q5,
    /// q5 with v_proj and the head in block int8 with blocks of 64: llama.cpp's Q4_K_M size, and better than it on SmolLM2 (105.1 MB, KL 0.093 against Q4_K_M's 0.114 at 105.5 MB)
    #[value(name = "q5-mix")]
    Q5Mix,
    /// bitsandbytes' FP4
    Fp4,
    /// LLM.int8: one scale per row, outlier columns in floating point (bitsandbytes' 8-bit).
    Int8,
    /// Block int8: one f16 scale per 32 weights (the 8-bit that loses least).
    Q8,
    F16,
    Bf16,
    F32,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Model folder (config.json + safetensors) or a .gguf file.
    pub src: PathBuf,
    /// Output file.
    #[arg(short, long)]
    pub out: PathBuf,
    /// Storage scheme of the linear layers.
    #[arg(long, value_enum, default_value = "nf4")]
    pub quant: Quant,
    /// 4-bit block size (32 … 4096) [default: 64; 32 for nf4-plus].
    #[arg(long)]
    pub blocksize: Option<usize>,
    /// Keep 4-bit block scales in float32 instead of double-quantizing them.
    #[arg(long)]
    pub no_double_quant: bool,
    /// LLM.int8 outlier threshold stored for the runtime (0 turns the decomposition off).
    #[arg(long, default_value_t = 6.0)]
    pub threshold: f32,
    /// Also keep tensors whose name contains this in high precision (repeatable).
    #[arg(long)]
    pub keep: Vec<String>,
    /// Store the 4-bit linear weights matching this pattern in block int8 instead (a name part,
    /// or a glob like `*.v_proj.weight`; repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub q8: Vec<String>,
    /// Store the 4-bit linear weights matching this pattern in block int5 instead (5.5 bits a
    /// weight; patterns as --q8, which wins where both match; repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub q5: Vec<String>,
    /// Quantize embeddings and lm_head too, with the main scheme.
    #[arg(long)]
    pub quantize_all: bool,
    /// Output head (lm_head, or the embedding tied to it) when the layers are quantized: `int8`
    /// halves what decode streams for it; `source` keeps its precision, as bitsandbytes does. A
    /// bitsandbytes checkpoint keeps its head either way.
    #[arg(long, value_enum, default_value = "int8")]
    pub head: Head,
    /// Round double-quant codes like bitsandbytes' CPU kernel (default: nearest, like its CUDA
    /// and PyTorch paths and most published checkpoints).
    #[arg(long)]
    pub bnb_cpu_rounding: bool,
    /// 4-bit blocks exactly as bitsandbytes quantizes them (block absmax, nearest code) instead
    /// of searching each block's scale for the least error; with `nf4`, every linear weight in
    /// 4 bits, as bitsandbytes stores them.
    #[arg(long)]
    pub bnb_exact: bool,
    /// Merge a PEFT LoRA adapter folder into the weights before quantizing, scaled by SCALE
    /// (default 1); repeat for several, applied in order
    #[arg(long, value_name = "DIR[:SCALE]")]
    pub lora: Vec<lowbit_convert::lora::LoraSpec>,
    /// Weight the 4-bit and 5-bit scale searches by an importance file from `lowbit imatrix`
    /// (how large each column's activations run on calibration text)
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `--kv-type` values.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvTypeArg {
    F32,
    F16,
    // int8 in blocks of 32 with an f16 scale each.
    Q8,
}

impl KvTypeArg {
    pub fn kv(self) -> lowbit_runtime::KvType {
        match self {
            KvTypeArg::F32 => lowbit_runtime::KvType::F32,
            KvTypeArg::F16 => lowbit_runtime::KvType::F16,
            KvTypeArg::Q8 => lowbit_runtime::KvType::Q8,
        }
    }
}

/// `--head` values.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Keep the source precision.
    Source,
    /// 8-bit rows: block int8 (q8) where rows are whole blocks of 32, LLM.int8 otherwise
    Int8,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model file.
    pub file: PathBuf,
    /// Context length for the RAM estimate.
    #[arg(long, default_value_t = 4096)]
    pub ctx: usize,
    /// Sequences run at once (`serve --parallel`, `batch --parallel`) for the RAM estimate.
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// KV cache element type for the RAM estimate.
    #[arg(long, value_enum, default_value = "f32")]
    pub kv_type: KvTypeArg,
    /// Print every tensor.
    #[arg(long)]
    pub tensors: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Model file.
    pub file: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    /// Tokens to generate (-1: until an end-of-sequence token or a full context, at most --ctx).
    #[arg(
        short = 'n',
        long,
        visible_alias = "n-predict",
        default_value_t = 128,
        value_parser = max_tokens,
        allow_negative_numbers = true
    )]
    pub max_tokens: usize,
    /// Temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temp: f32,
    /// Top-k (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Top-p.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Min-p: drop tokens less likely than this times the most likely one (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Presence penalty: subtracted from the logit of every token already in the text (0 = off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub presence_penalty: f32,
    /// Frequency penalty: subtracted once per earlier occurrence of a token (0 = off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    /// Random seed (default: a new one each run, printed when sampling, so a run can be repeated).
    #[arg(short = 's', long)]
    pub seed: Option<u64>,
    /// Context length (positions kept for models without a sliding window).
    #[arg(short = 'c', long, visible_alias = "ctx-size", default_value_t = 4096)]
    pub ctx: usize,
    /// Exact float 4-bit decode path instead of the faster integer route.
    #[arg(long)]
    pub exact: bool,
    /// KV cache element type: f32 (exact), f16 (half the memory) or q8 (int8 in blocks of 32, 53 % of f16).
    #[arg(long, value_enum, default_value = "f32")]
    pub kv_type: KvTypeArg,
    /// Apply a PEFT LoRA adapter (its folder, or the file `lowbit convert ADAPTER_DIR` makes of
    /// it) beside the weights it changes (y = W x + s·B(A x), the
    /// file untouched), scaled by SCALE (default 1); repeat for several
    #[arg(long, value_name = "DIR[:SCALE]")]
    pub lora: Vec<lowbit_convert::lora::LoraSpec>,
    /// Scheme a GGUF file or Hugging Face folder given as the model is converted to (once; the
    /// result is cached in $LOWBIT_CACHE/converted or ~/.cache/lowbit).
    #[arg(long, value_enum, default_value = "nf4")]
    pub quant: Quant,
    /// Keep generating past end-of-sequence tokens (for timing).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print where each forward pass spent its time, per operation (prefill and decode).
    #[arg(long)]
    pub profile: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Model file.
    #[arg(short, long)]
    pub model: PathBuf,
    /// Prompt text.
    #[arg(short, long, conflicts_with = "file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file (`-` reads standard input).
    #[arg(short, long)]
    pub file: Option<PathBuf>,
    /// Wrap the prompt in the chat template as one user turn (the default when the model has a
    /// template; an error when it has none).
    #[arg(long, conflicts_with = "raw")]
    pub chat: bool,
    /// Plain completion of the prompt, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// System message (with --chat).
    #[arg(long, visible_alias = "system-prompt")]
    pub system: Option<String>,
    /// Print one JSON object (text, token ids and counts, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sample: SampleArgs,
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// Model file.
    #[arg(short, long)]
    pub model: PathBuf,
    /// System message.
    #[arg(long, visible_alias = "system-prompt")]
    pub system: Option<String>,
    #[command(flatten)]
    pub sample: SampleArgs,
}

#[derive(Args, Debug)]
pub struct BatchArgs {
    /// Model file.
    #[arg(short, long)]
    pub model: PathBuf,
    /// Requests, one JSON object a line: "prompt" (text, completed as is) or "messages" (a chat,
    /// through the model's template), and optionally "id", "max_tokens", "temperature",
    /// "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty",
    /// "seed", "stop", "n", "logprobs" (the flags below are their defaults).
    #[arg(short, long)]
    pub input: PathBuf,
    /// Results, one JSON object a line in input order: "id", "choices" (text, finish_reason,
    /// token_ids, logprobs), "usage"; or "id" and "error".
    #[arg(short, long)]
    pub out: PathBuf,
    /// Sequences decoded together (each holds a KV cache of up to --ctx positions).
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Prompt tokens prefilled per step between decode steps.
    #[arg(long, default_value_t = 256)]
    pub prefill_chunk: usize,
    /// Keep the output's finished lines and run only the requests not in it.
    #[arg(long)]
    pub resume: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub sample: SampleArgs,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model file.
    #[arg(short, long)]
    pub model: PathBuf,
    /// Address to listen on (another than loopback exposes the model to the network).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one; the address is printed when serving starts).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Sequences decoded together (slots); each holds a KV cache of up to --ctx positions.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Positions per sequence (prompt and reply), cut to what the model was trained for (per
    /// slot: llama-server divides its -c among its slots).
    #[arg(short = 'c', long, visible_alias = "ctx-size", default_value_t = 4096)]
    pub ctx: usize,
    /// Requests that may wait for a slot; more get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Prompt tokens prefilled per step between decode steps.
    #[arg(long, default_value_t = 256)]
    pub prefill_chunk: usize,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Model name reported by /v1/models and in responses (default: the file name).
    #[arg(long, visible_alias = "alias")]
    pub model_name: Option<String>,
    /// Reply length of a request that gives no max_tokens (-1: the rest of the context; default:
    /// that for chat, 16 for completions, as OpenAI's API has it).
    #[arg(short = 'n', long, visible_alias = "n-predict", value_parser = max_tokens, allow_negative_numbers = true)]
    pub max_tokens: Option<usize>,
    /// KV cache element type: f32 (exact), f16 (half the memory) or q8 (int8 in blocks of 32, 53 % of f16).
    #[arg(long, value_enum, default_value = "f32")]
    pub kv_type: KvTypeArg,
    /// Scheme a GGUF file or Hugging Face folder given as the model is converted to (once, cached).
    #[arg(long, value_enum, default_value = "nf4")]
    pub quant: Quant,
    /// Largest request body accepted, in KiB.
    #[arg(long, default_value_t = 4096)]
    pub max_body_kib: usize,
    /// Exact float 4-bit decode path instead of the faster integer route.
    #[arg(long)]
    pub exact: bool,
    /// Apply a PEFT LoRA adapter (its folder, or the file `lowbit convert ADAPTER_DIR` makes of
    /// it) beside the weights it changes (y = W x + s·B(A x), the
    /// file untouched), scaled by SCALE (default 1); repeat for several. With NAME=, only to the
    /// requests that ask for it ("model": "NAME", or "lora": "NAME")
    #[arg(long, value_name = "[NAME=]DIR[:SCALE]")]
    pub lora: Vec<NamedLora>,
}

/// `[NAME=]DIR[:SCALE]`: a run-time adapter, applied to every request or, named, to those that
/// pick it.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedLora {
    /// What requests call it; `None`: applied to every request.
    pub name: Option<String>,
    /// The folder and scale.
    pub spec: lowbit_convert::lora::LoraSpec,
}

impl SampleArgs {
    /// The token budget: `-n -1` becomes `--ctx` tokens, which a context without a sliding window
    /// reaches first anyway and which bounds a sliding-window model's reply (its cache never
    /// fills).
    pub fn budget(&self) -> usize {
        if self.max_tokens == usize::MAX {
            self.ctx
        } else {
            self.max_tokens
        }
    }
}

impl std::str::FromStr for NamedLora {
    type Err = String;
    fn from_str(s: &str) -> Result<NamedLora, String> {
        // A leading `NAME=` (letters, digits, `_ . -`) names it, unless the whole text is a path
        // that exists.
        if !std::path::Path::new(s).exists() {
            if let Some((name, rest)) = s.split_once('=') {
                let plain = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
                if !name.is_empty() && name.len() <= 64 && name.chars().all(plain) && !rest.is_empty() {
                    return Ok(NamedLora { name: Some(name.to_string()), spec: rest.parse()? });
                }
            }
        }
        Ok(NamedLora { name: None, spec: s.parse()? })
    }
}

#[derive(Args, Debug)]
pub struct LogitsArgs {
    /// Model file.
    #[arg(short, long)]
    pub model: PathBuf,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',', conflicts_with = "text")]
    pub tokens: Option<Vec<u32>>,
    /// Text to tokenize (with the tokenizer's special tokens).
    #[arg(long)]
    pub text: Option<String>,
    /// Output .npy (float32, [tokens, vocab]).
    #[arg(long)]
    pub out: PathBuf,
    /// Exact float 4-bit path.
    #[arg(long)]
    pub exact: bool,
    /// Apply a PEFT LoRA adapter (its folder, or the file `lowbit convert ADAPTER_DIR` makes of
    /// it) beside the weights it changes (y = W x + s·B(A x), the
    /// file untouched), scaled by SCALE (default 1); repeat for several
    #[arg(long, value_name = "DIR[:SCALE]")]
    pub lora: Vec<lowbit_convert::lora::LoraSpec>,
}

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    /// Model file.
    #[arg(short, long)]
    pub model: PathBuf,
    /// Text file.
    #[arg(short, long)]
    pub file: PathBuf,
    /// Chunk length in tokens.
    #[arg(short = 'c', long, visible_alias = "ctx-size", default_value_t = 256)]
    pub ctx: usize,
    /// Score at most this many chunks (0 = all).
    #[arg(long, default_value_t = 0)]
    pub chunks: usize,
    /// Save the scored positions' log-probabilities here, as a base for --kl-base.
    #[arg(long)]
    pub save_logits: Option<PathBuf>,
    /// Report KL divergence and top-1 agreement against a base model's saved logits.
    #[arg(long)]
    pub kl_base: Option<PathBuf>,
    /// Exact float 4-bit path.
    #[arg(long)]
    pub exact: bool,
    /// Apply a PEFT LoRA adapter (its folder, or the file `lowbit convert ADAPTER_DIR` makes of
    /// it) beside the weights it changes (y = W x + s·B(A x), the
    /// file untouched), scaled by SCALE (default 1); repeat for several
    #[arg(long, value_name = "DIR[:SCALE]")]
    pub lora: Vec<lowbit_convert::lora::LoraSpec>,
    /// Print one JSON object (perplexity, counts, timing, and KL and top-1 with --kl-base; in
    /// total and per chunk) instead of text; the progress line still goes to stderr.
    #[arg(long)]
    pub json: bool,
}

/// A token budget: a count, or -1 for none (llama.cpp's spelling), which the context bounds.
fn max_tokens(s: &str) -> Result<usize, String> {
    match s.trim() {
        "-1" => Ok(usize::MAX),
        t => t.parse().map_err(|_| format!("{s:?} is not a token count (or -1 for no limit)")),
    }
}

/// Flags whose value is free text (a prompt could be `-np`): the token after one is never a
/// llama.cpp spelling to rewrite.
const TEXT_VALUED: &[&str] =
    &["-p", "--prompt", "--system", "--system-prompt", "-sys", "-f", "--file", "--text", "--api-key", "--model-name"];

/// llama.cpp's multi-letter single-dash flags that clap cannot declare, and lowbit's spelling of
/// each.
const RENAMED: &[(&str, &str)] = &[("-np", "--parallel"), ("-sys", "--system")];

/// llama.cpp's GPU offload flag, which takes a value.
const GPU_LAYERS: &[&str] = &["-ngl", "--n-gpu-layers", "--gpu-layers"];

/// llama.cpp's common flags that clap cannot take as they are: its multi-letter single-dash
/// flags rewritten to lowbit's (`-np` → `--parallel`, `-sys` → `--system`, also as `-np=4`), and
/// flags that ask for what lowbit always or never does dropped: GPU offload (`-ngl N`,
/// `--n-gpu-layers N`, `--gpu-layers N`, or `=N`; lowbit runs on the CPU) and continuous
/// batching (`-cb`, `--cont-batching`). Returns the arguments and a note per dropped flag.
/// Nothing after `--`, and no value of a free-text flag, is touched.
pub fn llama_cpp_spellings(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> (Vec<std::ffi::OsString>, Vec<String>) {
    let (mut out, mut notes) = (Vec::new(), Vec::new());
    let mut args = args.into_iter();
    let mut verbatim = false;
    while let Some(a) = args.next() {
        let text = a.to_str().unwrap_or("");
        if verbatim || text == "--" {
            verbatim = true;
            out.push(a);
            continue;
        }
        let (flag, value) = match text.split_once('=') {
            Some((f, v)) if f.starts_with('-') => (f, Some(v)),
            _ => (text, None),
        };
        if GPU_LAYERS.contains(&flag) {
            let shown = match value {
                Some(_) => text.to_string(),
                None => match args.next() {
                    Some(v) => format!("{text} {}", v.to_string_lossy()),
                    None => text.to_string(),
                },
            };
            notes.push(format!("lowbit runs on the CPU: `{shown}` ignored"));
            continue;
        }
        if text == "-cb" || text == "--cont-batching" {
            notes.push(format!("`{text}` ignored: batch and serve always batch continuously"));
            continue;
        }
        let takes_text = value.is_none() && TEXT_VALUED.contains(&flag);
        out.push(match RENAMED.iter().find(|(from, _)| *from == flag) {
            Some((_, to)) => match value {
                Some(v) => format!("{to}={v}").into(),
                None => (*to).into(),
            },
            None => a,
        });
        if takes_text {
            if let Some(v) = args.next() {
                out.push(v);
            }
        }
    }
    (out, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spell(args: &[&str]) -> (Vec<String>, usize) {
        let (a, notes) = llama_cpp_spellings(args.iter().map(std::ffi::OsString::from));
        (a.into_iter().map(|s| s.into_string().unwrap()).collect(), notes.len())
    }

    #[test]
    fn llama_cpp_flags_are_rewritten_or_dropped() {
        let (a, n) = spell(&["lowbit", "serve", "-m", "f", "-np", "4", "-ngl", "99", "-c", "2048", "-cb"]);
        assert_eq!(a, ["lowbit", "serve", "-m", "f", "--parallel", "4", "-c", "2048"]);
        assert_eq!(n, 2);
        let (a, n) = spell(&["lowbit", "run", "-sys", "be brief", "--n-gpu-layers=35", "-p", "hi"]);
        assert_eq!(a, ["lowbit", "run", "--system", "be brief", "-p", "hi"]);
        assert_eq!(n, 1);
        let (a, n) = spell(&["lowbit", "serve", "-np=2", "--gpu-layers", "10", "--cont-batching", "-ngl"]);
        assert_eq!(a, ["lowbit", "serve", "--parallel=2"]);
        let (_, notes) = llama_cpp_spellings(["lowbit", "serve", "-ngl"].map(std::ffi::OsString::from));
        assert_eq!(notes, ["lowbit runs on the CPU: `-ngl` ignored"]);
        assert_eq!(n, 3);
        // Free text that happens to read like a flag stays as it is, and so does anything after --.
        let (a, n) = spell(&["lowbit", "run", "-p", "-np", "--system", "-ngl", "--", "-sys"]);
        assert_eq!(a, ["lowbit", "run", "-p", "-np", "--system", "-ngl", "--", "-sys"]);
        assert_eq!(n, 0);
        // Parsed by clap afterwards: the rewritten flags are lowbit's.
        let (a, _) = spell(&["lowbit", "batch", "-m", "f", "-i", "in", "-o", "out", "-np", "3", "--n-predict", "5"]);
        let cli = Cli::try_parse_from(a).unwrap();
        match cli.command {
            Command::Batch(b) => assert_eq!((b.parallel, b.sample.max_tokens), (3, 5)),
            other => panic!("{other:?}"),
        }
        let (a, _) = spell(&["lowbit", "serve", "-m", "f", "--alias", "tiny", "-n", "-1", "-np", "2"]);
        match Cli::try_parse_from(a).unwrap().command {
            Command::Serve(s) => {
                assert_eq!((s.model_name.as_deref(), s.max_tokens, s.parallel), (Some("tiny"), Some(usize::MAX), 2))
            }
            other => panic!("{other:?}"),
        }
    }
}
