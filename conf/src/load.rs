//! Reading any meshcast TOML file: syntax and type errors from serde, then
//! the file's own semantic checks, all reported with file, line and key.

use crate::error::ConfError;
use crate::spans::Doc;
use serde::de::DeserializeOwned;
use std::path::Path;

/// A semantic check: `Err((dotted_key, message))` blames that key.
pub(crate) type Validate<T> = fn(&T) -> Result<(), (String, String)>;

pub(crate) fn load<T: DeserializeOwned>(
    path: &Path,
    validate: Validate<T>,
) -> Result<T, ConfError> {
    let src = std::fs::read_to_string(path).map_err(|source| ConfError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &src, validate)
}

pub(crate) fn parse<T: DeserializeOwned>(
    path: &Path,
    src: &str,
    validate: Validate<T>,
) -> Result<T, ConfError> {
    let doc = match Doc::parse(src) {
        Ok(doc) => doc,
        Err(e) => return Err(ConfError::at(path, src, e.span(), None, e.message())),
    };
    let config: T = toml::from_str(src).map_err(|e| {
        let key = e.span().and_then(|s| doc.key_at(&s));
        ConfError::at(path, src, e.span(), key, e.message())
    })?;
    validate(&config).map_err(|(key, message)| {
        ConfError::at(path, src, doc.span_of(&key), Some(key), message)
    })?;
    Ok(config)
}
