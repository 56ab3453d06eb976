//! String columns of a Parquet file, row by row (corpus text, labelled examples), through
//! arrow-rs's `parquet` crate: only the named columns are decoded.

use std::path::Path;

use anyhow::{bail, Context, Result};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;

/// The values of `columns` in each row of `path`, in the order asked (None for a null). A
/// column the file lacks is an error naming the columns it has.
pub fn read_strings(path: &Path, columns: &[&str]) -> Result<impl Iterator<Item = Result<Vec<Option<String>>>>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("{} is not a readable Parquet file", path.display()))?;
    let schema = reader.metadata().file_metadata().schema_descr().root_schema().clone();
    let fields = schema.get_fields();
    let mut picked = Vec::new();
    for column in columns {
        match fields.iter().find(|f| f.name() == *column) {
            Some(field) => picked.push(field.clone()),
            None => {
                let have: Vec<&str> = fields.iter().map(|f| f.name()).collect();
                bail!("{} has no column `{column}` (its columns: {})", path.display(), have.join(", "));
            }
        }
    }
    // The projection keeps the file's column order; the rows are read back by name.
    let mut ordered = picked.clone();
    ordered.sort_by_key(|f| fields.iter().position(|g| g.name() == f.name()));
    let projection = Type::group_type_builder(schema.name()).with_fields(ordered).build()?;
    let rows = parquet::record::reader::RowIter::from_file_into(Box::new(reader)).project(Some(projection))?;
    let wanted: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    let shown = path.display().to_string();
    Ok(rows.enumerate().map(move |(i, row)| {
        let row = row.with_context(|| format!("{shown}: cannot read row {}", i + 1))?;
        let mut values = vec![None; wanted.len()];
        for (name, field) in row.get_column_iter() {
            let Some(slot) = wanted.iter().position(|w| w == name) else { continue };
            values[slot] = match field {
                Field::Null => None,
                Field::Str(text) => Some(text.clone()),
                Field::Bytes(bytes) => Some(
                    String::from_utf8(bytes.data().to_vec())
                        .with_context(|| format!("{shown}: row {}: column `{name}` is not UTF-8 text", i + 1))?,
                ),
                // Numbers and booleans (a label column, say) as their text.
                other => Some(other.to_string()),
            };
        }
        Ok(values)
    }))
}
