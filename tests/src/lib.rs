//! Integration tests for convoy live in `tests/`: they start the real binaries.
