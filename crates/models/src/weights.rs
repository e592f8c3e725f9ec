//! Weights as users have them: safetensors files (single or sharded with an index), memory
//! mapped and converted tensor by tensor to the requested dtype and device as a module asks
//! for them. Loading is strict: [`Vb::get`] fails on a missing or wrongly shaped tensor and
//! [`WeightStore::finish`] on tensors that no module asked for.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Display;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ltx_gpu::rng::Generator;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use crate::{ModelError, Result};

struct Entry {
    file: usize,
    /// In-memory stores ([`WeightStore::from_tensors`]): the tensor itself (`file` unused).
    tensor: Option<Tensor>,
    kind: Kind,
    shape: Vec<i64>,
    start: usize,
    end: usize,
}

struct Mapped {
    path: PathBuf,
    map: Mmap,
}

/// Named tensors from one or more safetensors files of one model component, or random
/// tensors made on request (the `demo` model).
pub struct WeightStore {
    random: bool,
    /// Random stores: hand out zero-byte expanded tensors of the right shape and dtype (for
    /// planning memory of released shapes without allocating them).
    shapes_only: bool,
    files: Vec<Mapped>,
    index: HashMap<String, Entry>,
    used: RefCell<HashSet<String>>,
    loaded_bytes: std::cell::Cell<u64>,
    handed_out: RefCell<Vec<(String, Tensor)>>,
    /// Random stores: the generator the numbers come from (on its own device); None: torch's
    /// process-wide generator of the drawing device.
    rng: Option<SharedGenerator>,
    description: String,
    kind: Kind,
    device: Device,
}

/// One generator several random stores draw from in turn (see [`WeightStore::random_from`]).
pub type SharedGenerator = Arc<Mutex<Generator>>;

