//! `hf://owner/repo[@revision][/path]`: checkpoints straight from the Hugging Face Hub, through
//! the `hf-hub` crate (files land in, and are reused from, the user's `~/.cache/huggingface`;
//! `HF_HOME` moves it, `HF_ENDPOINT` points at another Hub, e.g. a mirror or a test server).
//!
//! What is fetched: the repo's file list first (`/api/models/<repo>/revision/<rev>`), then only
//! what the conversion reads. A diffusers pipeline (`facebook/DiT-XL-2-256`) gives its
//! `transformer/config.json` and `transformer/diffusion_pytorch_model.safetensors` (the `.fp16`
//! variant when that is all there is); a path naming a folder does the same inside it; a path
//! naming a file fetches that file (and the `config.json` beside a diffusers weights file); a repo
//! holding one checkpoint file fetches it.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Repo, RepoType};
use sparsedit::{Error, Result};

const SCHEME: &str = "hf://";
const WEIGHTS: [&str; 2] = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"];
const CHECKPOINT_EXTS: [&str; 4] = [".safetensors", ".pt", ".pth", ".gguf"];

/// A parsed `hf://` address.
#[derive(Debug, PartialEq, Eq)]
struct HubSpec {
    repo: String,
    revision: String,
    path: Option<String>,
}

fn parse(spec: &str) -> Result<HubSpec> {
    let bad = |why: &str| Error::InvalidArgument(format!("{spec}: {why} (expected hf://owner/repo[@revision][/path])"));
    let rest = spec.strip_prefix(SCHEME).ok_or_else(|| bad("not an hf:// address"))?;
    let mut parts = rest.splitn(3, '/');
    let owner = parts.next().filter(|s| !s.is_empty()).ok_or_else(|| bad("no owner"))?;
    let name = parts.next().filter(|s| !s.is_empty()).ok_or_else(|| bad("no repo name"))?;
    let path = parts.next().map(|p| p.trim_end_matches('/').to_string()).filter(|p| !p.is_empty());
    let (name, revision) = match name.split_once('@') {
        Some((n, r)) if !n.is_empty() && !r.is_empty() => (n, r.to_string()),
        Some(_) => return Err(bad("empty repo name or revision")),
        None => (name, "main".to_string()),
    };
    if path.as_deref().is_some_and(|p| p.split('/').any(|c| c == ".." || c.is_empty())) {
        return Err(bad("a path with empty or '..' parts"));
    }
    Ok(HubSpec { repo: format!("{owner}/{name}"), revision, path })
}

/// The files of `folder` ("" = the root) to fetch from a repo listing `files`, and which of them
/// is the local path to convert (`true`: the folder holding them, else the file itself).
fn choose<'a>(files: &'a [String], folder: &str) -> std::result::Result<(Vec<&'a str>, usize, bool), String> {
    let join = |f: &str| if folder.is_empty() { f.to_string() } else { format!("{folder}/{f}") };
    let has = |f: &str| files.iter().find(|x| **x == join(f)).map(String::as_str);
    if let (Some(cfg), Some(w)) = (has("config.json"), WEIGHTS.iter().find_map(|w| has(w))) {
        return Ok((vec![cfg, w], 1, true));
    }
    let prefix = if folder.is_empty() { String::new() } else { format!("{folder}/") };
    let candidates: Vec<&str> = files
        .iter()
        .map(String::as_str)
        .filter(|f| f.strip_prefix(&prefix).is_some_and(|r| !r.contains('/')))
        .filter(|f| CHECKPOINT_EXTS.iter().any(|e| f.ends_with(e)))
        .collect();
    match candidates.as_slice() {
        [one] => Ok((vec![*one], 0, false)),
        [] => Err(format!("no checkpoint in {}", if folder.is_empty() { "the repo root" } else { folder })),
        many => Err(format!("several checkpoints, name one in the address: {}", many.join(", "))),
    }
}

/// The local path `spec` stands for: itself, or for an `hf://` address the downloaded files.
pub(super) fn local(spec: &Path) -> Result<PathBuf> {
    let Some(s) = spec.to_str().filter(|s| s.starts_with(SCHEME)) else {
        return Ok(spec.to_path_buf());
    };
    let hs = parse(s)?;
    let hub_err = |e: hf_hub::api::sync::ApiError| Error::InvalidArgument(format!("{s}: {e}"));
    let api = ApiBuilder::from_env().with_progress(true).build().map_err(hub_err)?;
    let repo = api.repo(Repo::with_revision(hs.repo.clone(), RepoType::Model, hs.revision.clone()));
    let files: Vec<String> = repo.info().map_err(hub_err)?.siblings.into_iter().map(|f| f.rfilename).collect();
    let (fetch, main, is_folder) = match &hs.path {
        Some(p) if files.iter().any(|f| f == p) => {
            // A file; a diffusers weights file needs its config.json.
            let (dir, name) = p.rsplit_once('/').unwrap_or(("", p));
            let cfg = if dir.is_empty() { "config.json".to_string() } else { format!("{dir}/config.json") };
            match files.iter().find(|f| **f == cfg) {
                Some(c) if WEIGHTS.contains(&name) => (vec![c.as_str(), p.as_str()], 1, false),
                _ => (vec![p.as_str()], 0, false),
            }
        }
        Some(p) if files.iter().any(|f| f.starts_with(&format!("{p}/"))) => choose(&files, p).map_err(|e| Error::InvalidArgument(format!("{s}: {e}")))?,
        Some(p) => return Err(Error::InvalidArgument(format!("{s}: the repo has no file or folder {p}"))),
        None => {
            let folder = if files.iter().any(|f| f == "transformer/config.json") { "transformer" } else { "" };
            choose(&files, folder).map_err(|e| Error::InvalidArgument(format!("{s}: {e}")))?
        }
    };
    let mut paths = Vec::new();
    for f in &fetch {
        eprintln!("hf: {}/{f} ({})", hs.repo, hs.revision);
        paths.push(repo.get(f).map_err(hub_err)?);
    }
    let file = &paths[main];
    Ok(if is_folder { file.parent().map(Path::to_path_buf).unwrap_or_else(|| file.clone()) } else { file.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let p = parse("hf://facebook/DiT-XL-2-256").unwrap();
        assert_eq!(p, HubSpec { repo: "facebook/DiT-XL-2-256".into(), revision: "main".into(), path: None });
        let p = parse("hf://madebyollin/taesd@abc123/diffusion_pytorch_model.safetensors").unwrap();
        assert_eq!((p.revision.as_str(), p.path.as_deref()), ("abc123", Some("diffusion_pytorch_model.safetensors")));
        for bad in ["hf://", "hf://owner", "hf://owner/", "hf://o/r@", "hf://o/r/../x", "https://x/y"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn choosing_files() {
        let files: Vec<String> = ["model_index.json", "transformer/config.json", "transformer/diffusion_pytorch_model.fp16.safetensors", "vae/config.json"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (f, main, folder) = choose(&files, "transformer").unwrap();
        assert_eq!((f, main, folder), (vec!["transformer/config.json", "transformer/diffusion_pytorch_model.fp16.safetensors"], 1, true));
        let one: Vec<String> = vec!["README.md".into(), "DiT-XL-2-256x256.pt".into()];
        assert_eq!(choose(&one, "").unwrap(), (vec!["DiT-XL-2-256x256.pt"], 0, false));
        let two: Vec<String> = vec!["a.pt".into(), "b.safetensors".into()];
        assert!(choose(&two, "").unwrap_err().contains("several"));
        assert!(choose(&files, "").unwrap_err().contains("no checkpoint"));
    }
}
