//! `capstan image build`: the capstan binary as an OCI image archive (with git, sh and ssh
//! for the controllers), importable with `capstan image import` or `ctr images import` and
//! loadable into kind with `kind load image-archive` — what the Helm chart runs.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use capstan_node_agent::pause_image::Image;
use clap::Args;

/// The name `capstan image build` gives the image by default (the chart's default image).
pub fn default_name() -> String {
    format!("localhost/capstan:{}", env!("CARGO_PKG_VERSION"))
}

#[derive(Debug, Args)]
pub struct ImageBuildCmd {
    /// Where the archive is written (an OCI image layout in a tar).
    #[arg(short, long)]
    pub output: PathBuf,
    /// The image's name (default: localhost/capstan:VERSION).
    #[arg(long)]
    pub name: Option<String>,
    /// Keep the binary's debug sections (by default they are stripped when binutils' strip is
    /// installed).
    #[arg(long)]
    pub no_strip: bool,
}

pub fn build(cmd: ImageBuildCmd) -> Result<()> {
    let name = cmd.name.unwrap_or_else(default_name);
    let programs = Image::default_programs()?;
    let image = Image::of_capstan(&programs, !cmd.no_strip)?;
    let tmp = cmd.output.with_extension("tar.tmp");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut out = std::io::BufWriter::new(file);
    image.write_archive(&name, &mut out)?;
    out.flush()
        .and_then(|()| out.get_ref().sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &cmd.output)
        .with_context(|| format!("renaming {} to {}", tmp.display(), cmd.output.display()))?;
    println!(
        "{} ({name}, layer {} MiB)",
        cmd.output.display(),
        image.layer_size() >> 20
    );
    Ok(())
}
