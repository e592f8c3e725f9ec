//! A component's weights with their master copies in a [`HostArena`], grouped into units.

use std::ops::Range;

use tch::{Device, Kind, Tensor};

use crate::arena::{typed_view, HostArena, Layout, Span};
use crate::{OffloadError, Result};

/// Which unit a parameter name belongs to (`None`: the always-resident remainder). Every
/// function taking a unit rule accepts any `Fn(&str) -> Option<usize>` (a rule built from a
/// model's block names, [`prefix_units`]); this is the plain-function form.
pub type UnitOf = fn(&str) -> Option<usize>;

/// `transformer_blocks.{i}.…` (LTX-Video transformer).
pub fn ltx_transformer_unit(name: &str) -> Option<usize> {
    index_after(name, "transformer_blocks.")
}

/// `encoder.block.{i}.…` (T5), except the relative attention bias that every block uses.
pub fn t5_unit(name: &str) -> Option<usize> {
    if name.contains("relative_attention_bias") {
        return None;
    }
    index_after(name, "encoder.block.")
}

fn index_after(name: &str, prefix: &str) -> Option<usize> {
    let rest = name.strip_prefix(prefix)?;
    rest.split('.').next()?.parse().ok()
}

/// Units named by parameter prefixes, numbered in the order given: a parameter belongs to the
/// unit whose name is a prefix of its own at a `.` boundary. SDXL's UNet and ControlNet (their
/// `block_names()`, in call order: `down_blocks.1.attentions.0`, `mid_block.resnets.1`,
/// `up_blocks.0.upsamplers.0`, …): every resnet, transformer and resampler is a unit, the IP
/// weights of an `attn2` go with their transformer, and `conv_in`, the embeddings, the output
/// layers and the ControlNet's `controlnet_*` convolutions are the remainder.
pub fn prefix_units(
    names: &[String],
) -> impl Fn(&str) -> Option<usize> + Clone + Send + Sync + 'static {
    let map: std::sync::Arc<std::collections::HashMap<String, usize>> = std::sync::Arc::new(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect(),
    );
    move |name: &str| {
        name.match_indices('.')
            .find_map(|(at, _)| map.get(&name[..at]).copied())
    }
}

/// `(total, remainder, largest unit)` bytes of named tensors grouped by `unit_of`.
pub fn group_sizes(
    named: &[(String, Tensor)],
    unit_of: impl Fn(&str) -> Option<usize>,
) -> (u64, u64, u64) {
    let mut units: std::collections::BTreeMap<usize, u64> = Default::default();
    let (mut total, mut remainder) = (0, 0);
    for (n, t) in named {
        let b = t.numel() as u64 * t.kind().elt_size_in_bytes() as u64;
        total += b;
        match unit_of(n) {
            Some(u) => *units.entry(u).or_default() += b,
            None => remainder += b,
        }
    }
    (total, remainder, units.values().copied().max().unwrap_or(0))
}

/// Default chunk size of the host arena: large allocations, few of them.
pub const CHUNK_BYTES: usize = 256 << 20;

struct Param {
    handle: Tensor,
    kind: Kind,
    shape: Vec<i64>,
}

/// How tensors are grouped: `order` lists the input indices remainder first, then unit by
/// unit (load order within each); `groups` are ranges of `order`. The first
/// `remainder_groups` groups are the remainder cut at tensor boundaries into pieces of at
/// most one chunk (it never moves as one copy, so it need not be contiguous); each later group
/// is one whole unit (one copy into one slot).
struct Grouping {
    order: Vec<usize>,
    groups: Vec<Range<usize>>,
    remainder_groups: usize,
}

fn grouping<'a>(
    named: impl Iterator<Item = (&'a str, usize)>,
    unit_of: impl Fn(&str) -> Option<usize>,
    chunk_bytes: usize,
) -> Result<(Grouping, Vec<Vec<usize>>)> {
    let mut keyed: Vec<(Option<usize>, usize, usize)> = named
        .enumerate()
        .map(|(i, (n, bytes))| (unit_of(n), i, bytes))
        .collect();
    // Remainder first, then units in order; load order within a group.
    keyed.sort_by_key(|(u, i, _)| (u.map_or(0, |u| u + 1), *i));
    let n_units = keyed
        .iter()
        .filter_map(|(u, ..)| *u)
        .max()
        .map_or(0, |m| m + 1);
    let mut groups: Vec<Range<usize>> = Vec::new();
    let mut sizes: Vec<Vec<usize>> = Vec::new();
    let mut piece_bytes = 0;
    let mut remainder_groups = 0;
    let mut unit_groups = vec![None::<usize>; n_units];
    for (pos, &(u, _, bytes)) in keyed.iter().enumerate() {
        let g = match u {
            None => {
                let padded = crate::arena::align(bytes);
                if remainder_groups == 0 || (piece_bytes > 0 && piece_bytes + padded > chunk_bytes)
                {
                    groups.push(pos..pos);
                    sizes.push(Vec::new());
                    remainder_groups += 1;
                    piece_bytes = 0;
                }
                piece_bytes += padded;
                remainder_groups - 1
            }
            Some(u) => *unit_groups[u].get_or_insert_with(|| {
                groups.push(pos..pos);
                sizes.push(Vec::new());
                groups.len() - 1
            }),
        };
        groups[g].end = pos + 1;
        sizes[g].push(bytes);
    }
    if let Some(u) = unit_groups.iter().position(Option::is_none) {
        return Err(OffloadError::Invalid(format!("unit {u} has no parameters")));
    }
    let order = keyed.into_iter().map(|(_, i, _)| i).collect();
    Ok((
        Grouping {
            order,
            groups,
            remainder_groups,
        },
        sizes,
    ))
}

