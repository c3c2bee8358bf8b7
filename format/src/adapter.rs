//! The values of a LoRA adapter's matrices as a loader hands them to the runtime: read into
//! memory (a PEFT folder's tensors, widened to f32), or a tensor of a mapped adapter file that
//! the runtime reads in place.

use crate::ModelFile;
use std::sync::Arc;

/// One adapter matrix (`lora_a` or `lora_b`).
#[derive(Debug, Clone)]
pub enum AdapterValues {
    /// The values, row-major.
    F32(Vec<f32>),
    /// Tensor `tensor` of an adapter file (f32, f16 or bf16 `data`, row-major), whose loader
    /// has checked its shape and that every value is finite.
    InFile {
        /// The mapped file, shared by every matrix read from it.
        file: Arc<ModelFile>,
        /// The tensor's name.
        tensor: String,
    },
}

impl PartialEq for AdapterValues {
    fn eq(&self, other: &AdapterValues) -> bool {
        match (self, other) {
            (AdapterValues::F32(a), AdapterValues::F32(b)) => a == b,
            (AdapterValues::InFile { file: f, tensor: t }, AdapterValues::InFile { file: g, tensor: u }) => {
                Arc::ptr_eq(f, g) && t == u
            }
            _ => false,
        }
    }
}

impl AdapterValues {
    /// A copy of the values in f32 (f16 and bf16 widened exactly); `None` when the file has no
    /// such tensor or it does not hold floats.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        let (file, tensor) = match self {
            AdapterValues::F32(v) => return Some(v.clone()),
            AdapterValues::InFile { file, tensor } => (file, tensor),
        };
        let t = file.tensor(tensor)?;
        match t.info.scheme {
            crate::Scheme::F32 => t.part_f32("data").ok().map(<[f32]>::to_vec),
            crate::Scheme::Bf16 => {
                t.part_u16("data").ok().map(|v| v.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect())
            }
            crate::Scheme::F16 => {
                t.part_u16("data").ok().map(|v| v.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect())
            }
            _ => None,
        }
    }
}
