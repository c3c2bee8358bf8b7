//! Which scheme each tensor gets, following bitsandbytes/transformers defaults: the linear
//! layers of attention and MLP (q/k/v/o_proj, gate/up/down_proj) are quantized; norms, biases,
//! embeddings and lm_head stay in high precision — in their source dtype — unless asked
//! otherwise. `--quant f16/bf16/f32` converts everything to that dtype.
//!
//! Also the plan itself: every output tensor, how it is made and from which source bytes, built
//! (and checked against config.json) before anything is written.

use crate::bnb::{self, BnbTensor};
use crate::config::{normalise, Dims, Expect};
use crate::error::{ConvertError, Result};
use crate::sidefile;
use crate::source::gguf::GgufSource;
use crate::source::safetensors::SafetensorsSource;
use crate::source::{SrcDtype, TensorSource};
use lowbit_format::{ConverterInfo, FourBitKind, Metadata, Nested, QuantSettings, Scheme};
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// What the linear layers become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantChoice {
    /// NF4 (4-bit NormalFloat) with the few weights it hurts most per byte ([`NF4_Q8`] and the
    /// last layer's MLP) in block int8: llama.cpp's IQ4_NL quality at a smaller file.
    Nf4,
    /// NF4 on every linear weight: the smallest 4-bit file.
    Nf4Small,
    /// NF4 with the tensors that lose most to it in block int8 ([`NF4_MIX_Q8`], the first and
    /// last layers' MLPs, the other layers' down projections but the middle ones): Q4_K_M's size.
    Nf4Mix,
    /// NF4 in blocks of 32 with v_proj ([`NF4_PLUS_Q8`]) in block int8: IQ4_NL's size class.
    Nf4Plus,
    /// Block int5 (5-bit integers in blocks of 32 with an f16 scale each) on every linear weight.
    Q5,
    /// Block int5 with v_proj ([`Q5_MIX_Q8`]) and the head in block int8 with blocks of 64:
    /// llama.cpp's Q4_K_M size, and better than it on SmolLM2 (docs/PERFORMANCE.md).
    Q5Mix,
    /// bitsandbytes FP4.
    Fp4,
    /// LLM.int8.
    Int8,
    /// Block int8 (int8 in blocks of 32 with an f16 scale each).
    Q8,
    /// float16 everywhere.
    F16,
    /// bfloat16 everywhere.
    Bf16,
    /// float32 everywhere.
    F32,
}

impl QuantChoice {
    /// Name as stored in the file's quantization settings.
    pub fn label(self) -> &'static str {
        match self {
            QuantChoice::Nf4 => "nf4",
            QuantChoice::Nf4Small => "nf4-small",
            QuantChoice::Nf4Mix => "nf4-mix",
            QuantChoice::Nf4Plus => "nf4-plus",
            QuantChoice::Q5 => "q5",
            QuantChoice::Q5Mix => "q5-mix",
            QuantChoice::Fp4 => "fp4",
            QuantChoice::Int8 => "int8",
            QuantChoice::Q8 => "q8",
            QuantChoice::F16 => "f16",
            QuantChoice::Bf16 => "bf16",
            QuantChoice::F32 => "f32",
        }
    }

    /// The 4-bit block size this choice uses unless told otherwise: 32 for `nf4-plus`, else
    /// bitsandbytes' 64.
    pub fn default_blocksize(self) -> usize {
        if self == QuantChoice::Nf4Plus {
            32
        } else {
            64
        }
    }

    /// The dense scheme everything becomes, for f16/bf16/f32.
    pub fn dense(self) -> Option<Scheme> {
        match self {
            QuantChoice::F16 => Some(Scheme::F16),
            QuantChoice::Bf16 => Some(Scheme::Bf16),
            QuantChoice::F32 => Some(Scheme::F32),
            _ => None,
        }
    }
}

/// The linear weights `--quant nf4` stores in block int8, besides the last layer's MLP
/// ([`ConvertOptions::eight_bit`]): by measurement on SmolLM2, v_proj loses the most to 4 bits
/// per byte it takes (its values pass through attention unmixed), and the last layer's MLP the
/// most of any layer's — its error goes straight into the logits (docs/PERFORMANCE.md).
pub const NF4_Q8: &[&str] = &["*.v_proj.weight"];

/// The linear weights `--quant nf4` stores in block int5, besides the MLPs of the first layer
/// and of the one before the last ([`ConvertOptions::five_bit`]): k_proj in 5 bits instead of 8
/// costs SmolLM2 little and pays for those two MLPs, which lose the most to 4 bits after the
/// last one's — on both texts and with or without `--imatrix`, a smaller file that loses less
/// (docs/PERFORMANCE.md).
pub const NF4_Q5: &[&str] = &["*.k_proj.weight"];

/// The linear weights `--quant nf4-mix` stores in block int8 by name, beside the first and last
/// layers' MLPs and the down projections of all but the middle layers ([`ConvertOptions::eight_bit`]):
/// on SmolLM2 that spends Q4_K_M's size where 4 bits lose most (docs/PERFORMANCE.md).
pub const NF4_MIX_Q8: &[&str] = &["*.v_proj.weight", "*.k_proj.weight"];

/// Layers around the middle whose down projection `nf4-mix` leaves in 4 bits (they lost least
/// to it on SmolLM2): their four matrices pay for the gate and up projections of the first and
/// last layers in 8 bits.
const MIX_MIDDLE: usize = 4;

