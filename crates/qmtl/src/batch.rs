//! Decoding a loader's Arrow batch into the engine's columns: a `ts` vector in epoch
//! seconds and one `f64` vector per declared field, checked for order and range.
//!
//! Accepted `ts` types: Int64 epoch seconds and Arrow timestamps of any unit (converted
//! here, once). Accepted payload types: Float64, Float32, Int64 and Int32; a null payload
//! becomes NaN. A null `ts` fails the chunk: a row without a time cannot be placed.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};

use crate::time::Timestamp;

/// Decoded history: timestamps and field-major values in declared field order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Columns {
    /// Epoch seconds, ascending.
    pub ts: Vec<Timestamp>,
    /// One vector per field, each as long as `ts`.
    pub values: Vec<Vec<f64>>,
}

impl Columns {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// Whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }
}

/// Why a batch does not fit the stream it was fetched for.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    /// No `ts` column.
    #[error("the batch has no 'ts' column (columns: {columns})")]
    NoTs {
        /// The batch's column names.
        columns: String,
    },
    /// `ts` of a type that is not a time.
    #[error("column 'ts' has type {data_type}; expected Int64 epoch seconds or a timestamp")]
    TsType {
        /// The type found.
        data_type: String,
    },
    /// A null `ts`.
    #[error("row {row} has a null 'ts'; every row needs a timestamp")]
    NullTs {
        /// 0-based row.
        row: usize,
    },
    /// A declared field is missing.
    #[error("field '{field}' is not in the batch (columns: {columns})")]
    MissingField {
        /// The field.
        field: String,
        /// The batch's column names.
        columns: String,
    },
    /// A declared field is not numeric.
    #[error("field '{field}' has type {data_type}; payload fields must be numeric")]
    FieldType {
        /// The field.
        field: String,
        /// The type found.
        data_type: String,
    },
    /// Rows out of time order.
    #[error("row {row} has ts {ts}, before the previous row's {previous}; rows must be ordered")]
    Unsorted {
        /// 0-based row.
        row: usize,
        /// This row's ts.
        ts: Timestamp,
        /// The previous row's ts.
        previous: Timestamp,
    },
    /// A row outside the requested range.
    #[error("row {row} has ts {ts}, outside the requested range [{start}, {end})")]
    OutOfRange {
        /// 0-based row.
        row: usize,
        /// This row's ts.
        ts: Timestamp,
        /// Requested start.
        start: Timestamp,
        /// Requested end.
        end: Timestamp,
    },
}

fn column_names(batch: &RecordBatch) -> String {
    let names: Vec<&str> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    names.join(", ")
}

fn find(batch: &RecordBatch, name: &str) -> Option<usize> {
    batch
        .schema_ref()
        .fields()
        .iter()
        .position(|f| f.name().eq_ignore_ascii_case(name))
}

fn decode_ts(array: &dyn Array) -> Result<Vec<Timestamp>, BatchError> {
    if let Some(row) = (0..array.len()).find(|&i| array.is_null(i)) {
        return Err(BatchError::NullTs { row });
    }
    let scaled = |values: &[i64], div: i64| values.iter().map(|v| v.div_euclid(div)).collect();
    Ok(match array.data_type() {
        DataType::Int64 => array.as_primitive::<Int64Type>().values().to_vec(),
        DataType::Timestamp(TimeUnit::Second, _) => array
            .as_primitive::<TimestampSecondType>()
            .values()
            .to_vec(),
        DataType::Timestamp(TimeUnit::Millisecond, _) => scaled(
            array.as_primitive::<TimestampMillisecondType>().values(),
            1_000,
        ),
        DataType::Timestamp(TimeUnit::Microsecond, _) => scaled(
            array.as_primitive::<TimestampMicrosecondType>().values(),
            1_000_000,
        ),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => scaled(
            array.as_primitive::<TimestampNanosecondType>().values(),
            1_000_000_000,
        ),
        other => {
            return Err(BatchError::TsType {
                data_type: other.to_string(),
            })
        }
    })
}

fn decode_field(array: &dyn Array, field: &str) -> Result<Vec<f64>, BatchError> {
    fn with_nulls<T: Copy>(array: &dyn Array, values: &[T], f: impl Fn(T) -> f64) -> Vec<f64> {
        if array.null_count() == 0 {
            values.iter().map(|v| f(*v)).collect()
        } else {
            values
                .iter()
                .enumerate()
                .map(|(i, v)| if array.is_null(i) { f64::NAN } else { f(*v) })
                .collect()
        }
    }
    Ok(match array.data_type() {
        DataType::Float64 => {
            let a = array.as_primitive::<Float64Type>();
            if a.null_count() == 0 {
                a.values().to_vec()
            } else {
                with_nulls(array, a.values(), |v| v)
            }
        }
        DataType::Float32 => with_nulls(
            array,
            array.as_primitive::<Float32Type>().values(),
            f64::from,
        ),
        DataType::Int64 => with_nulls(array, array.as_primitive::<Int64Type>().values(), |v| {
            v as f64
        }),
        DataType::Int32 => with_nulls(array, array.as_primitive::<Int32Type>().values(), f64::from),
        other => {
            return Err(BatchError::FieldType {
                field: field.to_owned(),
                data_type: other.to_string(),
            })
        }
    })
}

