//! Rows: the numeric payload of one value, held inline so producing one never allocates.
//!
//! A row is a short list of `f64` values positioned by the producing node's declared
//! fields (its schema). At most [`MAX_FIELDS`] values fit; the DAG builder rejects wider
//! schemas, so a row can always hold what its node declared.

use std::fmt;

/// The most payload fields a node may declare.
pub const MAX_FIELDS: usize = 16;

/// One payload, values in the order of the producing node's fields.
#[derive(Clone, Copy, PartialEq)]
pub struct Row {
    len: u8,
    values: [f64; MAX_FIELDS],
}

impl Row {
    /// A row holding `values` in order.
    ///
    /// # Panics
    /// When given more than [`MAX_FIELDS`] values; a node cannot declare that many.
    #[track_caller]
    pub fn new(values: &[f64]) -> Row {
        assert!(
            values.len() <= MAX_FIELDS,
            "a row holds at most {MAX_FIELDS} values, got {}; declare fewer fields",
            values.len()
        );
        let mut row = Row {
            len: values.len() as u8,
            values: [0.0; MAX_FIELDS],
        };
        row.values[..values.len()].copy_from_slice(values);
        row
    }

    /// A row with one value.
    pub fn one(value: f64) -> Row {
        Row::new(&[value])
    }

    /// The values in field order.
    pub fn values(&self) -> &[f64] {
        &self.values[..self.len as usize]
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the row holds no value.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.values()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_values_in_order() {
        let row = Row::new(&[1.0, 2.5, f64::NAN]);
        assert_eq!(row.len(), 3);
        assert_eq!(row.values()[..2], [1.0, 2.5]);
        assert!(row.values()[2].is_nan());
        assert!(Row::new(&[]).is_empty());
        assert_eq!(Row::one(4.0).values(), [4.0]);
    }

    #[test]
    #[should_panic(expected = "declare fewer fields")]
    fn too_many_values_is_a_programmer_error() {
        let _ = Row::new(&[0.0; MAX_FIELDS + 1]);
    }
}