/// The linear weights `--quant q5-mix` stores in block int8: on SmolLM2, v_proj in 8 bits took
/// the KL to the f32 model from 0.133 to 0.090 on genesis for 1.2 MB (docs/PERFORMANCE.md).
pub const Q5_MIX_Q8: &[&str] = &["*.v_proj.weight"];

/// Block size of what `--quant q5-mix` stores in block int8 (v_proj and the head, where their
/// rows are whole blocks of it): a quarter bit a weight less than blocks of 32, which brought
/// SmolLM2's file under Q4_K_M's (105.37 MB against 105.45, before the header's tokenizer lost
/// 0.3 MB of escapes; KL on genesis 0.0922 → 0.0932).
const Q5_MIX_Q8_BLOCKSIZE: u32 = 64;

/// A scheme's own recipe of 8-bit (and 5-bit) weights among its 4-bit ones.
struct Recipe {
    /// Name patterns of the 8-bit weights.
    patterns: &'static [&'static str],
    /// Name patterns of the 5-bit weights.
    q5_patterns: &'static [&'static str],
    /// The MLPs of the first decoder layer and of the one before the last in 5 bits.
    q5_mlps: bool,
    /// The last decoder layer's MLP (its error goes straight into the logits).
    last_mlp: bool,
    /// The first decoder layer's MLP.
    first_mlp: bool,
    /// Every layer's down projection but the [`MIX_MIDDLE`] around the middle.
    downs: bool,
}

/// The linear weights `--quant nf4-plus` stores in block int8: with blocks of 32 elsewhere, the
/// one choice that put SmolLM2 ahead of llama.cpp's IQ4_NL at a smaller file (docs/PERFORMANCE.md).
pub const NF4_PLUS_Q8: &[&str] = &["*.v_proj.weight"];

/// Conversion settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertOptions {
    /// Scheme of the linear layers.
    pub quant: QuantChoice,
    /// 4-bit block size (64; any of 32 … 4096 that bitsandbytes accepts).
    pub blocksize: usize,
    /// Double-quantize 4-bit block scales (nested blocks of 256, as transformers does).
    pub double_quant: bool,
    /// LLM.int8 outlier threshold recorded for the runtime.
    pub int8_threshold: f32,
    /// Extra tensor-name patterns kept in high precision: a plain string matches any name
    /// containing it (`layers.0.`), a pattern with `*` is a glob over the whole name
    /// (`*.down_proj.weight`).
    pub keep: Vec<String>,
    /// Linear weights stored as block int8 (q8) when the scheme is 4-bit, by name pattern as
    /// `keep` (`*.v_proj.weight`); `nf4`, `nf4-mix` and `nf4-plus` add their recipes
    /// ([`ConvertOptions::eight_bit`]).
    pub q8: Vec<String>,
    /// Linear weights stored as block int5 (q5) when the scheme is 4-bit, by name pattern as
    /// `keep`; the 8-bit choices (`q8` and the recipes) win where both match.
    pub q5: Vec<String>,
    /// Quantize embeddings and lm_head too, with the main scheme.
    pub quantize_all: bool,
    /// Scheme of the output head (`lm_head.weight`, or the embedding when it is tied to the head)
    /// when the linear layers are quantized.
    pub head: HeadChoice,
    /// Rounding rule of double-quant codes: nearest (bitsandbytes on CUDA and its PyTorch
    /// backend; the default) or the lookup table of its CPU kernel.
    pub nested_rule: lowbit_kernels::NestedRule,
    /// bitsandbytes' own 4-bit quantizer (block absmax, nearest code), byte for byte, instead of
    /// the default that searches each block's scale and codes for the least |w|-weighted squared
    /// error
    /// ([`lowbit_kernels::fourbit::search_block`]); both are read by bitsandbytes the same way.
    pub bnb_exact: bool,
    /// PEFT LoRA adapters merged into the weights before quantization, in order.
    pub lora: Vec<crate::lora::LoraSpec>,
    /// Importance of each linear weight's input columns (`lowbit imatrix`): the 4-bit scale
    /// search weights each weight's error by its column's value too.
    pub imatrix: Option<std::sync::Arc<crate::imatrix::Imatrix>>,
}

impl ConvertOptions {
    /// The defaults with `quant` and its block size ([`QuantChoice::default_blocksize`]).
    pub fn for_quant(quant: QuantChoice) -> ConvertOptions {
        ConvertOptions { quant, blocksize: quant.default_blocksize(), ..ConvertOptions::default() }
    }
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            quant: QuantChoice::Nf4,
            blocksize: 64,
            double_quant: true,
            int8_threshold: 6.0,
            keep: Vec::new(),
            q8: Vec::new(),
            q5: Vec::new(),
            quantize_all: false,
            head: HeadChoice::Int8,
            nested_rule: lowbit_kernels::NestedRule::Nearest,
            bnb_exact: false,
            lora: Vec::new(),
            imatrix: None,
        }
    }
}

/// How the output head is stored when the linear layers are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadChoice {
    /// In the source's precision, as bitsandbytes leaves it.
    Source,
    /// 8-bit rows (the default): block int8 (`q8`, an f16 scale per 32 weights) where the rows
    /// are whole blocks, LLM.int8 otherwise; about half the bytes of f16. Decode reads the whole
    /// head for every token, so on a small model with a large vocabulary it is a large share of
    /// the bytes streamed; llama.cpp quantizes its head too (Q6_K/Q8_0). Block int8 has no
    /// outlier columns to handle, which makes it faster than LLM.int8 rows as well as closer to
    /// the source (docs/PERFORMANCE.md).
    #[default]
    Int8,
}

