//! Errors of the expression language, pointing at a line and column of the text.
//!
//! Contract: `line` and `column` are 1-based and count characters (not bytes), so they match
//! what an editor shows; `Display` reads `column 12: unknown function `cuont`` (with the line
//! too when the text has several).

use std::fmt;

use super::ast::Span;

/// A syntax or type error in an expression.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ExprError {
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// Whether the text has more than one line (then `Display` names the line).
    multiline: bool,
}

impl ExprError {
    /// An error at the start of `span` in `text`.
    pub fn at(text: &str, span: Span, message: String) -> ExprError {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        ExprError {
            line,
            column,
            message,
            multiline: text.contains('\n'),
        }
    }
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.multiline {
            write!(f, "line {}, ", self.line)?;
        }
        write!(f, "column {}: {}", self.column, self.message)
    }
}
