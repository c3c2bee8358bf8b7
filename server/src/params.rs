//! The request fields both completion endpoints share, read from the JSON body with a typed
//! error naming the field for every wrong type or out-of-range value. Unknown fields are
//! ignored, as OpenAI-compatible servers do.

use crate::error::ApiError;
use lowbit_runtime::batch::{AdapterChoice, MAX_TOP_LOGPROBS};
use lowbit_runtime::SamplerConfig;
use serde_json::{Map, Value};

/// A JSON object body.
pub type Body = Map<String, Value>;

/// Parses a request body as a JSON object.
pub fn object(bytes: &[u8]) -> Result<Body, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(ApiError::bad("the request body must be a JSON object")),
        Err(e) => Err(ApiError::bad(format!("the request body is not valid JSON: {e}"))),
    }
}

fn present<'a>(o: &'a Body, k: &str) -> Option<&'a Value> {
    o.get(k).filter(|v| !v.is_null())
}

/// A number in `lo ..= hi`, or `default` when absent or null.
pub fn number(o: &Body, k: &str, default: f64, lo: f64, hi: f64) -> Result<f64, ApiError> {
    match present(o, k) {
        None => Ok(default),
        Some(v) => {
            let x = v.as_f64().ok_or_else(|| ApiError::param(k, format!("{k} must be a number")))?;
            if !(lo..=hi).contains(&x) {
                return Err(ApiError::param(k, format!("{k} = {x} is out of range [{lo}, {hi}]")));
            }
            Ok(x)
        }
    }
}

/// A non-negative integer at most `hi`, or `default`.
pub fn count(o: &Body, k: &str, default: u64, hi: u64) -> Result<u64, ApiError> {
    match present(o, k) {
        None => Ok(default),
        Some(v) => {
            let x = v.as_u64().ok_or_else(|| ApiError::param(k, format!("{k} must be a non-negative integer")))?;
            if x > hi {
                return Err(ApiError::param(k, format!("{k} = {x} is more than {hi}")));
            }
            Ok(x)
        }
    }
}

/// A boolean, or `default`.
pub fn flag(o: &Body, k: &str, default: bool) -> Result<bool, ApiError> {
    match present(o, k) {
        None => Ok(default),
        Some(v) => v.as_bool().ok_or_else(|| ApiError::param(k, format!("{k} must be true or false"))),
    }
}

/// `stop`: a string or a list of strings.
pub fn stops(o: &Body) -> Result<Vec<String>, ApiError> {
    match present(o, "stop") {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::param("stop", "stop must be a string or a list of strings")),
        Some(_) => Err(ApiError::param("stop", "stop must be a string or a list of strings")),
    }
}

/// Sampling settings with OpenAI's defaults (temperature 1, top_p 1) and llama-server's
/// extensions (`top_k`, `min_p`, `repeat_penalty`); no seed draws a fresh one.
pub fn sampling(o: &Body, fresh_seed: u64) -> Result<SamplerConfig, ApiError> {
    let seed = match present(o, "seed") {
        None => fresh_seed,
        // OpenAI's seed is any integer; a negative one is taken as its two's complement.
        Some(v) => v
            .as_i64()
            .map(|s| s as u64)
            .or(v.as_u64())
            .ok_or_else(|| ApiError::param("seed", "seed must be an integer"))?,
    };
    let top_p = number(o, "top_p", 1.0, 0.0, 1.0)?;
    if top_p == 0.0 {
        return Err(ApiError::param("top_p", "top_p must be greater than 0"));
    }
    Ok(SamplerConfig {
        temperature: number(o, "temperature", 1.0, 0.0, 2.0)? as f32,
        top_p: top_p as f32,
        top_k: count(o, "top_k", 0, u32::MAX as u64)? as usize,
        min_p: number(o, "min_p", 0.0, 0.0, 1.0)? as f32,
        repetition_penalty: number(o, "repeat_penalty", 1.0, 1e-3, 100.0)? as f32,
        presence_penalty: number(o, "presence_penalty", 0.0, -2.0, 2.0)? as f32,
        frequency_penalty: number(o, "frequency_penalty", 0.0, -2.0, 2.0)? as f32,
        seed,
    })
}

/// `max_tokens` (or `max_completion_tokens`), bounded by what the context leaves.
pub fn max_tokens(o: &Body, default: u64, context: usize) -> Result<usize, ApiError> {
    let key = if present(o, "max_completion_tokens").is_some() { "max_completion_tokens" } else { "max_tokens" };
    Ok(count(o, key, default, u32::MAX as u64)?.min(context as u64) as usize)
}

/// The number of top alternatives asked for, bounded as OpenAI does.
pub fn top_logprobs(o: &Body, key: &str) -> Result<usize, ApiError> {
    Ok(count(o, key, 0, MAX_TOP_LOGPROBS as u64)? as usize)
}

/// The named run-time adapter a request picks: `"lora"` as a name, or as llama-server's list
/// `[{"id": I, "scale": S}]` (ids in the order the adapters were loaded; entries of scale 0 left
/// out; one adapter per request), else `"model"` when it names an adapter. `names` are the
/// adapters loaded with a name; any other `model` means the base model.
pub fn adapter(o: &Body, names: &[String]) -> Result<Option<AdapterChoice>, ApiError> {
    let bad = |m: String| ApiError::param("lora", m);
    match present(o, "lora") {
        Some(Value::String(name)) => {
            if names.contains(name) {
                Ok(Some(AdapterChoice { name: name.clone(), scale: 1.0 }))
            } else {
                Err(bad(format!("no adapter is named {name:?} (loaded: {})", loaded(names))))
            }
        }
        Some(Value::Array(list)) => {
            let mut picked = None;
            for item in list {
                let Value::Object(e) = item else { return Err(bad("each lora entry must be an object".into())) };
                let id =
                    count(e, "id", u64::MAX, u64::MAX).ok().filter(|&i| i < names.len() as u64).ok_or_else(|| {
                        bad(format!("each lora entry needs an id below {} (the adapters loaded)", names.len()))
                    })?;
                let scale =
                    number(e, "scale", 1.0, -1e6, 1e6).map_err(|_| bad("a lora scale must be a number".into()))?;
                if scale != 0.0 {
                    if picked.is_some() {
                        return Err(bad("one adapter per request".into()));
                    }
                    picked = Some(AdapterChoice { name: names[id as usize].clone(), scale: scale as f32 });
                }
            }
            Ok(picked)
        }
        Some(_) => Err(bad("lora must be an adapter's name or a list of {id, scale}".into())),
        None => Ok(match present(o, "model") {
            Some(Value::String(m)) if names.contains(m) => Some(AdapterChoice { name: m.clone(), scale: 1.0 }),
            _ => None,
        }),
    }
}

fn loaded(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}