/// Block size of `--quant q8` (llama.cpp's Q8_0 uses the same).
pub const Q8_BLOCKSIZE: u32 = 32;

/// Weight names (suffixes) of the linear layers bitsandbytes replaces.
const LINEAR: [&str; 7] = [
    "q_proj.weight",
    "k_proj.weight",
    "v_proj.weight",
    "o_proj.weight",
    "gate_proj.weight",
    "up_proj.weight",
    "down_proj.weight",
];

/// The decoder layer of `name` when it is an MLP weight of the model itself (not a vision
/// tower's) in one of its `layers` layers.
fn mlp_layer(name: &str, layers: usize) -> Option<usize> {
    name.strip_prefix("model.layers.")
        .and_then(|rest| rest.split_once(".mlp."))
        .and_then(|(l, _)| l.parse::<usize>().ok())
        .filter(|&l| l < layers)
}

/// Whether `pattern` matches `name`: `*` globs (any run of characters) over the whole name;
/// without `*`, a substring match.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    if !pattern.contains('*') {
        return name.contains(pattern);
    }
    let pieces: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match rest.find(piece) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    true
}

/// The dense scheme matching a source dtype (float32 for anything that is not f16/bf16).
pub fn dense(dtype: SrcDtype) -> Scheme {
    match dtype {
        SrcDtype::F16 => Scheme::F16,
        SrcDtype::Bf16 => Scheme::Bf16,
        _ => Scheme::F32,
    }
}

impl ConvertOptions {
    /// Checks the options themselves.
    pub fn validate(&self) -> Result<()> {
        lowbit_kernels::fourbit::check_blocksize(self.blocksize)
            .map_err(|_| ConvertError::Config(format!("blocksize {} is not one of 32, 64, …, 4096", self.blocksize)))?;
        if !(self.int8_threshold.is_finite() && self.int8_threshold >= 0.0) {
            return Err(ConvertError::Config(format!(
                "int8 threshold {} is not a non-negative number",
                self.int8_threshold
            )));
        }
        if let Some(p) = self.keep.iter().chain(&self.q8).chain(&self.q5).find(|p| p.is_empty()) {
            return Err(ConvertError::Config(format!("pattern {p:?} would match every tensor")));
        }
        Ok(())
    }

    /// Whether `name` is kept in high precision by a `keep` pattern.
    pub fn kept(&self, name: &str) -> bool {
        self.keep.iter().any(|k| pattern_matches(k, name))
    }

    /// The scheme's own 8-bit recipe (`nf4 --bnb-exact` is bitsandbytes' layout, every linear
    /// weight in 4 bits).
    fn recipe_of(&self) -> Recipe {
        let none =
            Recipe { patterns: &[], q5_patterns: &[], q5_mlps: false, last_mlp: false, first_mlp: false, downs: false };
        match self.quant {
            QuantChoice::Nf4 if !self.bnb_exact => {
                Recipe { patterns: NF4_Q8, q5_patterns: NF4_Q5, q5_mlps: true, last_mlp: true, ..none }
            }
            QuantChoice::Nf4Mix => {
                Recipe { patterns: NF4_MIX_Q8, last_mlp: true, first_mlp: true, downs: true, ..none }
            }
            QuantChoice::Nf4Plus => Recipe { patterns: NF4_PLUS_Q8, ..none },
            QuantChoice::Q5Mix => Recipe { patterns: Q5_MIX_Q8, ..none },
            _ => none,
        }
    }

    /// Whether the 4-bit linear weight `name` of a model with `layers` decoder layers is stored
    /// in 8 bits instead (`--q8` patterns and the scheme's recipe).
    pub fn eight_bit(&self, name: &str, layers: usize) -> bool {
        let r = self.recipe_of();
        // Layers mid − 2 ..= mid + 1 (13–16 of 30), in models deep enough to spare them.
        let mid = layers / 2;
        let middle = |l: usize| layers >= 2 * MIX_MIDDLE && l + MIX_MIDDLE / 2 >= mid && l < mid + MIX_MIDDLE / 2;
        let by_layer = mlp_layer(name, layers).is_some_and(|l| {
            (r.last_mlp && l + 1 == layers)
                || (r.first_mlp && l == 0)
                || (r.downs && name.ends_with(".mlp.down_proj.weight") && !middle(l))
        });
        by_layer
            || self.q8.iter().map(String::as_str).chain(r.patterns.iter().copied()).any(|p| pattern_matches(p, name))
    }

    /// Whether the 4-bit linear weight `name` of a model with `layers` decoder layers is stored
    /// in block int5 instead, where it is not in 8 bits (`--q5` patterns and the scheme's
    /// recipe).
    pub fn five_bit(&self, name: &str, layers: usize) -> bool {
        let r = self.recipe_of();
        let by_layer = r.q5_mlps && mlp_layer(name, layers).is_some_and(|l| l == 0 || l + 2 == layers);
        by_layer
            || self.q5.iter().map(String::as_str).chain(r.q5_patterns.iter().copied()).any(|p| pattern_matches(p, name))
    }

    /// What the scheme's recipe puts in 8 bits, for the conversion cache's key (a recipe that
    /// changes makes a new conversion).
    pub fn recipe(&self) -> String {
        let r = self.recipe_of();
        let mut key = r.patterns.join(",");
        let downs = format!("+downs-but-middle-{MIX_MIDDLE}");
        let q5 = format!("+q5:{}", r.q5_patterns.join(","));
        for (on, part) in [
            (r.last_mlp, "+last-mlp"),
            (r.first_mlp, "+first-mlp"),
            (r.downs, downs.as_str()),
            (!r.q5_patterns.is_empty(), q5.as_str()),
            (r.q5_mlps, "+q5-first-and-second-last-mlp"),
        ] {
            if on {
                key.push_str(part);
            }
        }
        key
    }

