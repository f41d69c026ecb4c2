//! What `Monitor::list_containers` reports: the containers monitored now and
//! the most recent ones that exited, for an operator's `ringmon ctl ps`.
//! Exited entries are kept in a ring of [`MAX_EXITED_KEPT`], so a
//! long-running server's memory does not grow with every container it ever
//! ran.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::engine::counters::ContainerCounters;

use crate::log::LogFormat;

/// Exited containers remembered for listing (the oldest is forgotten first).
pub const MAX_EXITED_KEPT: usize = 256;

/// A container as listed.
#[derive(Clone, Debug)]
pub struct ContainerSummary {
    pub id: String,
    pub pid: u32,
    /// When `create` finished (the runtime's create returned).
    pub created: SystemTime,
    /// `None` while running; the exit code its exit files got.
    pub exit: Option<ContainerExit>,
    /// The log drivers it writes to (journald has an empty path).
    pub logs: Vec<(LogFormat, PathBuf)>,
    /// What the engine counted for it (kept after its exit: the final
    /// values, for the metrics).
    pub counters: Arc<ContainerCounters>,
}

/// How and when a listed container ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContainerExit {
    pub code: i32,
    pub at: SystemTime,
}

/// The recently exited containers, newest last, at most
/// [`MAX_EXITED_KEPT`].
#[derive(Debug, Default)]
pub struct ExitedRing {
    entries: VecDeque<ContainerSummary>,
}

impl ExitedRing {
    /// Remembers an exited container, forgetting the oldest beyond the bound
    /// and an older entry under the same id (an id can be reused once its
    /// container is gone).
    pub fn push(&mut self, summary: ContainerSummary) {
        self.entries.retain(|e| e.id != summary.id);
        if self.entries.len() >= MAX_EXITED_KEPT {
            self.entries.pop_front();
        }
        self.entries.push_back(summary);
    }

    /// Forgets the entry of a container id that is created again.
    pub fn forget(&mut self, id: &str) {
        self.entries.retain(|e| e.id != id);
    }

    pub fn iter(&self) -> impl Iterator<Item = &ContainerSummary> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(id: &str) -> ContainerSummary {
        ContainerSummary {
            id: id.into(),
            pid: 1,
            created: SystemTime::UNIX_EPOCH,
            exit: Some(ContainerExit {
                code: 0,
                at: SystemTime::UNIX_EPOCH,
            }),
            logs: Vec::new(),
            counters: Default::default(),
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_and_one_entry_per_id() {
        let mut ring = ExitedRing::default();
        for i in 0..MAX_EXITED_KEPT + 10 {
            ring.push(exited(&format!("c{i}")));
        }
        assert_eq!(ring.iter().count(), MAX_EXITED_KEPT);
        assert_eq!(ring.iter().next().unwrap().id, "c10");
        ring.push(exited("c20"));
        assert_eq!(ring.iter().filter(|e| e.id == "c20").count(), 1);
        assert_eq!(ring.iter().last().unwrap().id, "c20");
        ring.forget("c20");
        assert!(ring.iter().all(|e| e.id != "c20"));
    }
}