/// The host layout [`OffloadedWeights`] would give tensors of these names and byte sizes:
/// arithmetic only, so the memory a released model needs can be planned (and tested) without
/// allocating it. Its `total_bytes` is the host memory the arena would hold.
pub fn plan_layout(
    named: &[(String, usize)],
    unit_of: impl Fn(&str) -> Option<usize>,
    chunk_bytes: usize,
) -> Result<Layout> {
    let (_, sizes) = grouping(
        named.iter().map(|(n, b)| (n.as_str(), *b)),
        unit_of,
        chunk_bytes,
    )?;
    Ok(Layout::pack(&sizes, chunk_bytes))
}

/// Weights whose master copies live once in host memory; the modules' tensors are pointed at
/// the host copy, at a device copy of the whole component, or unit by unit at streaming slots.
pub struct OffloadedWeights {
    params: Vec<Param>,
    /// The remainder's pieces, then one group per unit. Indices into `params`.
    groups: Vec<Range<usize>>,
    remainder_groups: usize,
    layout: Layout,
    arena: HostArena,
    device: Device,
    /// Model mode: the device copy of every chunk while onloaded.
    device_chunks: Option<Vec<Tensor>>,
}

impl OffloadedWeights {
    /// Moves `named` (the modules' parameter handles, e.g. from
    /// `WeightStore::take_params`) into a host arena, pinned if `device` is CUDA, grouped by
    /// `unit_of`; every module tensor then points at its host copy. Units must be numbered
    /// 0..n without gaps.
    pub fn new(
        named: Vec<(String, Tensor)>,
        unit_of: impl Fn(&str) -> Option<usize>,
        device: Device,
        chunk_bytes: usize,
    ) -> Result<Self> {
        Self::with_pinning(named, unit_of, device, chunk_bytes, device.is_cuda())
    }

