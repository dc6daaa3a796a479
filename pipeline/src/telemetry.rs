//! Console logging for the commands other than `run` (whose logs are set up by
//! [`crate::logs`]), and how a path is described in the start-up line.

use std::path::Path;

use tracing_subscriber::EnvFilter;

/// For commands that only print (check): warnings to standard error.
pub fn init_console_only() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::new("warn"))
        .try_init();
}

pub fn describe(path: &Path) -> String {
    path.canonicalize()
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}
