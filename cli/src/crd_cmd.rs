//! `capstan crd print [--dir DIR]`: Capstan's own CustomResourceDefinitions, generated from the
//! Rust types in api/src/crds — to stdout as one multi-document YAML stream, or one file per
//! CRD into DIR (how manifests/crds/ is made: `make crds`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct CrdCmd {
    #[command(subcommand)]
    action: CrdAction,
}

#[derive(Debug, Subcommand)]
enum CrdAction {
    /// Print Capstan's CRDs (or write them, one file each, into --dir).
    Print {
        /// Write `GROUP_PLURAL.yaml` files into this directory instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

pub fn run(cmd: CrdCmd) -> anyhow::Result<()> {
    match cmd.action {
        CrdAction::Print { dir } => {
            let crds = capstan_api::crds::all();
            match dir {
                None => {
                    let docs = crds
                        .iter()
                        .map(capstan_api::crds::to_yaml)
                        .collect::<Result<Vec<_>, _>>()?;
                    print!("{}", docs.join("---\n"));
                }
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    for crd in &crds {
                        let path = dir.join(capstan_api::crds::file_name(crd));
                        std::fs::write(&path, capstan_api::crds::to_yaml(crd)?)
                            .with_context(|| format!("writing {}", path.display()))?;
                        println!("{}", path.display());
                    }
                }
            }
            Ok(())
        }
    }
}
