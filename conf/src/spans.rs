//! Maps between byte spans and dotted key paths in a TOML document, so that
//! both serde errors (which carry a span) and semantic checks (which know a
//! key) can report file, line and key together.

use std::ops::Range;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub(crate) struct Doc<'i> {
    root: Option<Spanned<DeTable<'i>>>,
}

impl<'i> Doc<'i> {
    pub(crate) fn parse(src: &'i str) -> Result<Self, toml::de::Error> {
        Ok(Doc {
            root: Some(DeTable::parse(src)?),
        })
    }

    /// The deepest key whose value contains `span`, as `a.b[2].c`.
    pub(crate) fn key_at(&self, span: &Range<usize>) -> Option<String> {
        let root = self.root.as_ref()?;
        if span.is_empty() && span.start == 0 {
            // serde reports a missing top-level table at the document start.
            return None;
        }
        let mut path = String::new();
        walk_table(root.get_ref(), span, &mut path).then_some(path)
    }

    /// The span of the value at a dotted path like `site[0].hosts`.
    pub(crate) fn span_of(&self, path: &str) -> Option<Range<usize>> {
        let root = self.root.as_ref()?;
        let mut value: Option<&Spanned<DeValue>> = None;
        let mut table = root.get_ref();
        for part in path.split('.') {
            let (name, index) = match part.split_once('[') {
                Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (part, None),
            };
            let mut v = table.get(name)?;
            if let Some(i) = index {
                match v.get_ref() {
                    DeValue::Array(a) => v = a.get(i)?,
                    _ => return Some(v.span()),
                }
            }
            if let DeValue::Table(t) = v.get_ref() {
                table = t;
            }
            value = Some(v);
        }
        value.map(|v| v.span())
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end.max(outer.start + 1)
}

/// Header tables (`[cache]`) do not span their contents, so every branch is
/// searched; the deepest key whose value or name contains `span` wins.
fn walk_table(table: &DeTable, span: &Range<usize>, path: &mut String) -> bool {
    for (key, value) in table.iter() {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key.get_ref());
        if walk_value(value.get_ref(), span, path)
            || contains(&value.span(), span)
            || contains(&key.span(), span)
        {
            return true;
        }
        path.truncate(len);
    }
    false
}

fn walk_value(value: &DeValue, span: &Range<usize>, path: &mut String) -> bool {
    match value {
        DeValue::Table(t) => walk_table(t, span, path),
        DeValue::Array(items) => items.iter().enumerate().any(|(i, item)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let inner = matches!(item.get_ref(), DeValue::Table(_) | DeValue::Array(_));
            if (inner && walk_value(item.get_ref(), span, path)) || contains(&item.span(), span) {
                return true;
            }
            path.truncate(len);
            false
        }),
        _ => false,
    }
}