/// A [`SharedGenerator`] on `device` seeded with `seed`.
pub fn shared_generator(device: Device, seed: u64) -> Result<SharedGenerator> {
    Ok(Arc::new(Mutex::new(Generator::new(device, seed)?)))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// The shard file names of a `*.safetensors.index.json` (`{"weight_map": {name: file}}`).
fn index_files(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(io(index))?;
    let parsed: Index = serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: index.to_path_buf(),
        source,
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let names: BTreeSet<String> = parsed.weight_map.into_values().collect();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

impl WeightStore {
    /// Opens the weights of one diffusers component folder (`transformer/`, `vae/`, …): the
    /// sharded index if there is one, else `diffusion_pytorch_model.safetensors` or
    /// `model.safetensors`, else the folder's only `*.safetensors` file. A folder that has only
    /// a variant's files (`diffusion_pytorch_model.fp16.safetensors`, or the sharded
    /// `*.safetensors.index.fp16.json`) loads that variant, as people download fp16-only repos.
    pub fn from_component_dir(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        Self::from_component_dir_variant(dir, None, kind, device)
    }

    /// Like [`WeightStore::from_component_dir`], preferring `variant`'s files (diffusers'
    /// `variant="fp16"`: `diffusion_pytorch_model.fp16.safetensors`,
    /// `diffusion_pytorch_model.safetensors.index.fp16.json`) when the folder has them, the
    /// plain files otherwise.
    pub fn from_component_dir_variant(
        dir: &Path,
        variant: Option<&str>,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        const STEMS: [&str; 2] = ["diffusion_pytorch_model", "model"];
        let mut wanted: Vec<Option<&str>> = Vec::new();
        if let Some(v) = variant {
            wanted.push(Some(v));
        }
        wanted.push(None);
        for v in wanted {
            for stem in STEMS {
                let index = match v {
                    Some(v) => dir.join(format!("{stem}.safetensors.index.{v}.json")),
                    None => dir.join(format!("{stem}.safetensors.index.json")),
                };
                if index.is_file() {
                    return Self::from_files(&index_files(&index)?, kind, device);
                }
            }
            for stem in STEMS {
                let single = match v {
                    Some(v) => dir.join(format!("{stem}.{v}.safetensors")),
                    None => dir.join(format!("{stem}.safetensors")),
                };
                if single.is_file() {
                    return Self::from_files(&[single], kind, device);
                }
            }
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        found.sort();
        // Only a variant's sharded index (no plain weights): that variant.
        let variant_indexes: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    STEMS.iter().any(|s| {
                        n.starts_with(&format!("{s}.safetensors.index.")) && n.ends_with(".json")
                    })
                })
            })
            .collect();
        if let [index] = variant_indexes.as_slice() {
            return Self::from_files(&index_files(index)?, kind, device);
        }
        match found.len() {
            1 => Self::from_files(&found, kind, device),
            0 => Err(ModelError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no *.safetensors weights in this folder",
                ),
            }),
            _ => Err(ModelError::UnsupportedConfig(format!(
                "{}: several *.safetensors files and no index.json to say which belong together: {found:?}",
                dir.display()
            ))),
        }
    }

    /// Memory-maps `paths` and indexes their tensors; tensors load when a module asks.
    pub fn from_files(paths: &[PathBuf], kind: Kind, device: Device) -> Result<Self> {
        Self::from_files_renamed(paths, kind, device, &|name| Some(name.to_string()))
    }

    /// Like [`WeightStore::from_files`], with every tensor name passed through `rename`:
    /// `None` leaves the tensor out (it belongs to another component of a single-file
    /// checkpoint), `Some(new)` indexes it under the model's parameter name.
    pub fn from_files_renamed(
        paths: &[PathBuf],
        kind: Kind,
        device: Device,
        rename: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let mut files = Vec::new();
        let mut index: HashMap<String, Entry> = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(io(path))?;
            // SAFETY: the file is opened read-only; like every safetensors reader we assume it is
            // not truncated or rewritten while the model loads.
            let map = unsafe { Mmap::map(&file) }.map_err(io(path))?;
            let (header, meta) =
                SafeTensors::read_metadata(&map).map_err(|e| ModelError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            let base = 8 + header;
            for (original, info) in meta.tensors() {
                let Some(name) = rename(&original) else {
                    continue;
                };
                let kind = kind_of(info.dtype).ok_or_else(|| ModelError::UnsupportedDtype {
                    path: path.clone(),
                    name: name.clone(),
                    dtype: format!("{:?}", info.dtype),
                })?;
                if let Some(prev) = index.get(&name) {
                    return Err(ModelError::DuplicateTensor {
                        name,
                        first: paths[prev.file].clone(),
                        second: path.clone(),
                    });
                }
                let entry = Entry {
                    file: i,
                    tensor: None,
                    kind,
                    shape: info.shape.iter().map(|&d| d as i64).collect(),
                    start: base + info.data_offsets.0,
                    end: base + info.data_offsets.1,
                };
                index.insert(name, entry);
            }
            files.push(Mapped {
                path: path.clone(),
                map,
            });
        }
        let description = match paths {
            [one] => one.display().to_string(),
            _ => format!(
                "{} ({} files)",
                paths
                    .first()
                    .and_then(|p| p.parent())
                    .map_or_else(String::new, |d| d.display().to_string()),
                paths.len()
            ),
        };
        Ok(Self {
            random: false,
            shapes_only: false,
            files,
            index,
            used: RefCell::default(),
            loaded_bytes: std::cell::Cell::new(0),
            handed_out: RefCell::default(),
            rng: None,
            description,
            kind,
            device,
        })
    }

    /// A store over named tensors already in memory (read from a format other than
    /// safetensors, e.g. a `torch.save` file), described as `description` in errors; strict
    /// like the file-backed stores.
    pub fn from_tensors(
        named: Vec<(String, Tensor)>,
        description: &str,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let mut index: HashMap<String, Entry> = HashMap::new();
        for (name, t) in named {
            if index.contains_key(&name) {
                return Err(ModelError::UnsupportedConfig(format!(
                    "{description}: tensor {name} appears twice"
                )));
            }
            let entry = Entry {
                file: 0,
                kind: t.kind(),
                shape: t.size(),
                start: 0,
                end: 0,
                tensor: Some(t),
            };
            index.insert(name, entry);
        }
        Ok(Self {
            random: false,
            shapes_only: false,
            files: Vec::new(),
            index,
            used: RefCell::default(),
            loaded_bytes: std::cell::Cell::new(0),
            handed_out: RefCell::default(),
            rng: None,
            description: description.to_string(),
            kind,
            device,
        })
    }

    /// A store that makes every tensor a module asks for, at random from torch's global
    /// generator (seed it first), scaled so activations stay in range. For tests and benches
    /// on one thread; a model a job runs comes from [`WeightStore::random_from`].
    pub fn random(kind: Kind, device: Device) -> Self {
        Self {
            random: true,
            shapes_only: false,
            files: Vec::new(),
            index: HashMap::new(),
            used: RefCell::default(),
            loaded_bytes: std::cell::Cell::new(0),
            handed_out: RefCell::default(),
            rng: None,
            description: "random weights (demo model)".into(),
            kind,
            device,
        }
    }

    /// Like [`WeightStore::random`], the numbers drawn from `rng` (on its device: a GPU draws
    /// billions of them quickly) and the tensors kept on `device`. Stores sharing one
    /// generator draw one sequence, in the order their modules ask for tensors — the `demo`
    /// models' weights, the same on every machine and untouched by any other thread's draws.
    pub fn random_from(kind: Kind, device: Device, rng: SharedGenerator) -> Self {
        Self {
            rng: Some(rng),
            ..Self::random(kind, device)
        }
    }

    /// [`WeightStore::random_from`] with a generator of its own on `generate_on` (default:
    /// `device`), seeded with `seed`: random weights from a seed.
    pub fn random_seeded(
        kind: Kind,
        device: Device,
        seed: u64,
        generate_on: Option<Device>,
    ) -> Result<Self> {
        let rng = shared_generator(generate_on.unwrap_or(device), seed)?;
        Ok(Self::random_from(kind, device, rng))
    }

    /// A store whose tensors have the shapes and dtype the modules ask for but no memory (one
    /// element expanded): the parameter names and byte sizes of a model of any size, for
    /// memory planning. Its modules must not be run.
    pub fn shapes_only(kind: Kind) -> Self {
        Self {
            shapes_only: true,
            description: "shapes only (no weights)".into(),
            ..Self::random(kind, Device::Cpu)
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn root(&self) -> Vb<'_> {
        Vb {
            store: self,
            prefix: String::new(),
        }
    }

    /// Names of every tensor in the files.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    fn random_tensor(&self, name: &str, shape: &[i64], kind: Kind) -> Result<Tensor> {
        let device = match &self.rng {
            Some(g) => g.lock().unwrap_or_else(|p| p.into_inner()).device(),
            None => self.device,
        };
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let opts = (Kind::Float, device);
        let t = if leaf == "timestep_scale_multiplier" {
            Tensor::f_full(shape, 1000.0, opts)?
        } else if leaf == "latents_std" || (leaf == "weight" && shape.len() == 1) {
            Tensor::f_ones(shape, opts)? // norm weights
        } else if leaf == "bias" || leaf == "latents_mean" {
            Tensor::f_zeros(shape, opts)?
        } else {
            let fan_in: i64 = shape.iter().skip(1).product::<i64>().max(1);
            let std = if shape.len() >= 2 {
                1.0 / (fan_in as f64).sqrt()
            } else {
                0.1
            };
            let normal = match &self.rng {
                Some(g) => g
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .randn(shape, Kind::Float)?,
                None => Tensor::f_randn(shape, opts)?,
            };
            normal * std
        };
        Ok(t.f_to_kind(kind)?)
    }

    fn load(&self, name: &str, expected: &[i64], kind: Kind) -> Result<Tensor> {
        let t = self.load_uncounted(name, expected, kind)?;
        self.loaded_bytes
            .set(self.loaded_bytes.get() + tensor_bytes(&t));
        self.handed_out
            .borrow_mut()
            .push((name.to_string(), t.shallow_clone()));
        Ok(t)
    }

    /// Every tensor handed out so far, by full name, as handles sharing the modules' tensors:
    /// `set_data` on one moves the module's weight (how the offloader places weights).
    pub fn take_params(&self) -> Vec<(String, Tensor)> {
        std::mem::take(&mut self.handed_out.borrow_mut())
    }

    /// Bytes of every tensor handed out so far (the weights the built modules hold).
    pub fn loaded_bytes(&self) -> u64 {
        self.loaded_bytes.get()
    }

    fn load_uncounted(&self, name: &str, expected: &[i64], kind: Kind) -> Result<Tensor> {
        if self.shapes_only {
            return Ok(Tensor::f_zeros([], (kind, Device::Cpu))?.f_expand(expected, false)?);
        }
        // CUDA before the first tensor moves there (see ltx_gpu::cuda::ensure_for).
        // (A random store's generator loaded CUDA when it was made on a CUDA device.)
        ltx_gpu::cuda::ensure_for(self.device).map_err(|e| ModelError::Memory(e.to_string()))?;
        if self.random {
            return Ok(self
                .random_tensor(name, expected, kind)?
                .f_to_device(self.device)?);
        }
        let entry = self
            .index
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                expected: expected.to_vec(),
                source_desc: self.description.clone(),
            })?;
        if entry.shape != expected {
            return Err(ModelError::ShapeMismatch {
                name: name.to_string(),
                found: entry.shape.clone(),
                expected: expected.to_vec(),
                source_desc: self.description.clone(),
            });
        }
        self.used.borrow_mut().insert(name.to_string());
        if let Some(t) = &entry.tensor {
            // A copy, so the module never aliases the caller's tensor.
            return Ok(t
                .f_to_device(self.device)?
                .f_to_kind(kind)?
                .f_detach_copy()?
                .f_contiguous()?);
        }
        let bytes = &self.files[entry.file].map[entry.start..entry.end];
        let t = Tensor::f_from_data_size(bytes, &entry.shape, entry.kind)?;
        Ok(t.f_to_device(self.device)?.f_to_kind(kind)?)
    }

    /// Fails if the files hold tensors that no module asked for.
    pub fn finish(&self) -> Result<()> {
        let used = self.used.borrow();
        let mut unexpected: Vec<String> = self
            .index
            .iter()
            .filter(|(n, _)| !used.contains(*n))
            .map(|(n, e)| format!("{n} {:?}", e.shape))
            .collect();
        if unexpected.is_empty() {
            return Ok(());
        }
        unexpected.sort();
        let count = unexpected.len();
        let mut names = unexpected
            .into_iter()
            .take(10)
            .collect::<Vec<_>>()
            .join(", ");
        if count > 10 {
            names.push_str(&format!(" and {} more", count - 10));
        }
        Err(ModelError::UnexpectedTensors {
            names,
            source_desc: self.description.clone(),
        })
    }

    /// Which files back this store.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }
}

