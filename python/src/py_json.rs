//! Python objects ⇄ JSON values: results are built as JSON (the shapes of OpenAI's API and
//! llama-cpp-python) and handed to Python as dicts and lists; message lists come in the same way.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::Value;

/// A JSON value as Python objects.
pub fn to_py(py: Python<'_>, v: &Value) -> PyResult<Py<PyAny>> {
    Ok(match v {
        Value::Null => py.None(),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any().unbind(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any().unbind()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any().unbind()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any().unbind()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any().unbind(),
        Value::Array(a) => {
            let l = PyList::empty(py);
            for x in a {
                l.append(to_py(py, x)?)?;
            }
            l.into_any().unbind()
        }
        Value::Object(o) => {
            let d = PyDict::new(py);
            for (k, x) in o {
                d.set_item(k, to_py(py, x)?)?;
            }
            d.into_any().unbind()
        }
    })
}

/// Python dicts, lists, tuples, strings, numbers, booleans and None as a JSON value (nested at
/// most 64 deep); anything else is a ValueError.
pub fn from_py(o: &Bound<'_, PyAny>) -> PyResult<Value> {
    from_py_depth(o, 0)
}

fn from_py_depth(o: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > 64 {
        return Err(PyValueError::new_err("argument nested too deeply"));
    }
    if o.is_none() {
        return Ok(Value::Null);
    }
    if o.is_instance_of::<PyBool>() {
        return Ok(Value::Bool(o.extract()?));
    }
    if o.is_instance_of::<PyInt>() {
        return o.extract::<i64>().map(Value::from).or_else(|_| o.extract::<u64>().map(Value::from));
    }
    if o.is_instance_of::<PyFloat>() {
        return Ok(serde_json::Number::from_f64(o.extract()?).map_or(Value::Null, Value::Number));
    }
    if o.is_instance_of::<PyString>() {
        return Ok(Value::String(o.extract()?));
    }
    if let Ok(d) = o.cast::<PyDict>() {
        let mut m = serde_json::Map::new();
        for (k, v) in d.iter() {
            let k = k.extract::<String>().map_err(|_| PyValueError::new_err("dict keys must be strings"))?;
            m.insert(k, from_py_depth(&v, depth + 1)?);
        }
        return Ok(Value::Object(m));
    }
    if let Ok(l) = o.cast::<PyList>() {
        return l.iter().map(|x| from_py_depth(&x, depth + 1)).collect::<PyResult<Vec<_>>>().map(Value::Array);
    }
    if let Ok(t) = o.cast::<PyTuple>() {
        return t.iter().map(|x| from_py_depth(&x, depth + 1)).collect::<PyResult<Vec<_>>>().map(Value::Array);
    }
    Err(PyValueError::new_err(format!("cannot use a {} here", o.get_type().name()?)))
}
