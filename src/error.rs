//! Errors. Every failure is a value: bad shapes, out-of-range arguments and size overflow are reported
//! through [`Error`], never by a panic.

use std::fmt;

/// What kind of failure an [`Error`] is. The C ABI maps each kind to its status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A required pointer was NULL (C ABI only).
    NullPointer,
    /// Buffer lengths or dimensions disagree with each other.
    BadShape,
    /// A value is out of range: a length past the sequence, an unknown enum, a negative size.
    BadArgument,
    /// Sizes whose product overflows `usize` (or the address space).
    Overflow,
    /// A bug inside the library (a caught panic in the C ABI).
    Internal,
}

/// An error with its kind and a human-readable message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// Builds an error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into() }
    }
    /// Shorthand for [`ErrorKind::BadShape`].
    pub fn shape(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadShape, message)
    }
    /// Shorthand for [`ErrorKind::BadArgument`].
    pub fn argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadArgument, message)
    }
    /// Shorthand for [`ErrorKind::Overflow`].
    pub fn overflow(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Overflow, message)
    }
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ErrorKind::NullPointer => "null pointer",
            ErrorKind::BadShape => "bad shape",
            ErrorKind::BadArgument => "bad argument",
            ErrorKind::Overflow => "size overflow",
            ErrorKind::Internal => "internal error",
        };
        write!(f, "{kind}: {}", self.message)
    }
}

impl std::error::Error for Error {}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Multiplies sizes, reporting overflow as an [`Error`] naming `what`.
pub fn checked_product(dims: &[usize], what: &str) -> Result<usize> {
    let mut n: usize = 1;
    for &d in dims {
        n = n.checked_mul(d).ok_or_else(|| Error::overflow(format!("{what}: size {dims:?} overflows usize")))?;
    }
    // Rust slices may not exceed isize::MAX bytes; f32 is the largest element we index with this.
    if n > (isize::MAX as usize) / 4 {
        return Err(Error::overflow(format!("{what}: size {dims:?} exceeds the address space")));
    }
    Ok(n)
}

/// Checks that a buffer has exactly the expected number of elements.
pub fn check_len(name: &str, len: usize, expected: usize) -> Result<()> {
    if len != expected {
        return Err(Error::shape(format!("{name} has {len} elements, expected {expected}")));
    }
    Ok(())
}
