//! SUMO runs for local corridors: `simulations/sumo/make_grid.sh` builds the 3x3 grid, runs it and
//! writes its detector files, for the demo, the replay benchmark and the tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why the grid could not be made.
#[derive(Debug, thiserror::Error)]
pub enum GridError {
    /// The script is not where it was looked for.
    #[error("{0} not found: run from the repository root")]
    Missing(PathBuf),
    /// The script could not be started.
    #[error("cannot run {script}: {source}")]
    Start {
        /// The script.
        script: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The script failed; its error output.
    #[error("{script} failed: {stderr}")]
    Failed {
        /// The script.
        script: PathBuf,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// Runs `script` (make_grid.sh) into `dir` with `args` (e.g. `--freq 5 --end 240`), with
/// `SUMO_HOME` defaulting to Debian's `/usr/share/sumo`.
///
/// # Errors
///
/// [`GridError`] naming the script and what went wrong.
pub fn make_grid(script: &Path, dir: &Path, args: &[&str]) -> Result<(), GridError> {
    if !script.is_file() {
        return Err(GridError::Missing(script.to_owned()));
    }
    let out = Command::new("bash")
        .arg(script)
        .arg(dir)
        .args(args)
        .env(
            "SUMO_HOME",
            std::env::var_os("SUMO_HOME").unwrap_or_else(|| "/usr/share/sumo".into()),
        )
        .output()
        .map_err(|source| GridError::Start {
            script: script.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(GridError::Failed {
            script: script.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}
