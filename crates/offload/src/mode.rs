use serde::{Deserialize, Serialize};

/// Where a component's weights live while the pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffloadMode {
    /// Whole components move to the GPU while they run (`*_ENABLE_CPU_OFFLOAD`).
    Model,
    /// Units (blocks, layers) streamed from pinned host memory through a ring of GPU slots
    /// (`*_ENABLE_SEQUENTIAL_CPU_OFFLOAD`).
    Sequential,
    /// Everything stays on the device.
    None,
}

impl OffloadMode {
    /// The original service's two switches: sequential wins, then model, else none.
    pub fn from_switches(cpu_offload: bool, sequential: bool) -> Self {
        if sequential {
            Self::Sequential
        } else if cpu_offload {
            Self::Model
        } else {
            Self::None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Sequential => "sequential",
            Self::None => "none",
        }
    }
}

impl std::fmt::Display for OffloadMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for OffloadMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "model" => Ok(Self::Model),
            "sequential" => Ok(Self::Sequential),
            "none" => Ok(Self::None),
            other => Err(format!(
                "offload mode {other:?}: expected none, model or sequential"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_map_as_in_the_original_service() {
        assert_eq!(OffloadMode::from_switches(true, false), OffloadMode::Model);
        assert_eq!(
            OffloadMode::from_switches(true, true),
            OffloadMode::Sequential
        );
        assert_eq!(
            OffloadMode::from_switches(false, true),
            OffloadMode::Sequential
        );
        assert_eq!(OffloadMode::from_switches(false, false), OffloadMode::None);
        assert_eq!(
            "Sequential".parse::<OffloadMode>(),
            Ok(OffloadMode::Sequential)
        );
        assert!("fast".parse::<OffloadMode>().is_err());
    }
}
