//! The `hydrant` command: parses the command line and hands over to the library.

fn main() -> anyhow::Result<()> {
    Ok(())
}
