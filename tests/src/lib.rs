//! convoy's end-to-end tests (in `tests/`): the real binaries — `convoy`, `convoy-coordinator`,
//! `convoy-worker`, `convoy-rank` — on 127.0.0.1, driven as a user drives them. The helpers
//! they use are in `convoy-testkit`.
