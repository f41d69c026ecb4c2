//! Crash survival (issue 16): what the monitor hands the keeper, and how a
//! new worker resumes the containers an earlier one held.

use std::rc::Rc;

use super::Monitor;
use crate::keeper::{HeldContainer, KeeperLink};

impl Monitor {
    /// From now on, every container this monitor creates is held by the
    /// keeper behind `link` (its stdio descriptors and what resuming it
    /// needs), and its exit is reported there before it is reaped.
    pub fn use_keeper(&self, link: Rc<KeeperLink>) {
        let _ = link;
        // helper B
    }

    /// Resumes containers an earlier worker held: logging, attach, exit
    /// handling. Called once, before the RPC socket is served.
    pub fn resume(self: &Rc<Self>, held: Vec<HeldContainer>) {
        let _ = held;
        // helper B
    }
}
