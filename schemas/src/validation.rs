//! Field-level checks shared by every record type. An error names the field path
//! (`vl53l8ch.distance_matrix[3][7]`) and the rule it broke, so a producer can fix its payload
//! from the message alone.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub struct ValidationError {
    /// Dotted path of the offending field; `$` for the whole document.
    pub path: String,
    /// The rule that was broken, in words.
    pub rule: String,
}

impl ValidationError {
    pub fn new(path: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            rule: rule.into(),
        }
    }

    /// Turns a serde error met at `path` into a validation error. serde reports a missing field
    /// at its parent, so that case is rewritten to name the field itself.
    pub(crate) fn from_serde(path: &serde_path_to_error::Path, err: &serde_json::Error) -> Self {
        let message = err.to_string();
        // serde_json appends " at line L column C"; the path already locates the problem.
        let message = match message.rfind(" at line ") {
            Some(cut) => message[..cut].to_string(),
            None => message,
        };
        let parent = path.to_string();
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            let full = if parent == "." {
                field.to_string()
            } else {
                format!("{parent}.{field}")
            };
            return Self::new(full, "is required");
        }
        let path = if parent == "." {
            "$".to_string()
        } else {
            parent
        };
        Self::new(path, message)
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.rule)
    }
}

impl std::error::Error for ValidationError {}

/// Why a payload could not become a record: it is not JSON at all, or it is JSON that breaks
/// a rule of the record's contract.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeError {
    NotJson(String),
    Invalid(ValidationError),
}

impl From<ValidationError> for DecodeError {
    fn from(err: ValidationError) -> Self {
        DecodeError::Invalid(err)
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::NotJson(message) => write!(f, "not JSON: {message}"),
            DecodeError::Invalid(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for DecodeError {}

impl DecodeError {
    /// The validation error, for tests that expect one.
    pub fn expect_invalid(self) -> ValidationError {
        match self {
            DecodeError::Invalid(err) => err,
            other => panic!("expected a validation error, got {other}"),
        }
    }
}

fn is_syntax(err: &serde_json::Error) -> bool {
    use serde_json::error::Category;
    matches!(
        err.classify(),
        Category::Syntax | Category::Eof | Category::Io
    )
}

/// Decodes `bytes` as `T`, ignoring unknown keys, with errors that name the field path.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    // Tracking the path costs a third of the decoding: only a refused document pays it.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // serde stops at the first problem, which can be a type error in a document that is
        // also broken further on (`[1,2`): only a document that parses is "invalid".
        let parses = serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok();
        if is_syntax(e.inner()) || !parses {
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Err(syntax) => DecodeError::NotJson(syntax.to_string()),
                Ok(_) => DecodeError::NotJson(e.inner().to_string()),
            }
        } else {
            DecodeError::Invalid(ValidationError::from_serde(e.path(), e.inner()))
        }
    })?;
    de.end()
        .map_err(|e| DecodeError::NotJson(format!("trailing data after the JSON value: {e}")))?;
    Ok(value)
}

pub(crate) fn non_negative(path: &str, value: f64) -> Result<f64, ValidationError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(ValidationError::new(
            path,
            format!("must be ≥ 0 (got {value})"),
        ))
    }
}

pub(crate) fn in_range(path: &str, value: f64, min: f64, max: f64) -> Result<f64, ValidationError> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ValidationError::new(
            path,
            format!("must be between {min} and {max} (got {value})"),
        ))
    }
}

pub(crate) fn finite(path: &str, value: f64) -> Result<f64, ValidationError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(ValidationError::new(path, "must be a finite number"))
    }
}

/// `code_lot` rule shared by meals, outcomes and SQAL samples.
pub(crate) fn code_lot(path: &str, value: &str) -> Result<(), ValidationError> {
    let chars = value.chars().count();
    if chars == 0 || value.trim().is_empty() {
        Err(ValidationError::new(path, "must not be empty"))
    } else if chars > 64 {
        Err(ValidationError::new(
            path,
            format!("must be at most 64 characters (got {chars})"),
        ))
    } else {
        Ok(())
    }
}

pub(crate) fn optional<T: Copy>(
    value: Option<T>,
    check: impl FnOnce(T) -> Result<T, ValidationError>,
) -> Result<Option<T>, ValidationError> {
    value.map(check).transpose()
}
