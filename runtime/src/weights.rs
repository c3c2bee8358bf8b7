//! Typed views of the model's tensors, straight over the mmapped file: building them checks
//! names, shapes and schemes once, and copies nothing but the small norm and bias vectors.

use crate::config::ModelConfig;
use crate::error::{Result, RuntimeError};
use lowbit_format::{ModelFile, Scheme, TensorRef};
use lowbit_kernels::{AbsmaxRef, FourBitKind, FourBitRef, Int8Ref, Q5Ref, Q8Ref, Weight};

fn bad(name: &str, problem: impl Into<String>) -> RuntimeError {
    RuntimeError::BadTensor { name: name.to_string(), problem: problem.into() }
}

fn tensor<'a>(file: &'a ModelFile, name: &str) -> Result<TensorRef<'a>> {
    file.tensor(name).ok_or_else(|| RuntimeError::MissingTensor { name: name.to_string() })
}

fn shape_of(t: &TensorRef) -> Vec<usize> {
    t.info.shape.iter().map(|&d| d as usize).collect()
}

/// A 2-D weight `rows × cols` as a kernel view.
pub fn matrix<'a>(file: &'a ModelFile, name: &str, rows: usize, cols: usize) -> Result<Weight<'a>> {
    let t = tensor(file, name)?;
    if shape_of(&t) != [rows, cols] {
        return Err(bad(name, format!("shape {:?}, expected [{rows}, {cols}]", t.info.shape)));
    }
    let w = match &t.info.scheme {
        Scheme::F32 => Weight::F32 { rows, cols, data: t.part_f32("data")? },
        Scheme::F16 => Weight::F16 { rows, cols, data: bytemuck::cast_slice(t.part_u16("data")?) },
        Scheme::Bf16 => Weight::Bf16 { rows, cols, data: bytemuck::cast_slice(t.part_u16("data")?) },
        Scheme::Int8 => {
            let cb = t.part_i8("cb")?;
            // LLM.int8 codes are round(127·w / row absmax), within −127..=127; the AVX2 kernels'
            // sign trick would read a −128 as +128 against negative activations, so a file
            // holding one (not written by LLM.int8) is refused rather than run wrong.
            if bytemuck::cast_slice::<i8, u8>(cb).contains(&0x80) {
                let at = cb.iter().position(|&v| v == i8::MIN).unwrap_or(0);
                let (r, c) = (at / cols.max(1), at % cols.max(1));
                return Err(bad(
                    name,
                    format!("LLM.int8 code -128 at row {r}, column {c} (LLM.int8 codes lie in -127..=127)"),
                ));
            }
            Weight::Int8(Int8Ref { rows, cols, cb, scb: t.part_f32("scb")? })
        }
        Scheme::Q8 { blocksize } => Weight::Q8(Q8Ref {
            rows,
            cols,
            blocksize: *blocksize as usize,
            qs: t.part_i8("qs")?,
            scales: bytemuck::cast_slice(t.part_u16("scales")?),
        }),
        Scheme::Q5 { .. } => Weight::Q5(Q5Ref {
            rows,
            cols,
            qs: t.part_u8("qs")?,
            qh: t.part_u8("qh")?,
            scales: bytemuck::cast_slice(t.part_u16("scales")?),
        }),
        Scheme::FourBit { kind, blocksize, nested, .. } => {
            let kind = match kind {
                lowbit_format::FourBitKind::Nf4 => FourBitKind::Nf4,
                lowbit_format::FourBitKind::Fp4 => FourBitKind::Fp4,
            };
            let absmax = match nested {
                None => AbsmaxRef::F32(t.part_f32("absmax")?),
                Some(n) => AbsmaxRef::Nested {
                    codes: t.part("absmax")?,
                    nested_absmax: t.part_f32("nested_absmax")?,
                    nested_blocksize: n.blocksize as usize,
                    offset: t.part_f32("nested_offset")?[0],
                },
            };
            Weight::FourBit(FourBitRef {
                kind,
                rows,
                cols,
                blocksize: *blocksize as usize,
                codes: t.part("codes")?,
                absmax,
            })
        }
    };
    w.validate().map_err(|e| bad(name, e.to_string()))?;
    Ok(w)
}

