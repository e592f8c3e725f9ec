//! Calls around each block of a model's main loop, so weights can be placed just in time (the
//! layer-streaming offloader) without the models knowing where their weights live.

use crate::Result;

/// Called by a model around block `i` of its block loop, in order. `before` returns once the
/// block's weights may be used by work queued after it (it may queue a device-side wait
/// rather than block the host); `after` once the block's work is queued.
pub trait BlockHooks: Send + Sync {
    fn before(&self, block: usize) -> Result<()>;
    fn after(&self, block: usize) -> Result<()>;
}

/// Runs `f` for every block with the hooks (if any) around it.
pub(crate) fn run_blocks<B, T>(
    blocks: &[B],
    hooks: Option<&dyn BlockHooks>,
    mut x: T,
    mut f: impl FnMut(&B, T) -> Result<T>,
) -> Result<T> {
    for (i, block) in blocks.iter().enumerate() {
        if let Some(h) = hooks {
            h.before(i)?;
        }
        x = f(block, x)?;
        if let Some(h) = hooks {
            h.after(i)?;
        }
    }
    Ok(x)
}