/// Decodes `batch` for a stream with `fields`, checking that every row is in
/// `[start, end)` and ascending (equal timestamps are allowed; the cache keeps the last).
///
/// # Errors
/// [`BatchError`] naming the column or row at fault.
pub fn decode(
    batch: &RecordBatch,
    fields: &[String],
    start: Timestamp,
    end: Timestamp,
) -> Result<Columns, BatchError> {
    let ts_index = find(batch, "ts").ok_or_else(|| BatchError::NoTs {
        columns: column_names(batch),
    })?;
    let ts = decode_ts(batch.column(ts_index).as_ref())?;
    for (row, pair) in ts.windows(2).enumerate() {
        if pair[1] < pair[0] {
            return Err(BatchError::Unsorted {
                row: row + 1,
                ts: pair[1],
                previous: pair[0],
            });
        }
    }
    if let Some(row) = ts.iter().position(|t| *t < start || *t >= end) {
        return Err(BatchError::OutOfRange {
            row,
            ts: ts[row],
            start,
            end,
        });
    }
    let mut values = Vec::with_capacity(fields.len());
    for field in fields {
        let index = find(batch, field).ok_or_else(|| BatchError::MissingField {
            field: field.clone(),
            columns: column_names(batch),
        })?;
        values.push(decode_field(batch.column(index).as_ref(), field)?);
    }
    Ok(Columns { ts, values })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};

    use super::*;

    fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(cols).unwrap()
    }

    fn fields(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn decodes_ts_and_fields_case_insensitively_with_nulls_as_nan() {
        let b = batch(vec![
            ("TS", Arc::new(Int64Array::from(vec![10, 20])) as ArrayRef),
            (
                "Close",
                Arc::new(Float64Array::from(vec![Some(1.5), None])) as ArrayRef,
            ),
            ("volume", Arc::new(Int64Array::from(vec![3, 4])) as ArrayRef),
        ]);
        let c = decode(&b, &fields(&["close", "Volume"]), 0, 100).unwrap();
        assert_eq!(c.ts, [10, 20]);
        assert_eq!(c.values[0][0], 1.5);
        assert!(c.values[0][1].is_nan());
        assert_eq!(c.values[1], [3.0, 4.0]);
    }

    #[test]
    fn converts_arrow_timestamps_to_seconds() {
        let ts =
            TimestampMicrosecondArray::from(vec![1_500_000_000_250_000, 1_500_000_001_000_000]);
        let b = batch(vec![
            ("ts", Arc::new(ts) as ArrayRef),
            (
                "x",
                Arc::new(Float64Array::from(vec![1.0, 2.0])) as ArrayRef,
            ),
        ]);
        let c = decode(&b, &fields(&["x"]), 0, i64::MAX).unwrap();
        assert_eq!(c.ts, [1_500_000_000, 1_500_000_001]);
    }

    #[test]
    fn names_what_is_wrong() {
        let good_ts = || Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef;
        let x = || Arc::new(Float64Array::from(vec![1.0, 2.0])) as ArrayRef;
        let cases: Vec<(RecordBatch, Vec<String>, &str)> = vec![
            (batch(vec![("x", x())]), fields(&["x"]), "no 'ts' column"),
            (batch(vec![("ts", x())]), fields(&[]), "type Float64"),
            (
                batch(vec![(
                    "ts",
                    Arc::new(Int64Array::from(vec![Some(1), None])) as ArrayRef,
                )]),
                fields(&[]),
                "row 1 has a null 'ts'",
            ),
            (
                batch(vec![("ts", good_ts())]),
                fields(&["close"]),
                "field 'close' is not",
            ),
            (
                batch(vec![
                    ("ts", good_ts()),
                    ("s", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
                ]),
                fields(&["s"]),
                "must be numeric",
            ),
            (
                batch(vec![(
                    "ts",
                    Arc::new(Int64Array::from(vec![2, 1])) as ArrayRef,
                )]),
                fields(&[]),
                "rows must be ordered",
            ),
        ];
        for (b, f, want) in cases {
            let err = decode(&b, &f, 0, 100).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should contain {want}");
        }
        let err = decode(&batch(vec![("ts", good_ts())]), &[], 2, 100).unwrap_err();
        assert!(matches!(err, BatchError::OutOfRange { row: 0, .. }));
    }
}