    /// Like [`OffloadedWeights::new`], choosing whether the host copy is page-locked (the
    /// pageable variant is the accelerate-style baseline of the benchmarks).
    pub fn with_pinning(
        named: Vec<(String, Tensor)>,
        unit_of: impl Fn(&str) -> Option<usize>,
        device: Device,
        chunk_bytes: usize,
        pin: bool,
    ) -> Result<Self> {
        // CUDA first: pinning or moving a tensor before libtorch_cuda is loaded would disable
        // CUDA for the whole process.
        ltx_gpu::cuda::ensure_for(device).map_err(ltx_gpu::GpuError::from)?;
        let (grouping, sizes) = grouping(
            named.iter().map(|(n, t)| (n.as_str(), tensor_bytes(t))),
            unit_of,
            chunk_bytes,
        )?;
        let mut slots: Vec<Option<Tensor>> = named.into_iter().map(|(_, t)| Some(t)).collect();
        let params: Vec<Param> = grouping
            .order
            .iter()
            .map(|&i| {
                let t = slots[i].take().expect("each tensor is placed once");
                Param {
                    kind: t.kind(),
                    shape: t.size(),
                    handle: t,
                }
            })
            .collect();
        let layout = Layout::pack(&sizes, chunk_bytes);
        let arena = HostArena::allocate(&layout, (pin && device.is_cuda()).then_some(device))?;
        let mut w = Self {
            params,
            groups: grouping.groups,
            remainder_groups: grouping.remainder_groups,
            layout,
            arena,
            device,
            device_chunks: None,
        };
        for g in 0..w.groups.len() {
            let span = w.arena.span(w.layout.groups[g])?;
            for (k, p) in w.groups[g].clone().enumerate() {
                let mut host = typed_view(
                    &span,
                    w.layout.offsets[g][k],
                    w.params[p].kind,
                    &w.params[p].shape,
                )?;
                host.f_copy_(&w.params[p].handle.f_to_device(Device::Cpu)?)?;
                w.params[p].handle.f_set_data(&host)?;
            }
        }
        Ok(w)
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Bytes of the weights (unpadded).
    pub fn weight_bytes(&self) -> u64 {
        self.params.iter().map(|p| param_bytes(p) as u64).sum()
    }

    /// Host memory held: the arena's chunks, exactly as allocated (pinned or not), alignment
    /// padding included.
    pub fn host_bytes(&self) -> u64 {
        self.arena.bytes() as u64
    }

    pub fn pinned(&self) -> bool {
        self.arena.pinned()
    }

    pub fn num_units(&self) -> usize {
        self.groups.len() - self.remainder_groups
    }

    /// Padded bytes of unit `u`'s group (what one slot must hold).
    pub fn unit_bytes(&self, u: usize) -> usize {
        self.unit_span(u).bytes
    }

    pub fn max_unit_bytes(&self) -> usize {
        (0..self.num_units())
            .map(|u| self.unit_bytes(u))
            .max()
            .unwrap_or(0)
    }

    /// Padded bytes of the remainder (all its pieces).
    pub fn remainder_bytes(&self) -> usize {
        self.layout.groups[..self.remainder_groups]
            .iter()
            .map(|s| s.bytes)
            .sum()
    }

    /// Unit `u`'s bytes in the arena.
    pub fn unit_host(&self, u: usize) -> Result<Tensor> {
        self.arena.span(self.unit_span(u))
    }

    fn unit_span(&self, u: usize) -> Span {
        self.layout.groups[self.remainder_groups + u]
    }

    /// Points group `g`'s modules at the copy of the group in `bytes` (a 1-D uint8 buffer laid
    /// out like the arena's group, on any device).
    fn bind_group(&mut self, g: usize, bytes: &Tensor) -> Result<()> {
        for (k, p) in self.groups[g].clone().enumerate() {
            let view = typed_view(
                bytes,
                self.layout.offsets[g][k],
                self.params[p].kind,
                &self.params[p].shape,
            )?;
            self.params[p].handle.f_set_data(&view)?;
        }
        Ok(())
    }

    /// Unit `u`'s parameters: (the module handle, its host copy).
    pub fn unit_params(&self, u: usize) -> Result<Vec<(Tensor, Tensor)>> {
        let g = self.remainder_groups + u;
        let span = self.arena.span(self.layout.groups[g])?;
        self.groups[g]
            .clone()
            .enumerate()
            .map(|(k, p)| {
                let host = typed_view(
                    &span,
                    self.layout.offsets[g][k],
                    self.params[p].kind,
                    &self.params[p].shape,
                )?;
                Ok((self.params[p].handle.shallow_clone(), host))
            })
            .collect()
    }

    /// Points unit `u`'s modules at `slot` (which holds, or will hold before use, its bytes).
    pub fn bind_unit(&mut self, u: usize, slot: &Tensor) -> Result<()> {
        self.bind_group(self.remainder_groups + u, slot)
    }

    /// Copies the remainder into one buffer on `device` (asynchronously from pinned memory, on
    /// the current stream) and points its modules there; returns the buffer.
    pub fn onload_remainder(&mut self, device: Device) -> Result<Tensor> {
        let on = Tensor::f_empty([self.remainder_bytes() as i64], (Kind::Uint8, device))?;
        let mut at = 0;
        for g in 0..self.remainder_groups {
            let span = self.layout.groups[g];
            let host = self.arena.span(span)?;
            let dst = on.f_narrow(0, at as i64, span.bytes as i64)?;
            ltx_gpu::copy_into(&dst, &host, true)?;
            self.bind_group(g, &dst)?;
            at += span.bytes;
        }
        Ok(on)
    }

    /// Model mode: copies every chunk to the device (asynchronously from pinned memory, on
    /// the current stream) and points every module there.
    pub fn onload(&mut self) -> Result<()> {
        if self.device_chunks.is_some() {
            return Ok(());
        }
        let mut chunks = Vec::with_capacity(self.layout.chunks.len());
        for c in 0..self.layout.chunks.len() {
            chunks.push(
                self.arena
                    .chunk(c)
                    .f_to_device_(self.device, Kind::Uint8, true, false)?,
            );
        }
        for g in 0..self.groups.len() {
            let s = self.layout.groups[g];
            let bytes = chunks[s.chunk].f_narrow(0, s.offset as i64, s.bytes as i64)?;
            self.bind_group(g, &bytes)?;
        }
        self.device_chunks = Some(chunks);
        Ok(())
    }

    /// Points every module back at its host copy and drops the device copies (nothing is
    /// copied back: weights never change).
    pub fn offload(&mut self) -> Result<()> {
        for g in 0..self.groups.len() {
            let host = self.arena.span(self.layout.groups[g])?;
            self.bind_group(g, &host)?;
        }
        self.device_chunks = None;
        Ok(())
    }

    pub fn is_onloaded(&self) -> bool {
        self.device_chunks.is_some()
    }

    /// Bytes on the device in model mode (0 when offloaded).
    pub fn device_bytes(&self) -> u64 {
        self.device_chunks
            .as_ref()
            .map_or(0, |c| c.iter().map(|t| t.numel() as u64).sum())
    }
}

fn tensor_bytes(t: &Tensor) -> usize {
    t.numel() * t.kind().elt_size_in_bytes()
}

fn param_bytes(p: &Param) -> usize {
    p.shape.iter().product::<i64>() as usize * p.kind.elt_size_in_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names() {
        assert_eq!(
            ltx_transformer_unit("transformer_blocks.12.attn1.to_q.weight"),
            Some(12)
        );
        assert_eq!(ltx_transformer_unit("proj_in.weight"), None);
        assert_eq!(
            t5_unit("encoder.block.3.layer.1.DenseReluDense.wo.weight"),
            Some(3)
        );
        assert_eq!(
            t5_unit("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
            None
        );
        assert_eq!(t5_unit("shared.weight"), None);
    }

    #[test]
    fn prefix_units_follow_the_block_names() {
        let names: Vec<String> = [
            "down_blocks.0.resnets.0",
            "down_blocks.1.attentions.0",
            "down_blocks.1.attentions.1",
            "mid_block.resnets.1",
            "up_blocks.0.upsamplers.0",
        ]
        .map(String::from)
        .into();
        let unit = prefix_units(&names);
        assert_eq!(unit("down_blocks.0.resnets.0.conv1.weight"), Some(0));
        assert_eq!(
            unit("down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k_ip.weight"),
            Some(2)
        );
        assert_eq!(unit("mid_block.resnets.1.norm1.bias"), Some(3));
        assert_eq!(unit("up_blocks.0.upsamplers.0.conv.weight"), Some(4));
        // Only whole components: `attentions.10` is not `attentions.1`.
        assert_eq!(unit("down_blocks.1.attentions.10.proj_in.weight"), None);
        assert_eq!(unit("controlnet_down_blocks.0.weight"), None);
        assert_eq!(unit("conv_in.weight"), None);
        let (total, remainder, max) = group_sizes(
            &[
                (
                    "down_blocks.1.attentions.0.norm.weight".into(),
                    Tensor::zeros([3], (Kind::Float, Device::Cpu)),
                ),
                (
                    "conv_in.weight".into(),
                    Tensor::zeros([2], (Kind::Float, Device::Cpu)),
                ),
            ],
            &unit,
        );
        assert_eq!((total, remainder, max), (20, 8, 12));
    }

    #[test]
    fn modules_see_the_host_copy_and_model_mode_round_trips() {
        let a = Tensor::from_slice(&[1f32, 2., 3.]);
        let b = Tensor::from_slice(&[4f32, 5.]);
        let c = Tensor::from_slice(&[7f32]);
        let (ma, mb, mc) = (a.shallow_clone(), b.shallow_clone(), c.shallow_clone());
        let named = vec![
            ("transformer_blocks.1.w".to_string(), a),
            ("proj_in.weight".to_string(), c),
            ("transformer_blocks.0.w".to_string(), b),
        ];
        let mut w =
            OffloadedWeights::new(named, ltx_transformer_unit, Device::Cpu, 1 << 20).unwrap();
        assert_eq!(w.num_units(), 2);
        assert_eq!(w.weight_bytes(), 24);
        // The module's tensors now read the arena.
        assert_eq!(Vec::<f32>::try_from(&ma).unwrap(), vec![1., 2., 3.]);
        assert_eq!(Vec::<f32>::try_from(&mb).unwrap(), vec![4., 5.]);
        let host = w.unit_host(1).unwrap();
        assert_eq!(host.numel(), 256);
        // Writing the arena is seen by the module: they share memory.
        let _ = typed_view(&host, 0, Kind::Float, &[3])
            .unwrap()
            .f_add_scalar_(10.0)
            .unwrap();
        assert_eq!(Vec::<f32>::try_from(&ma).unwrap(), vec![11., 12., 13.]);
        w.onload().unwrap();
        assert!(w.is_onloaded());
        assert_eq!(Vec::<f32>::try_from(&mc).unwrap(), vec![7.]);
        w.offload().unwrap();
        assert_eq!(w.device_bytes(), 0);
        assert_eq!(Vec::<f32>::try_from(&mb).unwrap(), vec![4., 5.]);
    }

    #[test]
    fn a_gap_in_unit_numbers_is_an_error() {
        let named = vec![(
            "transformer_blocks.1.w".to_string(),
            Tensor::from_slice(&[1f32]),
        )];
        assert!(OffloadedWeights::new(named, ltx_transformer_unit, Device::Cpu, 1024).is_err());
    }
}