    /// Whether `name` (of rank `rank`) is quantized with the chosen 4-bit/int8 scheme.
    pub fn quantizes(&self, name: &str, rank: usize) -> bool {
        if self.quant.dense().is_some() || rank != 2 || self.kept(name) {
            return false;
        }
        LINEAR.iter().any(|l| name.ends_with(&format!(".{l}")))
            || (self.quantize_all && (name == "model.embed_tokens.weight" || name == "lm_head.weight"))
    }

    /// The scheme of tensor `name`, which is `kept` when not quantized. `tied`: the embedding
    /// doubles as the output head; `layers`: the model's decoder layers.
    pub fn scheme_for(
        &self,
        name: &str,
        shape: &[usize],
        kept: Scheme,
        orig_dtype: &str,
        tied: bool,
        layers: usize,
    ) -> Scheme {
        let rank = shape.len();
        // Block int8 needs whole blocks per row; a matrix without them gets LLM.int8 rows.
        let whole = |bs: u32| shape.last().is_some_and(|c| c % bs as usize == 0);
        let q8 = if whole(Q8_BLOCKSIZE) { Scheme::Q8 { blocksize: Q8_BLOCKSIZE } } else { Scheme::Int8 };
        if let Some(d) = self.quant.dense() {
            return d;
        }
        if !self.quantizes(name, rank) {
            let head = name == "lm_head.weight" || (tied && name == "model.embed_tokens.weight");
            return if head && rank == 2 && self.head == HeadChoice::Int8 && !self.kept(name) {
                // The 8-bit head: block int8 where the rows are whole blocks, LLM.int8 otherwise.
                match self.quant {
                    QuantChoice::Q5Mix if whole(Q5_MIX_Q8_BLOCKSIZE) => Scheme::Q8 { blocksize: Q5_MIX_Q8_BLOCKSIZE },
                    _ => q8,
                }
            } else {
                kept
            };
        }
        match self.quant {
            QuantChoice::Int8 => Scheme::Int8,
            QuantChoice::Q8 => q8,
            QuantChoice::Q5Mix if self.eight_bit(name, layers) && whole(Q5_MIX_Q8_BLOCKSIZE) => {
                Scheme::Q8 { blocksize: Q5_MIX_Q8_BLOCKSIZE }
            }
            _ if self.eight_bit(name, layers) => q8,
            // Block int5 where the rows are whole blocks, else the 8-bit choice.
            QuantChoice::Q5 | QuantChoice::Q5Mix if whole(lowbit_format::Q5_BLOCKSIZES[0]) => {
                Scheme::Q5 { blocksize: lowbit_format::Q5_BLOCKSIZES[0] }
            }
            QuantChoice::Q5 | QuantChoice::Q5Mix => q8,
            // `--q5` weights of a 4-bit scheme, where the rows are whole blocks.
            _ if whole(lowbit_format::Q5_BLOCKSIZES[0]) && self.five_bit(name, layers) => {
                Scheme::Q5 { blocksize: lowbit_format::Q5_BLOCKSIZES[0] }
            }
            q => Scheme::FourBit {
                kind: if q == QuantChoice::Fp4 { FourBitKind::Fp4 } else { FourBitKind::Nf4 },
                blocksize: self.blocksize as u32,
                nested: self
                    .double_quant
                    .then_some(Nested { blocksize: lowbit_kernels::fourbit::NESTED_BLOCKSIZE as u32 }),
                orig_dtype: orig_dtype.to_string(),
            },
        }
    }

    fn settings(&self, source_format: &str) -> QuantSettings {
        let four = matches!(
            self.quant,
            QuantChoice::Nf4 | QuantChoice::Nf4Small | QuantChoice::Nf4Mix | QuantChoice::Nf4Plus | QuantChoice::Fp4
        );
        QuantSettings {
            scheme: self.quant.label().into(),
            blocksize: if four {
                Some(self.blocksize as u32)
            } else {
                matches!(self.quant, QuantChoice::Q8 | QuantChoice::Q5 | QuantChoice::Q5Mix).then_some(Q8_BLOCKSIZE)
            },
            double_quant: four && self.double_quant,
            int8_threshold: self.int8_threshold,
            kept: self.keep.clone(),
            source_format: source_format.into(),
        }
    }
}

/// How one output tensor is made.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    /// Converted from a float source tensor (safetensors, or a GGUF tensor read as f32).
    Float {
        /// Name (source and output).
        name: String,
        /// Source element type.
        dtype: SrcDtype,
        /// Shape.
        shape: Vec<usize>,
        /// Output scheme.
        scheme: Scheme,
    },
    /// Taken over byte for byte from a bitsandbytes checkpoint.
    Bnb(BnbTensor),
    /// A bitsandbytes tensor dequantized into a dense scheme (`--quant f16`, `--keep`).
    BnbDense(BnbTensor, Scheme),
}

impl Job {
    /// Output name.
    pub fn name(&self) -> &str {
        match self {
            Job::Float { name, .. } => name,
            Job::Bnb(b) | Job::BnbDense(b, _) => b.name(),
        }
    }

