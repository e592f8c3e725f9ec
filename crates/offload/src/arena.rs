//! Host memory for master copies: a few large byte chunks (pinned for fast, asynchronous
//! host→device copies when a CUDA device is named), each holding whole groups of tensors
//! packed back to back. A group never spans two chunks, so a group moves in one copy.

use tch::{Device, Kind, Tensor};

use crate::{OffloadError, Result};

/// Alignment of every tensor and group inside a chunk (bytes).
pub const ALIGN: usize = 256;

pub(crate) fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Where a group sits: chunk index, byte offset in it, bytes (aligned size of its tensors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub chunk: usize,
    pub offset: usize,
    pub bytes: usize,
}

/// Packing of groups of tensor sizes into chunks: every group contiguous in one chunk, each
/// tensor at an aligned offset. Pure arithmetic, separate from allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Byte size of each chunk.
    pub chunks: Vec<usize>,
    /// Per group: its span.
    pub groups: Vec<Span>,
    /// Per group, per tensor: offset from the group's start.
    pub offsets: Vec<Vec<usize>>,
}

impl Layout {
    /// Packs `groups` (tensor byte sizes) in order into chunks of `chunk_bytes` (a group larger
    /// than that gets a chunk of its own size).
    pub fn pack(groups: &[Vec<usize>], chunk_bytes: usize) -> Self {
        let mut chunks: Vec<usize> = Vec::new();
        let mut spans = Vec::new();
        let mut offsets = Vec::new();
        for g in groups {
            let mut at = 0;
            let offs: Vec<usize> = g
                .iter()
                .map(|b| {
                    let o = at;
                    at += align(*b);
                    o
                })
                .collect();
            let size = at;
            let fits = chunks
                .last()
                .is_some_and(|used| *used > 0 && *used + size <= chunk_bytes);
            if !fits {
                chunks.push(0);
            }
            let c = chunks.len() - 1;
            spans.push(Span {
                chunk: c,
                offset: chunks[c],
                bytes: size,
            });
            chunks[c] += size;
            offsets.push(offs);
        }
        Self {
            chunks,
            groups: spans,
            offsets,
        }
    }

    pub fn total_bytes(&self) -> usize {
        self.chunks.iter().sum()
    }
}

/// The allocated chunks.
pub struct HostArena {
    chunks: Vec<Tensor>,
}

impl HostArena {
    /// Allocates `layout`'s chunks in host memory, page-locked for `pin_for` (a CUDA device).
    /// Each chunk is exactly its layout size (pinned ones through [`ltx_gpu::pinned::empty`],
    /// not torch's power-of-two allocator), so [`HostArena::bytes`] is the memory held.
    pub fn allocate(layout: &Layout, pin_for: Option<Device>) -> Result<Self> {
        if let Some(d) = pin_for {
            ltx_gpu::cuda::ensure_for(d).map_err(ltx_gpu::GpuError::from)?;
        }
        let mut chunks = Vec::with_capacity(layout.chunks.len());
        for &bytes in &layout.chunks {
            let t = match pin_for {
                Some(_) if bytes > 0 => ltx_gpu::pinned::empty(bytes)?,
                _ => Tensor::f_empty([bytes as i64], (Kind::Uint8, Device::Cpu))?,
            };
            chunks.push(t);
        }
        Ok(Self { chunks })
    }

    /// Whether torch reports every chunk's memory as page-locked (asked of the memory itself,
    /// not remembered from the allocation).
    pub fn pinned(&self) -> bool {
        self.chunks.iter().any(|c| c.numel() > 0)
            && self
                .chunks
                .iter()
                .all(|c| c.numel() == 0 || ltx_gpu::pinned::is_pinned(c))
    }

    pub fn chunk(&self, i: usize) -> &Tensor {
        &self.chunks[i]
    }

    pub fn bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.numel()).sum()
    }

    /// The bytes of one group, as a 1-D uint8 view.
    pub fn span(&self, s: Span) -> Result<Tensor> {
        Ok(self.chunks[s.chunk].f_narrow(0, s.offset as i64, s.bytes as i64)?)
    }
}

/// A typed, shaped view of `bytes` (1-D uint8) starting at `offset`.
pub fn typed_view(bytes: &Tensor, offset: usize, kind: Kind, shape: &[i64]) -> Result<Tensor> {
    let numel: i64 = shape.iter().product();
    let n = numel as usize * kind.elt_size_in_bytes();
    if offset + n > bytes.numel() {
        return Err(OffloadError::Invalid(format!(
            "a {kind:?} {shape:?} tensor at byte {offset} overruns a {}-byte buffer",
            bytes.numel()
        )));
    }
    Ok(bytes
        .f_narrow(0, offset as i64, n as i64)?
        .f_view_dtype(kind)?
        .f_view(shape)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_stay_whole_and_aligned() {
        let groups = vec![vec![10, 300], vec![1000], vec![5000], vec![1, 1, 1]];
        let l = Layout::pack(&groups, 2048);
        // group 0: 256 + 512 = 768; group 1: 1024 → 1792 in chunk 0; group 2 alone (5120);
        // group 3: 768 in a new chunk.
        assert_eq!(l.chunks, vec![1792, 5120, 768]);
        assert_eq!(
            l.groups
                .iter()
                .map(|s| (s.chunk, s.offset))
                .collect::<Vec<_>>(),
            vec![(0, 0), (0, 768), (1, 0), (2, 0)]
        );
        assert_eq!(l.offsets[0], vec![0, 256]);
        assert_eq!(l.offsets[3], vec![0, 256, 512]);
        for (s, offs) in l.groups.iter().zip(&l.offsets) {
            assert_eq!(s.offset % ALIGN, 0);
            assert!(offs.iter().all(|o| o % ALIGN == 0));
            assert!(s.offset + s.bytes <= l.chunks[s.chunk]);
        }
    }

    #[test]
    fn typed_views_share_the_chunk() {
        let l = Layout::pack(&[vec![24, 8]], 1 << 20);
        let arena = HostArena::allocate(&l, None).unwrap();
        let bytes = arena.span(l.groups[0]).unwrap();
        let mut a = typed_view(&bytes, l.offsets[0][0], Kind::Float, &[2, 3]).unwrap();
        a.copy_(&Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.]).view([2, 3]));
        let again = typed_view(&arena.span(l.groups[0]).unwrap(), 0, Kind::Float, &[6]).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(&again).unwrap(),
            vec![1., 2., 3., 4., 5., 6.]
        );
        assert!(typed_view(&bytes, 256, Kind::Float, &[100]).is_err());
    }
}