/// Bytes of a tensor's elements.
pub fn tensor_bytes(t: &Tensor) -> u64 {
    t.numel() as u64 * t.kind().elt_size_in_bytes() as u64
}

/// Names and shapes of the tensors in a safetensors file (reads only the header).
pub fn tensor_shapes(path: &Path) -> Result<HashMap<String, Vec<i64>>> {
    let file = File::open(path).map_err(io(path))?;
    // SAFETY: read-only map of a file we only read the header of.
    let map = unsafe { Mmap::map(&file) }.map_err(io(path))?;
    let (_, meta) = SafeTensors::read_metadata(&map).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(meta
        .tensors()
        .into_iter()
        .map(|(n, i)| (n, i.shape.iter().map(|&d| d as i64).collect()))
        .collect())
}

/// A position in the parameter tree (`transformer_blocks.3.attn1`), like tch's `nn::Path`.
#[derive(Clone)]
pub struct Vb<'a> {
    store: &'a WeightStore,
    prefix: String,
}

impl<'a> Vb<'a> {
    /// The child named `name`: `vb.pp("attn1").pp(0)`.
    pub fn pp(&self, name: impl Display) -> Vb<'a> {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Vb {
            store: self.store,
            prefix,
        }
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Tensor `name` under this path, checked against `shape`, in the store's dtype.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        self.store.load(&self.full(name), shape, self.store.kind)
    }

    /// Like [`Vb::get`], but kept in float32 whatever the store's dtype (for parameters the
    /// reference implementation uses in full precision).
    pub fn get_f32(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        self.store.load(&self.full(name), shape, Kind::Float)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.store.index.contains_key(&self.full(name))
    }

    pub fn kind(&self) -> Kind {
        self.store.kind
    }

    pub fn device(&self) -> Device {
        self.store.device
    }
}