    /// Output shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Job::Float { shape, .. } => shape,
            Job::Bnb(b) | Job::BnbDense(b, _) => b.shape(),
        }
    }

    /// Output scheme.
    pub fn scheme(&self) -> Scheme {
        match self {
            Job::Float { scheme, .. } | Job::BnbDense(_, scheme) => scheme.clone(),
            Job::Bnb(b) => b.scheme(),
        }
    }
}

/// A prepared conversion: everything known and checked, nothing written yet.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Header metadata (source digests still empty).
    pub metadata: Metadata,
    /// Output tensors in file order.
    pub jobs: Vec<Job>,
    /// Things to tell the user.
    pub warnings: Vec<String>,
    /// Source files to digest.
    pub files: Vec<PathBuf>,
}

fn converter_info() -> ConverterInfo {
    ConverterInfo { name: "lowbit".into(), version: env!("CARGO_PKG_VERSION").into() }
}

/// The architecture's tensors that are missing, or unknown ones, as errors / warnings.
fn check_complete(dims: &Dims, jobs: &[Job], warnings: &mut Vec<String>) -> Result<()> {
    let have: HashSet<&str> = jobs.iter().map(Job::name).collect();
    if let Some(m) = dims.required().into_iter().find(|r| !have.contains(r.as_str())) {
        return Err(ConvertError::MissingTensor(m));
    }
    if dims.tied && have.contains("lm_head.weight") {
        warnings.push("tie_word_embeddings is set but the checkpoint has an lm_head.weight; it is stored too".into());
    }
    Ok(())
}

/// Reads an optional JSON file that must hold an object.
fn read_json_object(path: &Path) -> Result<Option<Value>> {
    let Some(text) = sidefile::read(path, sidefile::MAX_JSON_BYTES)? else { return Ok(None) };
    let bad = |problem: String| ConvertError::BadJson { what: path.display().to_string(), problem };
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if !v.is_object() {
        return Err(bad("not a JSON object".into()));
    }
    Ok(Some(v))
}

/// The chat template in tokenizer_config.json: a string, or transformers' list of named
/// templates (the one named "default", else the first).
fn template_of(tokenizer_config: &Value) -> Option<String> {
    match tokenizer_config.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => {
            let named = |n: &str| list.iter().find(|t| t.get("name").and_then(Value::as_str) == Some(n));
            named("default").or(list.first())?.get("template")?.as_str().map(str::to_string)
        }
        _ => None,
    }
}

/// Checks a tokenizer.json loads with the `tokenizers` version the runtime uses. That library
/// panics on some malformed parts (a `decoder` of neither of its layouts), which counts as not
/// loading here, as it does in the runtime.
fn check_tokenizer(text: &str, warnings: &mut Vec<String>) {
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| text.parse::<tokenizers::Tokenizer>()));
    let problem = match parsed {
        Ok(Ok(_)) => return,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "the tokenizers library failed on it".to_string(),
    };
    warnings.push(format!("tokenizer.json does not load with tokenizers 0.22 ({problem}); text input will fail"));
}

/// Plans the conversion of a Hugging Face folder.
pub fn plan_folder(dir: &Path, src: &SafetensorsSource, opts: &ConvertOptions) -> Result<Plan> {
    let mut warnings = Vec::new();
    let cfg_path = dir.join("config.json");
    let mut config = read_json_object(&cfg_path)?.ok_or_else(|| ConvertError::Missing(cfg_path.clone()))?;
    let dims = normalise(&mut config, &mut warnings)?;
    let qconfig = bnb::quant_config(&config)?;
    let mut files = vec![cfg_path];

    let tok_path = dir.join("tokenizer.json");
    let tokenizer_json = match sidefile::read(&tok_path, sidefile::MAX_TOKENIZER_BYTES)? {
        Some(t) => {
            check_tokenizer(&t, &mut warnings);
            files.push(tok_path);
            Some(t)
        }
        None => {
            warnings.push("no tokenizer.json: the file will only accept token ids".into());
            None
        }
    };
    let tc_path = dir.join("tokenizer_config.json");
    let tokenizer_config = read_json_object(&tc_path)?;
    if tokenizer_config.is_some() {
        files.push(tc_path);
    }
    let jinja = dir.join("chat_template.jinja");
    let chat_template = match sidefile::read(&jinja, sidefile::MAX_TEMPLATE_BYTES)? {
        Some(t) => {
            files.push(jinja);
            Some(t)
        }
        None => tokenizer_config.as_ref().and_then(template_of),
    };
    let gen_path = dir.join("generation_config.json");
    let generation_config = read_json_object(&gen_path)?;
    if generation_config.is_some() {
        files.push(gen_path);
    }

    let pre = bnb::detect(src)?;
    let pre_names: HashSet<String> = pre.iter().map(|b| b.name().to_string()).collect();
    let mut jobs: Vec<Job> = Vec::new();
    let mut pre_schemes: Vec<Scheme> = Vec::new();
    let mut dequantized = 0usize;
    for b in pre {
        dims.check(b.name(), b.shape())?;
        let orig = match &b {
            BnbTensor::FourBit { orig_dtype, .. } => orig_dtype.as_str(),
            BnbTensor::Int8 { .. } => "float16",
        };
        if let Some(d) = opts.quant.dense() {
            jobs.push(Job::BnbDense(b, d));
            dequantized += 1;
        } else if opts.kept(b.name()) {
            let kept = match orig {
                "bfloat16" => Scheme::Bf16,
                "float32" => Scheme::F32,
                _ => Scheme::F16,
            };
            jobs.push(Job::BnbDense(b, kept));
            dequantized += 1;
        } else {
            if !pre_schemes.contains(&b.scheme()) {
                pre_schemes.push(b.scheme());
            }
            jobs.push(Job::Bnb(b));
        }
    }
    let prequantized = !pre_names.is_empty();
    for t in src.list() {
        if pre_names.contains(&t.name) || bnb::is_aux(&t.name) {
            continue;
        }
        if !t.dtype.is_float() {
            if qconfig.is_some() && t.name.ends_with(".weight") && matches!(t.dtype, SrcDtype::U8 | SrcDtype::I8) {
                return Err(ConvertError::quant_state(
                    &t.name,
                    "quantized weight without its quant state (quant_state.* or SCB)",
                ));
            }
            return Err(ConvertError::UnsupportedDtype { tensor: t.name.clone(), dtype: t.dtype_name.clone() });
        }
        match dims.check(&t.name, &t.shape)? {
            Expect::Skip => continue,
            Expect::Unknown => {
                warnings.push(format!("tensor {} is not part of the architecture; stored as it is", t.name))
            }
            Expect::Shape(_) => {}
        }
        // In a pre-quantized checkpoint the unquantized tensors (norms, embeddings, lm_head and
        // any module bitsandbytes skipped) stay as they are, unless everything goes dense.
        let scheme = if prequantized && opts.quant.dense().is_none() {
            dense(t.dtype)
        } else {
            opts.scheme_for(&t.name, &t.shape, dense(t.dtype), t.dtype.torch_name(), dims.tied, dims.layers)
        };
        jobs.push(Job::Float { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone(), scheme });
    }
    check_complete(&dims, &jobs, &mut warnings)?;

    let quantization = if prequantized {
        prequantized_settings(opts, &pre_schemes, qconfig.and_then(|q| q.int8_threshold), dequantized, &mut warnings)
    } else {
        if qconfig.is_some() {
            warnings.push("config.json has a bitsandbytes quantization_config but no tensor is quantized".into());
        }
        opts.settings("safetensors")
    };
    let metadata = Metadata {
        architecture: dims.model_type.clone(),
        config,
        tokenizer_json,
        tokenizer_config,
        chat_template,
        generation_config,
        quantization,
        converter: converter_info(),
        sources: Vec::new(),
        adapters: Vec::new(),
    };
    files.extend(src.files());
    Ok(Plan { metadata, jobs, warnings, files })
}

