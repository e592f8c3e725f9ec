//! What face-model discovery needs from an `.onnx` file without running it: the graph's inputs
//! (minus initializers, as ONNX Runtime lists them), its outputs, and the names of its first
//! nodes. A minimal protobuf reader over the memory-mapped file: weight payloads are skipped,
//! never read, so routing a folder of large models costs milliseconds.

use std::path::Path;

use memmap2::Mmap;

/// One dimension of a declared tensor shape: a fixed size, a symbol, or nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Symbolic(String),
    Unknown,
}

impl Dim {
    pub fn fixed(&self) -> Option<i64> {
        match self {
            Dim::Fixed(v) => Some(*v),
            _ => None,
        }
    }
}

/// A graph input or output: its name and declared shape (empty when undeclared).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueInfo {
    pub name: String,
    pub shape: Vec<Dim>,
}

/// The parts of a model's graph that routing and preprocessing depend on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GraphMeta {
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    /// Names of the first nodes (up to 8, what insightface's ArcFace looks at).
    pub first_node_names: Vec<String>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type Field<'a> = (u64, Value<'a>);

enum Value<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or("field runs past the end")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn next(&mut self) -> Result<Option<Field<'a>>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Value::Int(self.varint()?),
            1 => Value::Bytes(self.take(8)?),
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "length overflows")?;
                Value::Bytes(self.take(n)?)
            }
            5 => Value::Bytes(self.take(4)?),
            w => return Err(format!("unsupported protobuf wire type {w}")),
        };
        Ok(Some((tag >> 3, value)))
    }

    /// Every length-delimited field with number `field`.
    fn messages(buf: &'a [u8], field: u64) -> Result<Vec<&'a [u8]>, String> {
        let mut r = Reader::new(buf);
        let mut out = Vec::new();
        while let Some((f, v)) = r.next()? {
            if let (true, Value::Bytes(b)) = (f == field, v) {
                out.push(b);
            }
        }
        Ok(out)
    }

    fn string(buf: &'a [u8], field: u64) -> Result<String, String> {
        Ok(Reader::messages(buf, field)?
            .last()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default())
    }
}

fn value_info(buf: &[u8]) -> Result<ValueInfo, String> {
    let name = Reader::string(buf, 1)?;
    let mut shape = Vec::new();
    // ValueInfoProto.type (2) → TypeProto.tensor_type (1) → shape (2) → dim (1)
    for ty in Reader::messages(buf, 2)? {
        for tensor in Reader::messages(ty, 1)? {
            for sh in Reader::messages(tensor, 2)? {
                for dim in Reader::messages(sh, 1)? {
                    let mut r = Reader::new(dim);
                    let mut d = Dim::Unknown;
                    while let Some((f, v)) = r.next()? {
                        match (f, v) {
                            (1, Value::Int(x)) => d = Dim::Fixed(x as i64),
                            (2, Value::Bytes(b)) => {
                                d = Dim::Symbolic(String::from_utf8_lossy(b).into_owned())
                            }
                            _ => {}
                        }
                    }
                    shape.push(d);
                }
            }
        }
    }
    Ok(ValueInfo { name, shape })
}

/// Parses a serialized `ModelProto`.
pub fn parse(model: &[u8]) -> Result<GraphMeta, String> {
    let graphs = Reader::messages(model, 7)?;
    let graph = graphs
        .last()
        .ok_or("no graph in the file (not an ONNX model?)")?;
    let mut meta = GraphMeta::default();
    let mut initializers = std::collections::HashSet::new();
    let mut inputs = Vec::new();
    let mut r = Reader::new(graph);
    while let Some((f, v)) = r.next()? {
        let Value::Bytes(b) = v else { continue };
        match f {
            1 if meta.first_node_names.len() < 8 => {
                meta.first_node_names.push(Reader::string(b, 3)?)
            }
            5 => {
                initializers.insert(Reader::string(b, 8)?);
            }
            11 => inputs.push(value_info(b)?),
            12 => meta.outputs.push(value_info(b)?),
            _ => {}
        }
    }
    meta.inputs = inputs
        .into_iter()
        .filter(|i| !initializers.contains(&i.name))
        .collect();
    Ok(meta)
}

/// Reads `path` and parses it (memory-mapped: weights are not read).
pub fn read(path: &Path) -> Result<GraphMeta, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    // SAFETY: the map is read-only and dropped before returning; a file truncated meanwhile
    // by another process could fault, as with any mapped read of a user's file.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| e.to_string())?;
    parse(&map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![((n << 3) | 2) as u8, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn reads_inputs_outputs_and_node_names_skipping_initializers() {
        let dim = |d: &[u8]| field(1, d);
        let shape = [dim(&[8, 1]), dim(&field(2, b"h")), dim(&[])].concat();
        let tensor_type = [vec![8, 1], field(2, &shape)].concat();
        let vi = |name: &[u8]| [field(1, name), field(2, &field(1, &tensor_type))].concat();
        let graph = [
            field(1, &field(3, b"Sub_0")),
            field(1, &field(3, b"Mul_1")),
            field(5, &field(8, b"w")),
            field(11, &vi(b"w")),
            field(11, &vi(b"data")),
            field(12, &vi(b"out")),
        ]
        .concat();
        let meta = parse(&field(7, &graph)).expect("parses");
        assert_eq!(meta.first_node_names, ["Sub_0", "Mul_1"]);
        assert_eq!(meta.inputs.len(), 1);
        assert_eq!(meta.inputs[0].name, "data");
        assert_eq!(
            meta.inputs[0].shape,
            [Dim::Fixed(1), Dim::Symbolic("h".into()), Dim::Unknown]
        );
        assert_eq!(meta.outputs[0].name, "out");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse(b"\x3a\xff\xff").is_err());
        assert!(parse(b"plain text, not protobuf").is_err());
        assert!(parse(&[]).is_err());
    }
}
