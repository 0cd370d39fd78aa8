use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A configuration error that a person can act on: where it is (file, line,
/// column, key) and what was expected there.
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("{path}: cannot read config file: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", .0)]
    Invalid(Box<Located>),
}

/// One error with its position in the file.
#[derive(Debug)]
pub struct Located {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted key, e.g. `cache.disk_size` or `site[0].origin`, when known.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.path.display(), self.line, self.column)?;
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl ConfError {
    pub(crate) fn at(
        path: &Path,
        src: &str,
        span: Option<Range<usize>>,
        key: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = span.map_or((1, 1), |s| line_col(src, s.start));
        ConfError::Invalid(Box::new(Located {
            path: path.to_path_buf(),
            line,
            column,
            key,
            message: message.into(),
        }))
    }

    /// The line the error points at, when it has one.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfError::Invalid(l) => Some(l.line),
            ConfError::Read { .. } => None,
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::line_col;

    #[test]
    fn offsets_map_to_lines_and_columns() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 11), (2, 6));
    }
}