/// Quantization settings of a bitsandbytes checkpoint: what its tensors are, not what the
/// options asked for (nothing is requantized).
fn prequantized_settings(
    opts: &ConvertOptions,
    schemes: &[Scheme],
    threshold: Option<f32>,
    dequantized: usize,
    warnings: &mut Vec<String>,
) -> QuantSettings {
    let mut s = opts.settings("bitsandbytes");
    if let Some(t) = threshold {
        s.int8_threshold = t;
    }
    if opts.quant.dense().is_some() {
        warnings.push(format!("bitsandbytes checkpoint dequantized to {} ({dequantized} tensors)", opts.quant.label()));
        return s;
    }
    if opts.quantize_all {
        warnings.push("bitsandbytes checkpoint: --quantize-all ignored (its quantization is taken over as is)".into());
    }
    match schemes {
        [] => {}
        [one] => {
            s.scheme = one.label().into();
            (s.blocksize, s.double_quant) = match one {
                Scheme::FourBit { blocksize, nested, .. } => (Some(*blocksize), nested.is_some()),
                _ => (None, false),
            };
        }
        many => {
            s.scheme = "mixed".into();
            s.blocksize = None;
            s.double_quant = false;
            warnings.push(format!("bitsandbytes checkpoint mixes {} schemes", many.len()));
        }
    }
    if s.scheme != opts.quant.label() {
        warnings.push(format!(
            "bitsandbytes checkpoint is {}: its quantization is taken over losslessly, not redone as {}",
            s.scheme,
            opts.quant.label()
        ));
    }
    s
}

