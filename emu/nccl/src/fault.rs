//! Fault injection, for tests of what runs over this library (see the crate doc): a process
//! started with `CONVOY_NCCL_EMU_KILL_AT=N` SIGKILLs itself inside its N-th collective, and
//! with `CONVOY_NCCL_EMU_KILL_WHEN=FILE` as well it first waits there, its peers blocked in the
//! same collective, until FILE exists.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::error::NcclError;

pub(crate) const KILL_AT: &str = "CONVOY_NCCL_EMU_KILL_AT";
pub(crate) const KILL_WHEN: &str = "CONVOY_NCCL_EMU_KILL_WHEN";

/// The kill a process was asked for.
#[derive(Debug)]
pub(crate) struct Kill {
    /// The collective to die in, counted from 1 on each communicator (point-to-point calls
    /// are not collectives).
    pub at: u64,
    /// Wait for this file to exist before dying.
    pub when: Option<PathBuf>,
}

/// What this process's environment asks for, read once. A value of `CONVOY_NCCL_EMU_KILL_AT`
/// that is not a collective number is an error that every collective reports, so that a test
/// that sets it wrong fails saying why instead of running without its fault.
pub(crate) fn planned() -> Result<Option<&'static Kill>, NcclError> {
    static PLAN: OnceLock<Result<Option<Kill>, NcclError>> = OnceLock::new();
    PLAN.get_or_init(|| parse(std::env::var_os(KILL_AT), std::env::var_os(KILL_WHEN)))
        .as_ref()
        .map(Option::as_ref)
        .map_err(Clone::clone)
}

fn parse(at: Option<OsString>, when: Option<OsString>) -> Result<Option<Kill>, NcclError> {
    let Some(raw) = at.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let at = raw
        .to_str()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&n| n >= 1)
        .ok_or_else(|| {
            NcclError::InvalidUsage(format!(
                "{KILL_AT}={} is not the number of a collective (1, 2, …)",
                raw.to_string_lossy()
            ))
        })?;
    let when = when.filter(|v| !v.is_empty()).map(PathBuf::from);
    Ok(Some(Kill { at, when }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variables_are_read_as_a_collective_number_and_a_file() {
        let os = |s: &str| Some(OsString::from(s));
        assert!(parse(None, os("/x")).expect("unset").is_none());
        assert!(parse(os(""), None).expect("empty").is_none());
        let k = parse(os("3"), None).expect("3").expect("a kill");
        assert_eq!((k.at, k.when), (3, None));
        let k = parse(os(" 12 "), os("/tmp/go"))
            .expect("12")
            .expect("a kill");
        assert_eq!((k.at, k.when), (12, Some(PathBuf::from("/tmp/go"))));
        for bad in ["0", "-1", "two", "1.5"] {
            let e = parse(os(bad), None).expect_err(bad).to_string();
            assert!(
                e.contains(&format!("CONVOY_NCCL_EMU_KILL_AT={bad} is not")),
                "{e}"
            );
        }
    }
}
