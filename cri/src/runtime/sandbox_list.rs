//! `ListPodSandbox` with its filter: id (full or prefix), state, labels.

use super::sandbox::SandboxRecord;
use crate::proto;

/// Whether a sandbox passes the filter (pure).
pub(super) fn matches(rec: &SandboxRecord, filter: &proto::PodSandboxFilter) -> bool {
    if !filter.id.is_empty() && !rec.id.as_str().starts_with(&filter.id) {
        return false;
    }
    if let Some(s) = &filter.state {
        if rec.state.to_cri() as i32 != s.state {
            return false;
        }
    }
    if !filter.label_selector.is_empty() {
        let labels = rec.config().labels;
        if !crate::util::labels_match(&labels, &filter.label_selector) {
            return false;
        }
    }
    true
}