/// Plans the conversion of a GGUF file.
pub fn plan_gguf(src: &GgufSource, opts: &ConvertOptions) -> Result<Plan> {
    let mut warnings = Vec::new();
    let model = src.model();
    let mut config = model.config();
    let dims = normalise(&mut config, &mut warnings)?;
    warnings
        .extend(model.skipped().iter().map(|s| format!("GGUF tensor {s} has no Hugging Face counterpart; skipped")));
    let tokenizer_json = model.tokenizer_json().map_err(|e| src.error(e))?;
    match &tokenizer_json {
        Some(t) => check_tokenizer(t, &mut warnings),
        None => warnings.push("the GGUF file has no tokenizer: the output will only accept token ids".into()),
    }
    let mut jobs = Vec::new();
    for t in src.list() {
        match dims.check(&t.name, &t.shape)? {
            Expect::Skip => continue,
            Expect::Unknown => {
                warnings.push(format!("tensor {} is not part of the architecture; stored as it is", t.name))
            }
            Expect::Shape(_) => {}
        }
        // High-precision tensors keep F32/F16/BF16 sources exactly; dequantized ggml blocks go to
        // float16 (their error is far below the quantization they came from).
        use crate::gguf::GgmlType;
        let kept = match src.ggml_type(&t.name) {
            Some(GgmlType::F32) => Scheme::F32,
            Some(GgmlType::BF16) => Scheme::Bf16,
            _ => Scheme::F16,
        };
        let scheme = opts.scheme_for(&t.name, &t.shape, kept, "float32", dims.tied, dims.layers);
        jobs.push(Job::Float { name: t.name.clone(), dtype: SrcDtype::F32, shape: t.shape.clone(), scheme });
    }
    check_complete(&dims, &jobs, &mut warnings)?;
    let tokenizer_config = Some(model.tokenizer_config()).filter(Value::is_object);
    let metadata = Metadata {
        architecture: dims.model_type.clone(),
        config,
        tokenizer_json,
        tokenizer_config,
        chat_template: model.chat_template(),
        generation_config: None,
        quantization: opts.settings("gguf"),
        converter: converter_info(),
        sources: Vec::new(),
        adapters: Vec::new(),
    };
    Ok(Plan { metadata, jobs, warnings, files: vec![src.path().to_path_buf()] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_substrings() {
        let n = "model.layers.10.mlp.down_proj.weight";
        assert!(pattern_matches("down_proj", n));
        assert!(pattern_matches("*.down_proj.weight", n));
        assert!(pattern_matches("model.layers.1*", n));
        assert!(pattern_matches("*layers.*.mlp*", n));
        assert!(!pattern_matches("*.up_proj.weight", n));
        assert!(!pattern_matches("layers.1*", n), "globs match the whole name");
        assert!(pattern_matches("*", n));
        assert!(!pattern_matches("model*weight*x", n));
    }

    #[test]
    fn default_policy_quantizes_only_the_linear_layers() {
        let o = ConvertOptions::default();
        for n in ["model.layers.0.self_attn.q_proj.weight", "model.layers.3.mlp.down_proj.weight"] {
            assert!(o.quantizes(n, 2), "{n}");
        }
        for n in
            ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight", "model.layers.0.self_attn.q_proj.bias"]
        {
            assert!(!o.quantizes(n, 2), "{n}");
        }
        let all = ConvertOptions { quantize_all: true, ..Default::default() };
        assert!(all.quantizes("lm_head.weight", 2));
        let keep = ConvertOptions { keep: vec!["*.down_proj.weight".into()], ..Default::default() };
        assert!(!keep.quantizes("model.layers.3.mlp.down_proj.weight", 2));
        assert_eq!(
            keep.scheme_for("model.layers.3.mlp.down_proj.weight", &[4, 4], Scheme::Bf16, "bfloat16", false, 4),
            Scheme::Bf16
        );
        let f16 = ConvertOptions { quant: QuantChoice::F16, ..Default::default() };
        assert_eq!(f16.scheme_for("model.norm.weight", &[4], Scheme::F32, "float32", false, 4), Scheme::F16);
    }

    #[test]
    fn q8_patterns_and_the_nf4_mix() {
        let scheme =
            |o: &ConvertOptions, n: &str, cols: usize| o.scheme_for(n, &[8, cols], Scheme::F32, "float32", false, 24);
        let is_four = |s: Scheme| matches!(s, Scheme::FourBit { kind: FourBitKind::Nf4, .. });
        let q8 = Scheme::Q8 { blocksize: Q8_BLOCKSIZE };
        // nf4-mix (24 layers): v, k, the first and last layers' MLPs, and the down projections
        // of all layers but 10–13.
        let mix = ConvertOptions { quant: QuantChoice::Nf4Mix, ..Default::default() };
        for n in [
            "model.layers.2.self_attn.v_proj.weight",
            "model.layers.2.self_attn.k_proj.weight",
            "model.layers.0.mlp.up_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.9.mlp.down_proj.weight",
            "model.layers.14.mlp.down_proj.weight",
            "model.layers.23.mlp.gate_proj.weight",
        ] {
            assert_eq!(scheme(&mix, n, 64), q8, "{n}");
            // Rows that are not whole blocks of 32 get LLM.int8 rows instead.
            assert_eq!(scheme(&mix, n, 48), Scheme::Int8, "{n}");
        }
        for n in [
            "model.layers.2.self_attn.q_proj.weight",
            "model.layers.2.mlp.up_proj.weight",
            "model.layers.10.mlp.down_proj.weight",
            "model.layers.13.mlp.down_proj.weight",
            "vision.model.layers.9.mlp.down_proj.weight",
        ] {
            assert!(is_four(scheme(&mix, n, 64)), "{n}");
        }
        // Below eight layers every down projection stays in 8 bits; from eight on, the middle
        // four (2–5 of 8) go to 4 bits.
        let down = |l: usize, layers: usize| {
            let n = format!("model.layers.{l}.mlp.down_proj.weight");
            mix.scheme_for(&n, &[8, 64], Scheme::F32, "float32", false, layers)
        };
        assert!((0..7).all(|l| down(l, 7) == q8));
        assert_eq!((0..8).filter(|&l| is_four(down(l, 8))).collect::<Vec<_>>(), [2, 3, 4, 5]);
        assert_ne!(mix.recipe(), ConvertOptions::default().recipe());
        // nf4: v_proj and the last layer's MLP in block int8, k_proj and the MLPs of the first
        // layer and of the one before the last in block int5; nf4-small and bitsandbytes' own
        // layout (`--bnb-exact`) every linear weight in 4 bits.
        let nf4 = ConvertOptions::default();
        let small = ConvertOptions::for_quant(QuantChoice::Nf4Small);
        let exact = ConvertOptions { bnb_exact: true, ..Default::default() };
        let q5 = Scheme::Q5 { blocksize: 32 };
        for (n, want) in [
            ("model.layers.2.self_attn.v_proj.weight", q8.clone()),
            ("model.layers.23.mlp.gate_proj.weight", q8.clone()),
            ("model.layers.23.mlp.up_proj.weight", q8.clone()),
            ("model.layers.23.mlp.down_proj.weight", q8.clone()),
            ("model.layers.2.self_attn.k_proj.weight", q5.clone()),
            ("model.layers.0.mlp.up_proj.weight", q5.clone()),
            ("model.layers.22.mlp.down_proj.weight", q5.clone()),
        ] {
            assert_eq!(scheme(&nf4, n, 64), want, "{n}");
            assert!(is_four(scheme(&small, n, 64)) && is_four(scheme(&exact, n, 64)), "{n}");
        }
        for n in [
            "model.layers.23.self_attn.q_proj.weight",
            "model.layers.21.mlp.down_proj.weight",
            "model.layers.2.mlp.up_proj.weight",
            "vision.model.layers.23.mlp.up_proj.weight",
        ] {
            assert!(is_four(scheme(&nf4, n, 64)), "{n}");
        }
        // Rows that are not whole blocks of 32 stay in 4 bits.
        assert!(is_four(scheme(&nf4, "model.layers.0.mlp.up_proj.weight", 48)));
        assert_ne!(nf4.recipe(), small.recipe());
        assert_ne!(nf4.recipe(), exact.recipe());
        let one = ConvertOptions { q8: vec!["layers.1.".into()], ..ConvertOptions::for_quant(QuantChoice::Nf4Small) };
        assert_eq!(scheme(&one, "model.layers.1.mlp.up_proj.weight", 64), q8);
        assert!(is_four(scheme(&one, "model.layers.11.mlp.up_proj.weight", 64)));
        // Only 4-bit layers change: with another scheme the pattern does nothing, and a kept
        // tensor stays kept.
        let int8 = ConvertOptions { quant: QuantChoice::Int8, q8: vec!["up_proj".into()], ..Default::default() };
        assert_eq!(scheme(&int8, "model.layers.23.mlp.up_proj.weight", 64), Scheme::Int8);
        assert_eq!(scheme(&int8, "model.layers.1.mlp.up_proj.weight", 64), Scheme::Int8);
        let kept = ConvertOptions { keep: vec!["up_proj".into()], q8: vec!["up_proj".into()], ..Default::default() };
        assert_eq!(scheme(&kept, "model.layers.1.mlp.up_proj.weight", 64), Scheme::F32);
        assert_eq!(mix.settings("gguf").scheme, "nf4-mix");
        assert!(mix.settings("gguf").double_quant);
        // nf4-plus: v_proj in block int8, the rest nf4 in blocks of 32.
        let plus = ConvertOptions::for_quant(QuantChoice::Nf4Plus);
        assert_eq!(scheme(&plus, "model.layers.2.self_attn.v_proj.weight", 64), q8);
        for n in ["model.layers.2.self_attn.k_proj.weight", "model.layers.0.mlp.down_proj.weight"] {
            assert!(matches!(scheme(&plus, n, 64), Scheme::FourBit { blocksize: 32, .. }), "{n}");
        }
        assert_eq!((plus.settings("gguf").scheme.as_str(), plus.settings("gguf").blocksize), ("nf4-plus", Some(32)));
        // `--q5`: block int5 for a 4-bit scheme's weights where the rows hold whole blocks; the
        // 8-bit choices win; other schemes ignore it.
        let q5 = Scheme::Q5 { blocksize: 32 };
        let five = ConvertOptions {
            q5: vec!["k_proj".into(), "layers.1.".into()],
            ..ConvertOptions::for_quant(QuantChoice::Nf4Plus)
        };
        assert_eq!(scheme(&five, "model.layers.2.self_attn.k_proj.weight", 64), q5);
        assert_eq!(scheme(&five, "model.layers.1.self_attn.v_proj.weight", 64), q8);
        assert!(is_four(scheme(&five, "model.layers.1.self_attn.k_proj.weight", 48)));
        assert!(is_four(scheme(&five, "model.layers.2.mlp.up_proj.weight", 64)));
        let q8_five = ConvertOptions { q5: vec!["k_proj".into()], ..ConvertOptions::for_quant(QuantChoice::Q8) };
        assert_eq!(scheme(&q8_five, "model.layers.2.self_attn.k_proj.weight", 64), q8);
        assert!(ConvertOptions { q5: vec![String::new()], ..Default::default() }.validate().is_err());
        // q5 and q5-mix: v_proj (q5-mix) and the head in blocks of 64 where the rows hold them.
        let (q5c, mix5) = (ConvertOptions::for_quant(QuantChoice::Q5), ConvertOptions::for_quant(QuantChoice::Q5Mix));
        assert_eq!(scheme(&q5c, "model.layers.2.self_attn.v_proj.weight", 64), q5);
        assert_eq!(scheme(&mix5, "model.layers.2.self_attn.v_proj.weight", 64), Scheme::Q8 { blocksize: 64 });
        assert_eq!(scheme(&mix5, "model.layers.2.self_attn.v_proj.weight", 96), q8);
        assert_eq!(scheme(&mix5, "model.layers.2.mlp.down_proj.weight", 64), q5);
        assert_eq!(scheme(&mix5, "model.layers.2.mlp.down_proj.weight", 48), Scheme::Int8);
    }

    #[test]
    fn options_are_validated() {
        assert!(ConvertOptions::default().validate().is_ok());
        for o in [
            ConvertOptions { blocksize: 48, ..Default::default() },
            ConvertOptions { int8_threshold: f32::NAN, ..Default::default() },
            ConvertOptions { keep: vec![String::new()], ..Default::default() },
            ConvertOptions { q8: vec![String::new()], ..Default::default() },
        ] {
            assert!(matches!(o.validate(), Err(ConvertError::Config(_))), "{o:?}");
        }
    }
}
