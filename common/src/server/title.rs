//! Process titles (placeholder until the full implementation lands).

/// Sets the process title.
pub fn set_title(title: &str) {
    let _ = title;
}