/// A 1-D tensor of length `len` (norm weights, biases), converted to f32.
pub fn vector(file: &ModelFile, name: &str, len: usize) -> Result<Vec<f32>> {
    let t = tensor(file, name)?;
    if shape_of(&t) != [len] {
        return Err(bad(name, format!("shape {:?}, expected [{len}]", t.info.shape)));
    }
    let w = match &t.info.scheme {
        Scheme::F32 => Weight::F32 { rows: 1, cols: len, data: t.part_f32("data")? },
        Scheme::F16 => Weight::F16 { rows: 1, cols: len, data: bytemuck::cast_slice(t.part_u16("data")?) },
        Scheme::Bf16 => Weight::Bf16 { rows: 1, cols: len, data: bytemuck::cast_slice(t.part_u16("data")?) },
        other => return Err(bad(name, format!("vectors must be dense, found {other:?}"))),
    };
    w.validate().map_err(|e| bad(name, e.to_string()))?;
    let mut out = vec![0f32; len];
    w.dequantize_row(0, &mut out);
    Ok(out)
}

/// One decoder layer's weights.
#[derive(Debug)]
pub struct LayerWeights<'a> {
    /// RMSNorm before attention.
    pub input_norm: Vec<f32>,
    /// Query projection (heads·head_dim × hidden).
    pub q: Weight<'a>,
    /// Key projection.
    pub k: Weight<'a>,
    /// Value projection.
    pub v: Weight<'a>,
    /// Output projection.
    pub o: Weight<'a>,
    /// Optional q/k/v biases (Qwen2).
    pub qkv_bias: Option<[Vec<f32>; 3]>,
    /// RMSNorm before the MLP.
    pub post_norm: Vec<f32>,
    /// MLP gate.
    pub gate: Weight<'a>,
    /// MLP up.
    pub up: Weight<'a>,
    /// MLP down.
    pub down: Weight<'a>,
}

/// All weights of a model, borrowed from the file.
#[derive(Debug)]
pub struct ModelWeights<'a> {
    /// Token embeddings (vocab × hidden).
    pub embed: Weight<'a>,
    /// Decoder layers.
    pub layers: Vec<LayerWeights<'a>>,
    /// Final RMSNorm.
    pub norm: Vec<f32>,
    /// Output projection (vocab × hidden); the embedding when tied.
    pub lm_head: Weight<'a>,
}

impl<'a> ModelWeights<'a> {
    /// Finds and checks every tensor the configuration calls for.
    pub fn load(file: &'a ModelFile, c: &ModelConfig) -> Result<ModelWeights<'a>> {
        let h = c.hidden_size;
        let qd = c.num_heads * c.head_dim;
        let kvd = c.num_kv_heads * c.head_dim;
        let embed = matrix(file, "model.embed_tokens.weight", c.vocab_size, h)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let qkv_bias = if c.attention_bias {
                Some([
                    vector(file, &format!("{p}.self_attn.q_proj.bias"), qd)?,
                    vector(file, &format!("{p}.self_attn.k_proj.bias"), kvd)?,
                    vector(file, &format!("{p}.self_attn.v_proj.bias"), kvd)?,
                ])
            } else {
                None
            };
            layers.push(LayerWeights {
                input_norm: vector(file, &format!("{p}.input_layernorm.weight"), h)?,
                q: matrix(file, &format!("{p}.self_attn.q_proj.weight"), qd, h)?,
                k: matrix(file, &format!("{p}.self_attn.k_proj.weight"), kvd, h)?,
                v: matrix(file, &format!("{p}.self_attn.v_proj.weight"), kvd, h)?,
                o: matrix(file, &format!("{p}.self_attn.o_proj.weight"), h, qd)?,
                qkv_bias,
                post_norm: vector(file, &format!("{p}.post_attention_layernorm.weight"), h)?,
                gate: matrix(file, &format!("{p}.mlp.gate_proj.weight"), c.intermediate_size, h)?,
                up: matrix(file, &format!("{p}.mlp.up_proj.weight"), c.intermediate_size, h)?,
                down: matrix(file, &format!("{p}.mlp.down_proj.weight"), h, c.intermediate_size)?,
            });
        }
        let lm_head = match file.tensor("lm_head.weight") {
            Some(_) => matrix(file, "lm_head.weight", c.vocab_size, h)?,
            None if c.tie_word_embeddings => embed,
            None => return Err(RuntimeError::MissingTensor { name: "lm_head.weight".into() }),
        };
        Ok(ModelWeights { embed, layers, norm: vector(file, "model.norm.weight", h)?, lm_head })
    }
}
