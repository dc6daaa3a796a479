//! One event, one line: the text format of SPEC §7 or a JSON object.

use std::fmt::Write as _;

use chrono::{DateTime, Local};
use tracing::Level;
use tracing::field::{Field, Visit};

use super::LogFormat;

/// An event's message and fields, then the fields of the spans it is in.
#[derive(Default)]
pub(super) struct Fields {
    message: String,
    pairs: Vec<(String, String)>,
}

impl Fields {
    pub(super) fn add_span(&mut self, span: &SpanFields) {
        for (name, value) in &span.0 {
            if !self.pairs.iter().any(|(n, _)| n == name) {
                self.pairs.push((name.clone(), value.clone()));
            }
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.pairs
                .push((field.name().to_string(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.pairs.push((field.name().to_string(), text));
        }
    }
}

/// The fields a span was created (or later recorded) with.
#[derive(Default)]
pub(super) struct SpanFields(Vec<(String, String)>);

impl Visit for SpanFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field.name(), format!("{value:?}"));
    }
}

impl SpanFields {
    fn set(&mut self, name: &str, value: String) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(pair) => pair.1 = value,
            None => self.0.push((name.to_string(), value)),
        }
    }
}

/// One event per line: a value's own newlines would split it.
fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

pub(super) fn line(
    format: LogFormat,
    time: DateTime<Local>,
    level: &Level,
    module: &str,
    target: &str,
    fields: &Fields,
) -> String {
    match format {
        LogFormat::Text => {
            let mut line = String::with_capacity(128);
            let _ = write!(
                line,
                "{} | {:<8} | {:<30} | ",
                time.format("%Y-%m-%d %H:%M:%S"),
                level.as_str(),
                module
            );
            escape(&fields.message, &mut line);
            for (name, value) in &fields.pairs {
                line.push_str(" | ");
                line.push_str(name);
                line.push('=');
                escape(value, &mut line);
            }
            line.push('\n');
            line
        }
        LogFormat::Json => {
            let mut object = serde_json::Map::new();
            object.insert("timestamp".into(), time.to_rfc3339().into());
            object.insert("level".into(), level.as_str().into());
            object.insert("module".into(), module.into());
            object.insert("target".into(), target.into());
            object.insert("message".into(), fields.message.clone().into());
            for (name, value) in &fields.pairs {
                object
                    .entry(name.clone())
                    .or_insert_with(|| value.clone().into());
            }
            let mut line = serde_json::Value::Object(object).to_string();
            line.push('\n');
            line
        }
    }
}
