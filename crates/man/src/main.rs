//! `bootc-man DIR`: write bootc's man pages into DIR (`docs/man`).

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let dir = std::env::args_os().nth(1).context("usage: bootc-man DIR")?;
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("Creating {}", dir.display()))?;
    for (name, text) in bootc_man::pages()? {
        let path = dir.join(&name);
        std::fs::write(&path, text).with_context(|| format!("Writing {}", path.display()))?;
    }
    Ok(())
}
