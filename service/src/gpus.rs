//! How the GPUs of a process are named to the ranks it starts, for the worker daemon (which
//! hands each CUDA rank one) and `convoy dev` (which deals them out between its workers).

/// The names of `count` GPUs the CUDA driver shows, as a child's `CUDA_VISIBLE_DEVICES` must
/// give them: the entries of this process's own `CUDA_VISIBLE_DEVICES` when it has one (a
/// process limited to GPUs 2 and 3 gives "2" and "3", not "0" and "1"), else the ordinals.
pub fn visible_names(count: usize) -> Vec<String> {
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|d| d.trim().to_string())
            .take(count)
            .collect(),
        _ => (0..count).map(|i| i.to_string()).collect(),
    }
}
